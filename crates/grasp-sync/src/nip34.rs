//! Reading the NIP-34 events sync cares about: which relays an announcement lists, which
//! repos a root event tags. Tags come from strangers, so every value is validated and a
//! bad one is skipped and counted rather than trusted or allowed to panic.

use nostr::{Event, EventId, Kind};

use crate::git::Oid;
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

/// The NIP-34 kinds a GRASP relay treats apart, to `match` on (nostr's `Kind`
/// constants cannot be patterns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Nip34Kind {
    /// 30617.
    Announcement,
    /// 30618.
    State,
    /// 10317.
    GraspList,
    /// 1617 (a root).
    Patch,
    /// 1618 (a root).
    PullRequest,
    /// 1619.
    PullRequestUpdate,
    /// 1621 (a root).
    Issue,
    /// Anything else (comments, replies, ...).
    Other,
}

impl Nip34Kind {
    /// Classifies `kind`.
    pub fn of(kind: Kind) -> Self {
        [
            (KIND_REPO_ANNOUNCEMENT, Self::Announcement),
            (KIND_REPO_STATE, Self::State),
            (KIND_GRASP_LIST, Self::GraspList),
            (KIND_PATCH, Self::Patch),
            (KIND_PULL_REQUEST, Self::PullRequest),
            (KIND_PULL_REQUEST_UPDATE, Self::PullRequestUpdate),
            (KIND_ISSUE, Self::Issue),
        ]
        .into_iter()
        .find_map(|(k, class)| (k == kind).then_some(class))
        .unwrap_or(Self::Other)
    }
}

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
    let mut invalid_relays = 0;
    for tag in event.tags.iter() {
        let [name, values @ ..] = tag.as_slice() else {
            continue;
        };
        if name != "relays" {
            continue;
        }
        for value in values {
            match RelayUrl::parse(value) {
                Ok(url) if !relays.contains(&url) => relays.push(url),
                Ok(_) => {}
                Err(_) => invalid_relays += 1,
            }
        }
    }
    Ok(Announcement {
        repo,
        relays,
        clone_urls: clone_tags(event),
        invalid_relays,
    })
}

/// The values of an event's `clone` tags (announcements, PRs), multi-valued and
/// repeatable, as given (the git side validates them).
pub fn clone_tags(event: &Event) -> Vec<String> {
    event
        .tags
        .iter()
        .filter(|t| t.as_slice().first().map(String::as_str) == Some("clone"))
        .flat_map(|t| t.as_slice()[1..].iter().filter(|v| !v.is_empty()).cloned())
        .collect()
}

/// The repository a state event (30618) is about: its author's, named by its `d` tag.
/// `None` for another kind or an unusable `d`.
pub fn state_repo(event: &Event) -> Option<RepoRef> {
    if event.kind != KIND_REPO_STATE {
        return None;
    }
    RepoRef::new(&event.pubkey, event.tags.identifier()?).ok()
}

/// The commit a PR or PR update (1618/1619) proposes: its `c` tag.
pub fn pull_request_tip(event: &Event) -> Option<Oid> {
    event.tags.iter().find_map(|t| match t.as_slice() {
        [name, value, ..] if name == "c" => Oid::from_hex(value).ok(),
        _ => None,
    })
}

/// Why a state event's refs cannot be written to a repository.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateRefsError {
    /// A `refs/...` name git would refuse.
    #[error("ref name {name:?} {why}")]
    BadName {
        /// The name.
        name: String,
        /// Which of git's rules it breaks.
        why: &'static str,
    },
    /// A ref whose value is not a 40-hex object id.
    #[error("ref {0:?} does not name a 40-hex object id")]
    NotAnObjectId(String),
    /// No `refs/...` tag at all.
    #[error("a state event must name at least one ref (`refs/...` with a 40-hex object id)")]
    NoRefs,
}

/// `(ref name, oid)` pairs a state event (30618) names: every `refs/...` tag, whose name
/// must be a valid git ref name and whose value a 40-hex object id; at least one.
/// (`HEAD` and other non-`refs/` tags are not refs to write.)
pub fn state_refs(event: &Event) -> Result<Vec<(String, Oid)>, StateRefsError> {
    let mut refs = Vec::new();
    for t in event.tags.iter() {
        let [name, rest @ ..] = t.as_slice() else {
            continue;
        };
        if !name.starts_with("refs/") {
            continue;
        }
        check_ref_name(name).map_err(|why| StateRefsError::BadName {
            name: name.clone(),
            why,
        })?;
        let oid = rest
            .first()
            .and_then(|v| Oid::from_hex(v).ok())
            .ok_or_else(|| StateRefsError::NotAnObjectId(name.clone()))?;
        refs.push((name.clone(), oid));
    }
    if refs.is_empty() {
        return Err(StateRefsError::NoRefs);
    }
    Ok(refs)
}

/// git's ref-name rules (`git check-ref-format`), as far as a relay needs them: what
/// it writes into a bare repository must be a name git accepts.
fn check_ref_name(name: &str) -> Result<(), &'static str> {
    let Some(rest) = name.strip_prefix("refs/") else {
        return Err("does not start with refs/");
    };
    if rest.is_empty() || name.ends_with('/') || name.ends_with('.') {
        return Err("is incomplete");
    }
    if name.contains("..") || name.contains("//") || name.contains("@{") {
        return Err("contains `..`, `//` or `@{`");
    }
    if name
        .chars()
        .any(|c| c.is_ascii_control() || " ~^:?*[\\".contains(c))
    {
        return Err("contains a space, a control character or one of ~^:?*[\\");
    }
    if name
        .split('/')
        .any(|c| c.starts_with('.') || c.ends_with(".lock"))
    {
        return Err("has a component starting with `.` or ending with `.lock`");
    }
    Ok(())
}

/// What an event tags: repos (`a`/`A`/`q` coordinates) and events (`e`/`E`/`q` ids).
/// A reply belongs here if it tags a repo or a thread hosted here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    /// Tagged repository coordinates.
    pub repos: Vec<RepoRef>,
    /// Tagged event ids.
    pub events: Vec<EventId>,
}

impl References {
    /// Whether it names nothing.
    pub fn is_empty(&self) -> bool {
        self.repos.is_empty() && self.events.is_empty()
    }
}

/// Reads [`References`]: invalid values are skipped.
pub fn references(event: &Event) -> References {
    let mut out = References::default();
    for t in event.tags.iter() {
        if let [name, value, ..] = t.as_slice() {
            match name.as_str() {
                "a" | "A" => out.repos.extend(RepoRef::parse(value).ok()),
                "e" | "E" => out.events.extend(EventId::from_hex(value).ok()),
                "q" => match RepoRef::parse(value) {
                    Ok(r) => out.repos.push(r),
                    Err(_) => out.events.extend(EventId::from_hex(value).ok()),
                },
                _ => {}
            }
        }
    }
    out
}

/// The relays a participant's relay list names, in its order: the write relays of a
/// NIP-65 list (kind 10002: `r` tags without a marker or marked `write`) or the `g`
/// relays of a GRASP list (kind 10317). `None` for any other kind. URLs are returned as
/// written; the caller normalises and filters them.
pub fn relay_list_urls(event: &Event) -> Option<Vec<&str>> {
    let tag_name = if event.kind == Kind::RelayList {
        "r"
    } else if event.kind == KIND_GRASP_LIST {
        "g"
    } else {
        return None;
    };
    let urls = event
        .tags
        .iter()
        .filter_map(|tag| match tag.as_slice() {
            [name, url] if name == tag_name => Some(url.as_str()),
            [name, url, marker, ..]
                if name == tag_name && (tag_name == "g" || marker == "write") =>
            {
                Some(url.as_str())
            }
            _ => None,
        })
        .collect();
    Some(urls)
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

    fn state(tags: &[(&str, &str)]) -> Event {
        let mut all = vec![tag(&["d", "r"])];
        all.extend(tags.iter().map(|(n, v)| tag(&[n, v])));
        EventBuilder::new(KIND_REPO_STATE, "")
            .tags(all)
            .sign_with_keys(&Keys::generate())
            .unwrap()
    }

    const OID: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn state_refs_need_valid_names_and_ids() {
        let ok = state(&[("refs/heads/main", OID), ("HEAD", "ref: refs/heads/main")]);
        assert_eq!(state_refs(&ok).unwrap().len(), 1);
        for (name, value, why) in [
            ("refs/heads/main", "not-an-oid", "40-hex"),
            ("refs/heads/a..b", OID, ".."),
            ("refs/heads/x y", OID, "space"),
            ("refs/heads/x.lock", OID, ".lock"),
            ("refs/heads/.hidden", OID, "starting with `.`"),
            ("refs/", OID, "incomplete"),
            ("refs/heads/x@{1}", OID, "@{"),
        ] {
            let err = state_refs(&state(&[(name, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{name}: {err}");
        }
        let none = state(&[("HEAD", "ref: refs/heads/main")]);
        assert_eq!(state_refs(&none), Err(StateRefsError::NoRefs));
    }

    #[test]
    fn references_split_q_between_repos_and_events() {
        let pk = Keys::generate().public_key().to_hex();
        let coord = format!("30617:{pk}:r");
        let id = "ab".repeat(32);
        let event = EventBuilder::new(Kind::Custom(1111), "")
            .tags([
                tag(&["A", &coord]),
                tag(&["q", &id]),
                tag(&["e", "not-hex"]),
                tag(&["c", OID]),
            ])
            .sign_with_keys(&Keys::generate())
            .unwrap();
        let r = references(&event);
        assert_eq!(r.repos, vec![RepoRef::parse(&coord).unwrap()]);
        assert_eq!(r.events, vec![EventId::from_hex(&id).unwrap()]);
        assert_eq!(pull_request_tip(&event), Oid::from_hex(OID).ok());
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
