//! The URL policy: which relay and clone URLs this process may contact at all.
//!
//! Announcements are written by strangers. Without a guard, a `clone` tag of
//! `git://10.0.0.5/x` or a relay of `ws://127.0.0.1:6379` would make the relay open
//! connections *inside its own network* (SSRF). One policy object guards both kinds of
//! URL so that the rules cannot drift apart:
//! - relay websocket URLs get a **syntactic** check when they are learnt
//!   ([`UrlPolicy::check_relay_url`]: IP literals in forbidden ranges and `localhost`
//!   names are refused; the engine's hot path does no DNS), and every connection to a
//!   relay — websocket and NIP-11 — checks every address the name resolves to and
//!   connects to a checked one (`driver::dial`, through `RelayUrlPolicy::check_address`);
//! - clone URLs get the syntactic check when they are learnt
//!   ([`UrlPolicy::check_clone_url`]) and a **resolving** check right before a fetch
//!   ([`UrlPolicy::resolve_clone_url`]), which looks at every address the name resolves
//!   to, because `innocent.example` may well point at `127.0.0.1`.
//!
//! The default refuses loopback, private (RFC 1918, `fc00::/7`), link-local,
//! unspecified, CGNAT (`100.64.0.0/10`), multicast and broadcast addresses, and any
//! scheme other than `ws`/`wss` for relays and `https`/`http`/`git` for clone URLs.
//! [`UrlPolicy::allow_private`] turns the address rules off and allows `file://` and
//! plain paths, for tests that run servers on `127.0.0.1`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use nostr::Url;

use crate::model::RelayUrl;

/// Why a URL may not be contacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlPolicyError {
    /// The string is not a URL this crate understands.
    #[error("not a usable URL: {0:?}")]
    Unparsable(String),
    /// The scheme is not one the policy allows (e.g. `ssh://`, `file://` outside tests).
    #[error("scheme {scheme:?} is not allowed: {url:?}")]
    Scheme {
        /// The refused scheme.
        scheme: String,
        /// The whole URL.
        url: String,
    },
    /// The URL has no host part.
    #[error("URL has no host: {0:?}")]
    NoHost(String),
    /// The host is a name reserved for this machine (`localhost`, `*.localhost`).
    #[error("host {0:?} names this machine")]
    LocalName(String),
    /// The host is, or resolves to, an address inside a forbidden range.
    #[error("address {addr} of {host:?} is {range}")]
    ForbiddenAddress {
        /// The host as written in the URL.
        host: String,
        /// The offending address.
        addr: IpAddr,
        /// Which range it falls in (`loopback`, `private`, ...).
        range: &'static str,
    },
    /// The host name did not resolve to any address.
    #[error("host {0:?} does not resolve")]
    Unresolvable(String),
    /// Credentials in a clone URL would be sent to whoever the announcement names.
    #[error("URL must not carry credentials: {0:?}")]
    Credentials(String),
}

/// Which URLs may be contacted. Cheap to clone; built once and shared.
///
/// The default is the safe production setting. Tests that run git daemons or relays on
/// `127.0.0.1` use [`UrlPolicy::allow_private`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPolicy {
    allow_private: bool,
    clone_schemes: Arc<[String]>,
}

impl Default for UrlPolicy {
    fn default() -> Self {
        Self {
            allow_private: false,
            clone_schemes: Arc::from(vec![
                "https".to_owned(),
                "http".to_owned(),
                "git".to_owned(),
            ]),
        }
    }
}

impl UrlPolicy {
    /// The production policy (same as `default()`).
    pub fn strict() -> Self {
        Self::default()
    }

    /// A policy for tests and closed networks: private, loopback and link-local addresses
    /// are allowed, and so are `file://` URLs and local paths as clone URLs.
    pub fn allow_private() -> Self {
        Self {
            allow_private: true,
            clone_schemes: Arc::from(vec![
                "https".to_owned(),
                "http".to_owned(),
                "git".to_owned(),
                "file".to_owned(),
            ]),
        }
    }

    /// Replaces the clone URL schemes allowed (lower-case, e.g. `["https"]` to refuse
    /// unencrypted transports). `file` is honoured only together with `allow_private`.
    pub fn with_clone_schemes<I, S>(mut self, schemes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let v: Vec<String> = schemes
            .into_iter()
            .map(|s| s.into().to_ascii_lowercase())
            .collect();
        self.clone_schemes = Arc::from(v);
        self
    }

    /// True when private, loopback and link-local destinations are allowed.
    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// Syntactic check of a relay URL: `localhost` names and IP literals in forbidden
    /// ranges are refused. Names are not resolved (see the module docs for why).
    pub fn check_relay_url(&self, url: &RelayUrl) -> Result<(), UrlPolicyError> {
        let host = url.host().trim_start_matches('[').trim_end_matches(']');
        self.check_host_syntax(host)
    }

    /// Parses a clone URL and checks its scheme and host syntactically (no DNS).
    ///
    /// Accepts `https://`, `http://`, `git://` and, with [`UrlPolicy::allow_private`],
    /// `file://` URLs and absolute local paths. `ssh` and scp-like `user@host:path` forms are
    /// refused: the relay has no keys to use them with.
    pub fn check_clone_url(&self, raw: &str) -> Result<CloneUrl, UrlPolicyError> {
        let url = CloneUrl::parse(raw)?;
        if !self.clone_schemes.iter().any(|s| s == url.scheme()) {
            return Err(UrlPolicyError::Scheme {
                scheme: url.scheme().to_owned(),
                url: raw.to_owned(),
            });
        }
        if url.scheme() == "file" {
            return if self.allow_private {
                Ok(url)
            } else {
                Err(UrlPolicyError::Scheme {
                    scheme: "file".to_owned(),
                    url: raw.to_owned(),
                })
            };
        }
        self.check_host_syntax(url.host())?;
        Ok(url)
    }

    /// The resolving check, to run right before contacting a clone URL (it blocks on
    /// DNS). Every resolved address must be allowed; one forbidden address refuses the
    /// URL, since a name answering with both public and private addresses is exactly the
    /// rebinding trick the check exists for. Returns the addresses, so a caller can
    /// connect to a checked address instead of resolving again. `file://` URLs return an
    /// empty list.
    pub fn resolve_clone_url(&self, url: &CloneUrl) -> Result<Vec<SocketAddr>, UrlPolicyError> {
        let checked = self.check_clone_url(url.as_str())?;
        if checked.scheme() == "file" {
            return Ok(Vec::new());
        }
        let host = checked.host();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match (bare, checked.port()).to_socket_addrs() {
            Ok(it) => it.collect(),
            Err(_) => return Err(UrlPolicyError::Unresolvable(host.to_owned())),
        };
        if addrs.is_empty() {
            return Err(UrlPolicyError::Unresolvable(host.to_owned()));
        }
        for a in &addrs {
            self.check_ip(host, a.ip())?;
        }
        Ok(addrs)
    }

    /// Checks one address against the policy.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), UrlPolicyError> {
        if self.allow_private {
            return Ok(());
        }
        match forbidden_range(ip) {
            Some(range) => Err(UrlPolicyError::ForbiddenAddress {
                host: host.to_owned(),
                addr: ip,
                range,
            }),
            None => Ok(()),
        }
    }

    fn check_host_syntax(&self, host: &str) -> Result<(), UrlPolicyError> {
        if host.is_empty() {
            return Err(UrlPolicyError::NoHost(host.to_owned()));
        }
        if self.allow_private {
            return Ok(());
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.check_ip(host, ip);
        }
        let lower = bare.trim_end_matches('.').to_ascii_lowercase();
        if lower == "localhost" || lower.ends_with(".localhost") {
            return Err(UrlPolicyError::LocalName(host.to_owned()));
        }
        Ok(())
    }
}

/// The range a forbidden address falls in, or `None` for a public address.
///
/// IPv4-mapped and IPv4-compatible IPv6 addresses are judged by their IPv4 part, so
/// `::ffff:127.0.0.1` is loopback.
pub fn forbidden_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            forbidden_v6(v6)
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("CGNAT")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if ip.is_multicast() || o[0] >= 240 {
        Some("multicast or reserved")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("private")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast or reserved")
    } else if s[0..6] == [0, 0, 0, 0, 0, 0] {
        // IPv4-compatible (deprecated) `::a.b.c.d`: judge the embedded IPv4 address.
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        forbidden_v4(v4)
    } else {
        None
    }
}

/// A parsed clone URL (`https://`, `http://`, `git://` or `file://`), cheap to clone.
///
/// Parsing does not apply the policy; get one through [`UrlPolicy::check_clone_url`] to
/// know it passed the syntactic checks. The host is what per-host rate limits key on.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CloneUrl {
    text: Arc<str>,
    scheme_end: usize,
    host: Arc<str>,
    port: u16,
}

impl CloneUrl {
    /// Parses a clone URL. Local absolute paths become `file://` URLs. Credentials are
    /// refused; a trailing slash is dropped so that two spellings of one URL are one.
    pub fn parse(raw: &str) -> Result<Self, UrlPolicyError> {
        let trimmed = raw.trim();
        if trimmed.starts_with('/') {
            let text = format!("file://{}", trimmed.trim_end_matches('/'));
            return Ok(Self {
                text: Arc::from(text),
                scheme_end: 4,
                host: Arc::from(""),
                port: 0,
            });
        }
        let url = Url::parse(trimmed).map_err(|_| UrlPolicyError::Unparsable(raw.to_owned()))?;
        let scheme = url.scheme().to_owned();
        if !matches!(scheme.as_str(), "https" | "http" | "git" | "file") {
            return Err(UrlPolicyError::Scheme {
                scheme,
                url: raw.to_owned(),
            });
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlPolicyError::Credentials(raw.to_owned()));
        }
        if scheme == "file" {
            if url.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(UrlPolicyError::Unparsable(raw.to_owned()));
            }
            let text = format!("file://{}", url.path().trim_end_matches('/'));
            return Ok(Self {
                text: Arc::from(text),
                scheme_end: 4,
                host: Arc::from(""),
                port: 0,
            });
        }
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            "git" => 9418,
            _ => {
                return Err(UrlPolicyError::Scheme {
                    scheme,
                    url: raw.to_owned(),
                });
            }
        };
        let host = match url.host_str() {
            Some(h) if !h.is_empty() => h.to_ascii_lowercase(),
            _ => return Err(UrlPolicyError::NoHost(raw.to_owned())),
        };
        let port = url.port().unwrap_or(default_port);
        let mut text = format!("{scheme}://{host}");
        if url.port().is_some() {
            text.push(':');
            text.push_str(&port.to_string());
        }
        text.push_str(url.path().trim_end_matches('/'));
        if let Some(q) = url.query() {
            text.push('?');
            text.push_str(q);
        }
        Ok(Self {
            text: Arc::from(text),
            scheme_end: scheme.len(),
            host: Arc::from(host),
            port,
        })
    }

    /// The normalised URL.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `https`, `http`, `git` or `file`.
    pub fn scheme(&self) -> &str {
        &self.text[..self.scheme_end]
    }

    /// The host, lower-case (IPv6 in brackets); empty for `file://`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, with the scheme's default filled in; 0 for `file://`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The path part (after host and port), e.g. `/owner/repo.git`.
    pub fn path(&self) -> &str {
        let rest = &self.text[self.scheme_end + 3..];
        if self.scheme() == "file" {
            return rest;
        }
        let start = rest.find('/').unwrap_or(rest.len());
        let end = rest.find('?').unwrap_or(rest.len()).max(start);
        &rest[start..end]
    }
}

impl fmt::Display for CloneUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for CloneUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CloneUrl({})", self.text)
    }
}

/// The engine asks this before dialling a relay found in an announcement.
impl crate::ports::RelayUrlPolicy for UrlPolicy {
    fn permits_relay(&self, url: &RelayUrl) -> bool {
        self.check_relay_url(url).is_ok()
    }

    fn check_address(&self, host: &str, addr: IpAddr) -> Result<(), String> {
        self.check_ip(host, addr).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_refuses_internal_relays() {
        let p = UrlPolicy::default();
        for bad in [
            "ws://127.0.0.1:7777",
            "ws://localhost",
            "wss://foo.localhost",
            "ws://10.1.2.3",
            "ws://192.168.0.1",
            "ws://172.20.0.1",
            "ws://169.254.169.254",
            "ws://100.64.1.1",
            "ws://0.0.0.0",
            "ws://[::1]",
            "ws://[fd00::1]",
            "ws://[fe80::1]",
            "ws://[::ffff:127.0.0.1]",
        ] {
            let u = RelayUrl::parse(bad).unwrap();
            assert!(p.check_relay_url(&u).is_err(), "{bad} should be refused");
            assert!(UrlPolicy::allow_private().check_relay_url(&u).is_ok());
        }
        for good in [
            "wss://relay.example.com",
            "ws://8.8.8.8",
            "wss://[2001:4860::8888]",
        ] {
            assert!(
                p.check_relay_url(&RelayUrl::parse(good).unwrap()).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn clone_urls_schemes_and_hosts() {
        let p = UrlPolicy::default();
        assert!(p.check_clone_url("https://github.com/a/b.git").is_ok());
        assert!(p.check_clone_url("git://git.example.org/x").is_ok());
        assert!(matches!(
            p.check_clone_url("ssh://git@github.com/a/b"),
            Err(UrlPolicyError::Scheme { .. })
        ));
        assert!(p.check_clone_url("git@github.com:a/b.git").is_err());
        assert!(matches!(
            p.check_clone_url("file:///tmp/x"),
            Err(UrlPolicyError::Scheme { .. })
        ));
        assert!(matches!(
            p.check_clone_url("/tmp/x"),
            Err(UrlPolicyError::Scheme { .. })
        ));
        assert!(matches!(
            p.check_clone_url("git://127.0.0.1:9418/x"),
            Err(UrlPolicyError::ForbiddenAddress {
                range: "loopback",
                ..
            })
        ));
        assert!(matches!(
            p.check_clone_url("https://u:p@h.com/x"),
            Err(UrlPolicyError::Credentials(_))
        ));
        let t = UrlPolicy::allow_private();
        assert!(t.check_clone_url("file:///tmp/x").is_ok());
        assert!(t.check_clone_url("git://127.0.0.1:9418/x").is_ok());
    }

    #[test]
    fn clone_url_parts() {
        let u = CloneUrl::parse("HTTPS://Git.Example.com:8443/a/b.git/").unwrap();
        assert_eq!(u.as_str(), "https://git.example.com:8443/a/b.git");
        assert_eq!(u.host(), "git.example.com");
        assert_eq!(u.port(), 8443);
        assert_eq!(u.path(), "/a/b.git");
        let g = CloneUrl::parse("git://h/x").unwrap();
        assert_eq!(g.port(), 9418);
        let f = CloneUrl::parse("/srv/x.git").unwrap();
        assert_eq!((f.scheme(), f.path()), ("file", "/srv/x.git"));
    }

    #[test]
    fn resolving_check_looks_at_addresses() {
        let p = UrlPolicy::default();
        // `localhost` is refused by name already; an IP literal is refused without DNS.
        let u = CloneUrl::parse("git://127.0.0.1:1/x").unwrap();
        assert!(p.resolve_clone_url(&u).is_err());
        let t = UrlPolicy::allow_private();
        assert_eq!(t.resolve_clone_url(&u).unwrap().len(), 1);
        let bad = CloneUrl::parse("git://no-such-host.invalid/x").unwrap();
        assert!(matches!(
            t.resolve_clone_url(&bad),
            Err(UrlPolicyError::Unresolvable(_))
        ));
    }

    #[test]
    fn ranges() {
        assert_eq!(
            forbidden_range("100.127.255.255".parse().unwrap()),
            Some("CGNAT")
        );
        assert_eq!(forbidden_range("100.128.0.1".parse().unwrap()), None);
        assert_eq!(forbidden_range("172.32.0.1".parse().unwrap()), None);
        assert_eq!(
            forbidden_range("::127.0.0.1".parse().unwrap()),
            Some("loopback")
        );
        assert_eq!(forbidden_range("fc00::1".parse().unwrap()), Some("private"));
        assert_eq!(forbidden_range("1.1.1.1".parse().unwrap()), None);
    }
}
