//! `RelayUrl`: a websocket relay address in one canonical spelling, so that `wss://X/`,
//! `WSS://x` and `wss://x:443` are one relay in every index, and so that a relay is
//! never dialled twice under two names.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use nostr::Url;

/// Why a string is not a usable relay URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayUrlError {
    /// The string is not a URL at all.
    #[error("not a URL: {0:?}")]
    Unparsable(String),
    /// Relays speak websockets; anything else is refused.
    #[error("relay URL must use ws:// or wss://, got {0:?}")]
    Scheme(String),
    /// A relay URL needs a host.
    #[error("relay URL has no host: {0:?}")]
    NoHost(String),
    /// Credentials or fragments have no meaning for a relay and would split identities.
    #[error("relay URL must not carry credentials or a fragment: {0:?}")]
    Extras(String),
    /// Longer than [`MAX_RELAY_URL_BYTES`]: no relay needs it, and an HTTP request line
    /// cannot carry much more (the websocket client refuses URIs over 64 KiB).
    #[error("relay URL is {0} bytes long, over the {MAX_RELAY_URL_BYTES}-byte cap")]
    TooLong(usize),
}

/// Longest relay URL accepted, in bytes.
pub const MAX_RELAY_URL_BYTES: usize = 2_048;

/// A normalised `ws://` or `wss://` URL: scheme and host lower-case, default port
/// dropped, no trailing slash.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelayUrl(Arc<str>);

impl RelayUrl {
    /// Parses and normalises a relay URL.
    pub fn parse(s: &str) -> Result<Self, RelayUrlError> {
        // Percent-encoding can only lengthen what is given, so a longer input is refused
        // before it is parsed; the spelling kept is checked again below.
        let s = s.trim();
        if s.len() > MAX_RELAY_URL_BYTES {
            return Err(RelayUrlError::TooLong(s.len()));
        }
        let url = Url::parse(s).map_err(|_| RelayUrlError::Unparsable(s.to_owned()))?;
        if !matches!(url.scheme(), "ws" | "wss") {
            return Err(RelayUrlError::Scheme(s.to_owned()));
        }
        let Some(host) = url.host_str() else {
            return Err(RelayUrlError::NoHost(s.to_owned()));
        };
        if host.is_empty() {
            return Err(RelayUrlError::NoHost(s.to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
            return Err(RelayUrlError::Extras(s.to_owned()));
        }
        // `Url` already lower-cases scheme and host and drops the scheme's default port.
        let mut out = format!("{}://{}", url.scheme(), host);
        if let Some(port) = url.port() {
            out.push(':');
            out.push_str(&port.to_string());
        }
        let path = url.path().trim_end_matches('/');
        out.push_str(path);
        if let Some(q) = url.query() {
            out.push('?');
            out.push_str(q);
        }
        // Checked on the spelling kept (`é` becomes `%C3%A9`): every URL accepted parses
        // again to itself, so a saved state always loads.
        if out.len() > MAX_RELAY_URL_BYTES {
            return Err(RelayUrlError::TooLong(out.len()));
        }
        Ok(Self(Arc::from(out)))
    }

    /// The canonical spelling.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `wss://`.
    pub fn is_secure(&self) -> bool {
        self.0.starts_with("wss://")
    }

    /// The host part (name or IP literal, IPv6 in brackets).
    pub fn host(&self) -> &str {
        let rest = &self.0[self.0.find("://").map_or(0, |i| i + 3)..];
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..end];
        if authority.starts_with('[') {
            authority.find(']').map_or(authority, |i| &authority[..=i])
        } else {
            authority.rsplit_once(':').map_or(authority, |(h, _)| h)
        }
    }

    /// The URL for NIP-11 (`http(s)://` with the same host, port and path).
    pub fn nip11_http_url(&self) -> String {
        if let Some(rest) = self.0.strip_prefix("wss://") {
            format!("https://{rest}")
        } else {
            format!("http://{}", &self.0["ws://".len()..])
        }
    }
}

impl FromStr for RelayUrl {
    type Err = RelayUrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelayUrl({})", self.0)
    }
}

impl serde::Serialize for RelayUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for RelayUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        RelayUrl::parse(s).unwrap().as_str().to_owned()
    }

    #[test]
    fn normalises_spellings_of_one_relay() {
        assert_eq!(n("wss://Relay.Example.com/"), "wss://relay.example.com");
        assert_eq!(n("WSS://relay.example.com:443"), "wss://relay.example.com");
        assert_eq!(n("ws://relay.example.com:80/"), "ws://relay.example.com");
        assert_eq!(n("ws://127.0.0.1:7777"), "ws://127.0.0.1:7777");
        assert_eq!(n("wss://x.com/nostr/"), "wss://x.com/nostr");
        assert_eq!(n(" wss://x.com "), "wss://x.com");
    }

    #[test]
    fn rejects_non_websocket_and_junk() {
        assert!(matches!(
            RelayUrl::parse("https://x.com"),
            Err(RelayUrlError::Scheme(_))
        ));
        assert!(matches!(
            RelayUrl::parse("not a url"),
            Err(RelayUrlError::Unparsable(_))
        ));
        assert!(matches!(
            RelayUrl::parse("wss://u:p@x.com"),
            Err(RelayUrlError::Extras(_))
        ));
        assert!(matches!(
            RelayUrl::parse("wss://x.com/#f"),
            Err(RelayUrlError::Extras(_))
        ));
        let at_cap = format!("wss://x.com/{}", "a".repeat(MAX_RELAY_URL_BYTES - 12));
        assert_eq!(at_cap.len(), MAX_RELAY_URL_BYTES);
        assert!(RelayUrl::parse(&at_cap).is_ok());
        assert_eq!(
            RelayUrl::parse(&format!("{at_cap}a")),
            Err(RelayUrlError::TooLong(MAX_RELAY_URL_BYTES + 1))
        );
        // Short as typed, three times longer percent-encoded: refused, so that what is
        // kept always parses again.
        let encoded = format!("wss://x.com/{}", "é".repeat(1_000));
        assert!(encoded.len() <= MAX_RELAY_URL_BYTES);
        assert!(matches!(
            RelayUrl::parse(&encoded),
            Err(RelayUrlError::TooLong(n)) if n > MAX_RELAY_URL_BYTES
        ));
    }

    #[test]
    fn host_and_nip11() {
        let u = RelayUrl::parse("ws://127.0.0.1:7777/").unwrap();
        assert_eq!(u.host(), "127.0.0.1");
        assert_eq!(u.nip11_http_url(), "http://127.0.0.1:7777");
        let v = RelayUrl::parse("wss://[::1]:9000").unwrap();
        assert_eq!(v.host(), "[::1]");
    }
}
