//! `RepoRef`: the coordinate `30617:<pubkey-hex>:<identifier>` of a repository
//! announcement. Every index is keyed by it, so it is validated once, on construction,
//! and is cheap to clone (one shared allocation) because 100k-repo indexes copy it a lot.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use nostr::PublicKey;

use crate::nip34::KIND_REPO_ANNOUNCEMENT;

/// Why a string is not a repo ref.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RepoRefError {
    /// The string does not have the three `:`-separated parts.
    #[error("repo ref must be `30617:<pubkey>:<identifier>`, got {0:?}")]
    Shape(String),
    /// The first part is not `30617`.
    #[error("repo ref kind must be 30617, got {0:?}")]
    WrongKind(String),
    /// The pubkey is not 64 lower-case hex characters.
    #[error("repo ref pubkey must be 64 lower-case hex characters, got {0:?}")]
    BadPubkey(String),
    /// The `d` identifier is empty.
    #[error("repo ref identifier is empty")]
    EmptyIdentifier,
}

/// A validated repository coordinate, ordered and hashed by its canonical string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoRef(Arc<str>);

/// Length of `30617:` + 64 hex + `:`, where the identifier starts.
const IDENTIFIER_START: usize = 6 + 64 + 1;

impl RepoRef {
    /// Parses and validates `30617:<64-hex pubkey>:<identifier>`.
    pub fn parse(s: &str) -> Result<Self, RepoRefError> {
        let mut parts = s.splitn(3, ':');
        let (Some(kind), Some(pubkey), Some(identifier)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(RepoRefError::Shape(s.to_owned()));
        };
        if kind.parse::<u16>().ok() != Some(KIND_REPO_ANNOUNCEMENT.as_u16()) {
            return Err(RepoRefError::WrongKind(kind.to_owned()));
        }
        Self::validate_pubkey(pubkey)?;
        if identifier.is_empty() {
            return Err(RepoRefError::EmptyIdentifier);
        }
        Ok(Self(Arc::from(s)))
    }

    /// Builds the ref of `pubkey`'s announcement with `d` tag `identifier`.
    pub fn new(pubkey: &PublicKey, identifier: &str) -> Result<Self, RepoRefError> {
        if identifier.is_empty() {
            return Err(RepoRefError::EmptyIdentifier);
        }
        Ok(Self(Arc::from(format!(
            "{}:{}:{identifier}",
            KIND_REPO_ANNOUNCEMENT.as_u16(),
            pubkey.to_hex()
        ))))
    }

    fn validate_pubkey(pubkey: &str) -> Result<(), RepoRefError> {
        let ok = pubkey.len() == 64
            && pubkey
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ok {
            Ok(())
        } else {
            Err(RepoRefError::BadPubkey(pubkey.to_owned()))
        }
    }

    /// The author's public key, as 64 lower-case hex characters.
    pub fn pubkey_hex(&self) -> &str {
        &self.0[6..IDENTIFIER_START - 1]
    }

    /// The author's public key. Validation guarantees 64 hex characters; a value that is
    /// not a point on the curve is reported, not assumed away.
    pub fn public_key(&self) -> Result<PublicKey, nostr::key::Error> {
        PublicKey::from_hex(self.pubkey_hex())
    }

    /// The announcement's `d` identifier (never empty).
    pub fn identifier(&self) -> &str {
        &self.0[IDENTIFIER_START..]
    }

    /// The canonical `30617:<pubkey>:<identifier>` string, as used in `a`/`A`/`q` tags.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RepoRef {
    type Err = RepoRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoRef({})", self.0)
    }
}

impl serde::Serialize for RepoRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for RepoRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PK: &str = "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1";

    #[test]
    fn parses_and_exposes_parts() {
        let r = RepoRef::parse(&format!("30617:{PK}:my-repo:with:colons")).unwrap();
        assert_eq!(r.pubkey_hex(), PK);
        assert_eq!(r.identifier(), "my-repo:with:colons");
    }

    #[test]
    fn rejects_bad_input_with_clear_errors() {
        assert!(matches!(
            RepoRef::parse("30618:x:y"),
            Err(RepoRefError::WrongKind(_))
        ));
        assert!(matches!(
            RepoRef::parse("30617:abc:y"),
            Err(RepoRefError::BadPubkey(_))
        ));
        let upper = PK.to_uppercase();
        assert!(matches!(
            RepoRef::parse(&format!("30617:{upper}:y")),
            Err(RepoRefError::BadPubkey(_))
        ));
        assert_eq!(
            RepoRef::parse(&format!("30617:{PK}:")),
            Err(RepoRefError::EmptyIdentifier)
        );
        assert!(matches!(
            RepoRef::parse("nonsense"),
            Err(RepoRefError::Shape(_))
        ));
        assert!(matches!(RepoRef::parse(""), Err(RepoRefError::Shape(_))));
    }

    #[test]
    fn new_matches_parse() {
        let keys = nostr::Keys::generate();
        let r = RepoRef::new(&keys.public_key(), "x").unwrap();
        assert_eq!(RepoRef::parse(r.as_str()).unwrap(), r);
        assert_eq!(r.public_key().unwrap(), keys.public_key());
    }
}
