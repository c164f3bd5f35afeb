//! GRASP-05 archive mode: which repositories a relay keeps although their announcements
//! do not list it. The host decides acceptance; this is the allow-list it reads, in the
//! forms peers use: `npub1…` (every repository of that key), `npub1…/<identifier>` (one
//! repository), `<identifier>` (that name, whoever announces it), or `*` (all).

use std::collections::BTreeSet;

use nostr::{FromBech32, PublicKey};

use crate::model::RepoRef;

/// Why an allow-list entry could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveEntryError {
    /// An `npub…` that does not decode.
    #[error("{0:?} is not a valid npub")]
    BadNpub(String),
    /// Empty, or an identifier with a `/` or starting with `.`.
    #[error("{0:?} is not `*`, an npub, `npub/identifier` or an identifier")]
    BadEntry(String),
}

/// The archive allow-list (empty: archive mode off).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchivePolicy {
    all: bool,
    keys: BTreeSet<PublicKey>,
    repos: BTreeSet<(PublicKey, String)>,
    identifiers: BTreeSet<String>,
}

impl ArchivePolicy {
    /// Reads the entries (see the module docs).
    pub fn parse<I, S>(entries: I) -> Result<Self, ArchiveEntryError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut policy = Self::default();
        for entry in entries {
            let entry = entry.as_ref().trim();
            let bad = || ArchiveEntryError::BadEntry(entry.to_owned());
            let key = |npub: &str| {
                PublicKey::from_bech32(npub).map_err(|_| ArchiveEntryError::BadNpub(npub.into()))
            };
            let valid_id = |id: &str| !id.is_empty() && !id.starts_with('.') && !id.contains('/');
            match entry.split_once('/') {
                _ if entry == "*" => policy.all = true,
                Some((npub, id)) if npub.starts_with("npub1") && valid_id(id) => {
                    policy.repos.insert((key(npub)?, id.to_owned()));
                }
                Some(_) => return Err(bad()),
                None if entry.starts_with("npub1") => {
                    policy.keys.insert(key(entry)?);
                }
                None if valid_id(entry) => {
                    policy.identifiers.insert(entry.to_owned());
                }
                None => return Err(bad()),
            }
        }
        Ok(policy)
    }

    /// True when archive mode is on (any entry).
    pub fn is_enabled(&self) -> bool {
        self.all || !self.keys.is_empty() || !self.repos.is_empty() || !self.identifiers.is_empty()
    }

    /// Whether `repo` is kept here by archive.
    pub fn covers(&self, repo: &RepoRef) -> bool {
        if self.all || self.identifiers.contains(repo.identifier()) {
            return true;
        }
        let Ok(key) = repo.public_key() else {
            return false;
        };
        self.keys.contains(&key) || self.repos.contains(&(key, repo.identifier().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use nostr::{Keys, ToBech32};

    use super::*;

    #[test]
    fn the_four_forms_and_bad_entries() {
        let (a, b) = (Keys::generate().public_key(), Keys::generate().public_key());
        let npub = |k: &PublicKey| k.to_bech32().unwrap();
        let repo = |k: &PublicKey, id: &str| RepoRef::new(k, id).unwrap();
        assert!(!ArchivePolicy::parse(Vec::<String>::new())
            .unwrap()
            .is_enabled());
        let p = ArchivePolicy::parse([npub(&a), format!("{}/kept", npub(&b)), "shared".into()])
            .unwrap();
        assert!(p.is_enabled());
        assert!(p.covers(&repo(&a, "anything")));
        assert!(p.covers(&repo(&b, "kept")));
        assert!(!p.covers(&repo(&b, "other")));
        assert!(p.covers(&repo(&b, "shared")));
        assert!(ArchivePolicy::parse(["*"]).unwrap().covers(&repo(&b, "x")));
        for bad in ["", "npub1nope", "a/b", ".hidden", "npub1nope/x"] {
            assert!(ArchivePolicy::parse([bad]).is_err(), "{bad:?}");
        }
    }
}
