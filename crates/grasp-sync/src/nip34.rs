//! Reading the NIP-34 events sync cares about: which relays an announcement lists, which
//! repos a root event tags. Tags come from strangers, so every value is validated and a
//! bad one is skipped and counted rather than trusted or allowed to panic.

use nostr::{Event, Kind};

use crate::model::{RelayUrl, RepoRef};

/// Repository announcement.
pub const KIND_REPO_ANNOUNCEMENT: Kind = Kind::Custom(30617);
/// Repository state.
pub const KIND_REPO_STATE: Kind = Kind::Custom(30618);
/// A user's GRASP server list.
pub const KIND_GRASP_LIST: Kind = Kind::Custom(10317);
/// Patch (root event).
pub const KIND_PATCH: Kind = Kind::Custom(1617);
/// Pull request (root event).
pub const KIND_PULL_REQUEST: Kind = Kind::Custom(1618);
/// PR update (not a root: it tags its PR with `E`).
pub const KIND_PULL_REQUEST_UPDATE: Kind = Kind::Custom(1619);
/// Issue (root event).
pub const KIND_ISSUE: Kind = Kind::Custom(1621);

/// The kinds that start a thread others tag (layer 3 roots).
pub const ROOT_KINDS: [Kind; 3] = [KIND_PATCH, KIND_PULL_REQUEST, KIND_ISSUE];

/// True for the kinds that start a thread others tag (layer 3 roots).
pub fn is_root_kind(kind: Kind) -> bool {
    ROOT_KINDS.contains(&kind)
}

/// What sync needs from an announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The repo's coordinate.
    pub repo: RepoRef,
    /// Valid websocket relay URLs from `relays` tags, normalised, deduplicated, in the
    /// order listed.
    pub relays: Vec<RelayUrl>,
    /// `clone` tag values, as given (the git side validates them).
    pub clone_urls: Vec<String>,
    /// Relay values that were not valid websocket URLs.
    pub invalid_relays: usize,
}

/// Why an event could not be read as an announcement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnnouncementError {
    /// Not kind 30617.
    #[error("not a repository announcement (kind {0})")]
    WrongKind(u16),
    /// No usable `d` tag.
    #[error("announcement has no `d` identifier")]
    NoIdentifier,
}

/// Reads an announcement. `relays` and `clone` tags are multi-valued
/// (`["relays", "wss://a", "wss://b"]`) and may also be repeated.
pub fn parse_announcement(event: &Event) -> Result<Announcement, AnnouncementError> {
    if event.kind != KIND_REPO_ANNOUNCEMENT {
        return Err(AnnouncementError::WrongKind(event.kind.as_u16()));
    }
    let identifier = event
        .tags
        .identifier()
        .filter(|d| !d.is_empty())
        .ok_or(AnnouncementError::NoIdentifier)?;
    let repo =
        RepoRef::new(&event.pubkey, identifier).map_err(|_| AnnouncementError::NoIdentifier)?;
    let mut relays = Vec::new();
    let mut clone_urls = Vec::new();
    let mut invalid_relays = 0;
    for tag in event.tags.iter() {
        let values = tag.as_slice();
        match values.first().map(String::as_str) {
            Some("relays") => {
                for value in &values[1..] {
                    match RelayUrl::parse(value) {
                        Ok(url) if !relays.contains(&url) => relays.push(url),
                        Ok(_) => {}
                        Err(_) => invalid_relays += 1,
                    }
                }
            }
            Some("clone") => {
                clone_urls.extend(values[1..].iter().filter(|v| !v.is_empty()).cloned())
            }
            _ => {}
        }
    }
    Ok(Announcement {
        repo,
        relays,
        clone_urls,
        invalid_relays,
    })
}

/// The repos a root event belongs to: its `a` tags that are valid 30617 coordinates.
pub fn tagged_repos(event: &Event) -> Vec<RepoRef> {
    let mut repos: Vec<RepoRef> = event
        .tags
        .iter()
        .filter_map(|tag| match tag.as_slice() {
            [name, value, ..] if name == "a" => RepoRef::parse(value).ok(),
            _ => None,
        })
        .collect();
    repos.sort();
    repos.dedup();
    repos
}

#[cfg(test)]
mod tests {
    use nostr::{EventBuilder, Keys, Tag};

    use super::*;

    fn tag(values: &[&str]) -> Tag {
        Tag::parse(values.iter().copied()).unwrap()
    }

    #[test]
    fn reads_multi_valued_relays_and_skips_junk() {
        let keys = Keys::generate();
        let event = EventBuilder::new(KIND_REPO_ANNOUNCEMENT, "")
            .tags([
                tag(&["d", "repo"]),
                tag(&[
                    "relays",
                    "wss://a.example/",
                    "https://nope",
                    "WSS://A.example",
                ]),
                tag(&["relays", "wss://b.example"]),
                tag(&["clone", "https://git.example/repo.git"]),
            ])
            .sign_with_keys(&keys)
            .unwrap();
        let a = parse_announcement(&event).unwrap();
        assert_eq!(a.repo.identifier(), "repo");
        assert_eq!(
            a.relays.iter().map(RelayUrl::as_str).collect::<Vec<_>>(),
            ["wss://a.example", "wss://b.example"]
        );
        assert_eq!(a.invalid_relays, 1);
        assert_eq!(a.clone_urls, ["https://git.example/repo.git"]);
    }

    #[test]
    fn announcement_without_identifier_is_an_error() {
        let keys = Keys::generate();
        let event = EventBuilder::new(KIND_REPO_ANNOUNCEMENT, "")
            .sign_with_keys(&keys)
            .unwrap();
        assert_eq!(
            parse_announcement(&event),
            Err(AnnouncementError::NoIdentifier)
        );
    }

    #[test]
    fn root_event_repos_ignore_bad_coordinates() {
        let keys = Keys::generate();
        let good = format!("30617:{}:x", keys.public_key().to_hex());
        let event = EventBuilder::new(KIND_ISSUE, "")
            .tags([
                tag(&["a", &good]),
                tag(&["a", "30617:zz:x"]),
                tag(&["a"]),
                tag(&["a", &good]),
            ])
            .sign_with_keys(&keys)
            .unwrap();
        assert_eq!(tagged_repos(&event).len(), 1);
    }
}
