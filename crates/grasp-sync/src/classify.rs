//! Classification of relay NOTICE and CLOSED texts into the few signals the engine acts
//! on: slow down, consolidate, fall back from negentropy, needs auth. Relays phrase these
//! differently (NIP-01 machine-readable prefixes, strfry's and nostr-rs-relay's free
//! text), so matching is case-insensitive and looks for known phrases anywhere in the
//! message, not only at the start (strfry prefixes its notices with `ERROR: `).

/// What a NOTICE or CLOSED message means for the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RelaySignal {
    /// Too many subscriptions open ("too many concurrent REQs"): consolidate live
    /// subscriptions and send fewer REQs. Checked before rate limiting, because a relay
    /// saying `rate-limited: too many concurrent REQs` needs fewer subscriptions, not
    /// just a pause; the engine should apply the cooldown too
    /// ([`RelaySignal::implies_cooldown`]).
    TooManySubscriptions,
    /// The REQ carried more filters than the relay takes ("too many filters"): send
    /// fewer per REQ from now on.
    TooManyFilters,
    /// Slow down (`rate-limited:`, "slow down", "rate limit"): health goes RateLimited.
    RateLimited,
    /// The relay does not speak NIP-77 ("negentropy disabled", strfry's "unknown cmd",
    /// nostr-rs-relay's "could not parse command"). Only meaningful when it answers a
    /// NEG-OPEN that has not had its first NEG-MSG: the texts are generic parse errors.
    NegentropyUnsupported,
    /// `auth-required:` (NIP-42).
    AuthRequired,
    /// `restricted:`: the relay refuses this for policy reasons (NIP-42 / paid relays).
    Restricted,
    /// `blocked:`.
    Blocked,
    /// `invalid:`: our request was malformed in the relay's eyes.
    Invalid,
    /// `unsupported:`: a feature we used is not supported.
    Unsupported,
    /// `error:`: a relay-side error.
    Error,
    /// Nothing we recognise (including an empty CLOSED reason).
    Other,
}

impl RelaySignal {
    /// Whether health should enter the rate-limit cooldown.
    pub fn implies_cooldown(self) -> bool {
        matches!(
            self,
            RelaySignal::RateLimited | RelaySignal::TooManySubscriptions
        )
    }

    /// Whether the engine should consolidate this relay's live subscriptions.
    pub fn implies_consolidation(self) -> bool {
        self == RelaySignal::TooManySubscriptions
    }
}

/// Only the start of a message is examined, so a hostile relay's megabyte NOTICE costs
/// little.
const MAX_EXAMINED: usize = 1024;

const TOO_MANY_SUBS: &[&str] = &[
    "too many concurrent req",
    "too many subscriptions",
    "too many concurrent subscriptions",
    "too many open subscriptions",
    "too many reqs",
    "maximum concurrent subscription",
    "max subscriptions",
    "subscription limit",
    "max_subscriptions",
];

const TOO_MANY_FILTERS: &[&str] = &[
    "too many filters",
    "max filters",
    "max_filters",
    "filter limit",
    "maximum number of filters",
];

const NEGENTROPY_UNSUPPORTED: &[&str] = &[
    "negentropy disabled",
    "negentropy not supported",
    "negentropy is not supported",
    "negentropy unsupported",
    "neg-open not supported",
    "unknown cmd",
    "unknown command",
    "could not parse command",
    "unknown message type",
    "unsupported message",
    // khatru without NIP-77 answers NEG-OPEN so.
    "failed to parse envelope",
    // A relay on negentropy's first protocol version (a NEG-OPEN of four elements).
    "negentropy query missing elements",
    "nip77 disabled",
    "nip-77 disabled",
    "nip77 not supported",
    "nip-77 not supported",
];

const RATE_LIMITED: &[&str] = &[
    "rate-limited",
    "rate limited",
    "rate limit",
    "ratelimit",
    "slow down",
    "too many requests",
    "too fast",
];

/// Classifies a NOTICE text.
pub fn classify_notice(message: &str) -> RelaySignal {
    classify(message)
}

/// Classifies the reason of a CLOSED message (what follows the subscription id).
pub fn classify_closed(message: &str) -> RelaySignal {
    classify(message)
}

fn classify(message: &str) -> RelaySignal {
    let head = truncate(message.trim_start(), MAX_EXAMINED).to_ascii_lowercase();
    // strfry: "ERROR: bad msg: ...", some relays "NOTICE: ..."; the NIP-01 prefix may
    // follow such a decoration.
    let body = ["error: bad msg:", "notice:"]
        .iter()
        .find_map(|p| head.strip_prefix(p))
        .map_or(head.as_str(), str::trim_start);

    if contains_any(&head, TOO_MANY_SUBS) {
        return RelaySignal::TooManySubscriptions;
    }
    if contains_any(&head, NEGENTROPY_UNSUPPORTED) {
        return RelaySignal::NegentropyUnsupported;
    }
    if contains_any(&head, TOO_MANY_FILTERS) {
        return RelaySignal::TooManyFilters;
    }
    if let Some(signal) = machine_prefix(body) {
        if signal != RelaySignal::Error && signal != RelaySignal::Invalid {
            return signal;
        }
        // `error:`/`invalid:` may still carry a rate-limit text.
        if contains_any(&head, RATE_LIMITED) {
            return RelaySignal::RateLimited;
        }
        return signal;
    }
    if contains_any(&head, RATE_LIMITED) {
        return RelaySignal::RateLimited;
    }
    if head.contains("auth-required") || head.contains("authentication required") {
        return RelaySignal::AuthRequired;
    }
    RelaySignal::Other
}

/// The NIP-01 / NIP-42 machine-readable prefix, if the (lower-cased) text starts with one.
/// Case-insensitive, unlike `nostr::message::MachineReadablePrefix::parse`.
fn machine_prefix(lower: &str) -> Option<RelaySignal> {
    let (prefix, _) = lower.split_once(':')?;
    Some(match prefix.trim() {
        "rate-limited" => RelaySignal::RateLimited,
        "auth-required" => RelaySignal::AuthRequired,
        "restricted" => RelaySignal::Restricted,
        "blocked" => RelaySignal::Blocked,
        "invalid" => RelaySignal::Invalid,
        "unsupported" => RelaySignal::Unsupported,
        "error" => RelaySignal::Error,
        _ => return None,
    })
}

fn contains_any(haystack: &str, needles: &[&str]) -> bool {
    needles.iter().any(|n| haystack.contains(n))
}

/// The longest prefix of `s` of at most `max` bytes ending on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use RelaySignal::*;

    #[test]
    fn too_many_filters_is_its_own_signal() {
        assert_eq!(classify_closed("error: too many filters"), TooManyFilters);
        assert_eq!(
            classify_notice("ERROR: bad req: too many filters"),
            TooManyFilters
        );
        assert_eq!(classify_closed("invalid: max_filters is 5"), TooManyFilters);
    }

    #[test]
    fn machine_readable_prefixes() {
        assert_eq!(classify_closed("rate-limited: slow down"), RateLimited);
        assert_eq!(classify_closed("Rate-Limited: you are noisy"), RateLimited);
        assert_eq!(
            classify_closed("auth-required: we only serve paying users"),
            AuthRequired
        );
        assert_eq!(
            classify_closed("restricted: not on the whitelist"),
            Restricted
        );
        assert_eq!(classify_closed("blocked: you are banned"), Blocked);
        assert_eq!(classify_closed("invalid: filter too broad"), Invalid);
        assert_eq!(classify_closed("unsupported: search"), Unsupported);
        assert_eq!(classify_closed("error: shutting down"), Error);
        assert_eq!(classify_closed(""), Other);
        assert_eq!(classify_closed("duplicate: already have it"), Other);
    }

    #[test]
    fn real_world_free_text() {
        // strfry
        assert_eq!(
            classify_notice("ERROR: bad msg: unknown cmd"),
            NegentropyUnsupported
        );
        assert_eq!(
            classify_notice("bad msg: unknown cmd"),
            NegentropyUnsupported
        );
        assert_eq!(
            classify_notice("ERROR: bad msg: negentropy disabled"),
            NegentropyUnsupported
        );
        assert_eq!(
            classify_notice("ERROR: too many concurrent REQs"),
            TooManySubscriptions
        );
        assert_eq!(
            classify_closed("rate-limited: too many concurrent REQs"),
            TooManySubscriptions
        );
        // nostr-rs-relay
        assert_eq!(
            classify_notice("could not parse command"),
            NegentropyUnsupported
        );
        // a relay on negentropy v0
        assert_eq!(
            classify_notice("ERROR: negentropy error: negentropy query missing elements"),
            NegentropyUnsupported
        );
        // khatru, and a CLOSED for the NEG-OPEN's id
        assert_eq!(
            classify_notice("failed to parse envelope"),
            NegentropyUnsupported
        );
        assert_eq!(
            classify_closed("closed: nip77 disabled"),
            NegentropyUnsupported
        );
        // nostr-relay-builder's rate limiter and other relays
        assert_eq!(classify_notice("rate-limited: slow down"), RateLimited);
        assert_eq!(
            classify_notice("Slow down, you are sending too fast"),
            RateLimited
        );
        assert_eq!(classify_notice("You hit the rate limit"), RateLimited);
        assert_eq!(
            classify_notice("error: Maximum concurrent subscription count reached"),
            TooManySubscriptions
        );
        assert_eq!(
            classify_notice("Too many subscriptions"),
            TooManySubscriptions
        );
        assert_eq!(classify_notice("error: rate limit exceeded"), RateLimited);
        assert_eq!(
            classify_notice("ERROR: bad msg: auth-required: please auth"),
            AuthRequired
        );
        assert_eq!(classify_notice("hello there"), Other);
    }

    #[test]
    fn implications() {
        assert!(TooManySubscriptions.implies_consolidation());
        assert!(TooManySubscriptions.implies_cooldown());
        assert!(RateLimited.implies_cooldown());
        assert!(!RateLimited.implies_consolidation());
        assert!(!Other.implies_cooldown());
    }

    #[test]
    fn long_and_multibyte_messages() {
        let long = format!("{}rate limit", "é".repeat(2000));
        assert_eq!(classify_notice(&long), Other); // beyond what we examine
        assert_eq!(truncate("éé", 3), "é");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_panics(s in prop_oneof![any::<String>(), "\\PC{300,1100}"], prefix in "(rate-limited:|ERROR: bad msg: |auth-required:|)") {
            let msg = format!("{prefix}{s}");
            let _ = classify_notice(&msg);
            let _ = classify_closed(&msg);
            prop_assert_eq!(classify_notice(&msg), classify_notice(&msg.to_ascii_uppercase()));
        }
    }
}
