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
///
/// The first 8 characters of the pubkey ride along inline: every index is a B-tree keyed
/// by repo ref, and a comparison that had to follow the `Arc` to the string on every
/// level of every lookup was most of the cost of diffing a relay at 100k repos. All
/// refs share the `30617:` prefix, so comparing those 8 bytes first, big-endian, and the
/// whole string only on a tie, is exactly the string's order.
#[derive(Clone)]
pub struct RepoRef {
    prefix: u64,
    text: Arc<str>,
}

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
        // Exactly `30617`: "030617" or "+30617" name the same kind as a number but are
        // not the coordinate tags carry.
        if kind != KIND_REPO_ANNOUNCEMENT.as_u16().to_string() {
            return Err(RepoRefError::WrongKind(kind.to_owned()));
        }
        Self::validate_pubkey(pubkey)?;
        if identifier.is_empty() {
            return Err(RepoRefError::EmptyIdentifier);
        }
        Ok(Self::from_valid(Arc::from(s)))
    }

    /// Builds the ref of `pubkey`'s announcement with `d` tag `identifier`.
    pub fn new(pubkey: &PublicKey, identifier: &str) -> Result<Self, RepoRefError> {
        if identifier.is_empty() {
            return Err(RepoRefError::EmptyIdentifier);
        }
        Ok(Self::from_valid(Arc::from(format!(
            "{}:{}:{identifier}",
            KIND_REPO_ANNOUNCEMENT.as_u16(),
            pubkey.to_hex()
        ))))
    }

    /// `text` is a validated coordinate.
    fn from_valid(text: Arc<str>) -> Self {
        let mut head = [0u8; 8];
        head.copy_from_slice(&text.as_bytes()[6..14]);
        Self {
            prefix: u64::from_be_bytes(head),
            text,
        }
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
        &self.text[6..IDENTIFIER_START - 1]
    }

    /// The author's public key. Validation guarantees 64 hex characters; a value that is
    /// not a point on the curve is reported, not assumed away.
    pub fn public_key(&self) -> Result<PublicKey, nostr::key::Error> {
        PublicKey::from_hex(self.pubkey_hex())
    }

    /// The announcement's `d` identifier (never empty).
    pub fn identifier(&self) -> &str {
        &self.text[IDENTIFIER_START..]
    }

    /// The canonical `30617:<pubkey>:<identifier>` string, as used in `a`/`A`/`q` tags.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl RepoRef {
    /// The text comparison behind a tie of prefixes; clones of one ref (the index, the
    /// targets and the confirmed items all hold clones) are equal without reading it.
    fn cmp_text(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.text, &other.text) {
            std::cmp::Ordering::Equal
        } else {
            self.text.cmp(&other.text)
        }
    }
}

impl PartialEq for RepoRef {
    fn eq(&self, other: &Self) -> bool {
        self.prefix == other.prefix
            && (Arc::ptr_eq(&self.text, &other.text) || self.text == other.text)
    }
}

impl Eq for RepoRef {}

impl Ord for RepoRef {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.prefix
            .cmp(&other.prefix)
            .then_with(|| self.cmp_text(other))
    }
}

impl PartialOrd for RepoRef {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::hash::Hash for RepoRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
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
        f.write_str(&self.text)
    }
}

impl fmt::Debug for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoRef({})", self.text)
    }
}

impl serde::Serialize for RepoRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
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
    fn kind_is_exactly_30617() {
        for kind in ["030617", "+30617"] {
            assert!(matches!(
                RepoRef::parse(&format!("{kind}:{PK}:y")),
                Err(RepoRefError::WrongKind(_))
            ));
        }
    }

    proptest::proptest! {
        /// Ordered and equal exactly as the strings are.
        #[test]
        fn orders_as_its_string(a in "[0-9a-f]{64}", b in "[0-9a-f]{64}", x in "[a-z]{1,3}", y in "[a-z]{1,3}", share in 0u8..3) {
            // Unrelated keys, keys with the same first 8 characters, the same key.
            let b = match share {
                0 => b,
                1 => format!("{}{}", &a[..8], &b[8..]),
                _ => a.clone(),
            };
            let (s, t) = (format!("30617:{a}:{x}"), format!("30617:{b}:{y}"));
            let (r, q) = (RepoRef::parse(&s).unwrap(), RepoRef::parse(&t).unwrap());
            proptest::prop_assert_eq!(r.cmp(&q), s.cmp(&t));
            proptest::prop_assert_eq!(r == q, s == t);
            // A clone (the same text, shared) against a ref parsed on its own.
            proptest::prop_assert_eq!(r.clone().cmp(&q), s.cmp(&t));
            proptest::prop_assert_eq!(r.cmp(&r.clone()), std::cmp::Ordering::Equal);
            proptest::prop_assert!(r == r.clone());
        }
    }

    #[test]
    fn new_matches_parse() {
        let keys = nostr::Keys::generate();
        let r = RepoRef::new(&keys.public_key(), "x").unwrap();
        assert_eq!(RepoRef::parse(r.as_str()).unwrap(), r);
        assert_eq!(r.public_key().unwrap(), keys.public_key());
    }
}
