//! `Oid`: a git object id (SHA-1) as the pure parts of hunting see it.
//!
//! The scheduler and the purgatory must work without gix (feature `git` off), so they
//! carry their own small id type instead of `gix::ObjectId`; the gix fetcher converts at
//! its boundary. State events name objects in hex, which is untrusted input: parsing is
//! strict (40 hex characters) and never panics.

use std::fmt;
use std::str::FromStr;

/// Why a string is not an object id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OidError {
    /// Not 40 hexadecimal characters.
    #[error("object id must be 40 hex characters, got {0:?}")]
    Malformed(String),
}

/// A SHA-1 git object id. Ordered, hashed and compared by its bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Oid([u8; 20]);

impl Oid {
    /// Parses 40 hex characters (either case).
    pub fn from_hex(s: &str) -> Result<Self, OidError> {
        let b = s.as_bytes();
        if b.len() != 40 {
            return Err(OidError::Malformed(s.to_owned()));
        }
        let mut out = [0u8; 20];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or_else(|| OidError::Malformed(s.to_owned()))?;
            let lo = hex_val(pair[1]).ok_or_else(|| OidError::Malformed(s.to_owned()))?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Self(out))
    }

    /// From raw bytes.
    pub fn from_bytes(bytes: [u8; 20]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// Lower-case hex, as git prints it.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl FromStr for Oid {
    type Err = OidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Oid({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_junk() {
        let h = "0123456789abcdef0123456789ABCDEF01234567";
        let o = Oid::from_hex(h).unwrap();
        assert_eq!(o.to_hex(), h.to_ascii_lowercase());
        assert!(Oid::from_hex("xyz").is_err());
        assert!(Oid::from_hex(&"g".repeat(40)).is_err());
        assert!(Oid::from_hex("é123456789abcdef0123456789abcdef0123456").is_err());
    }
}
