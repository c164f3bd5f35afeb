//! Does an event match a filter, at the cost of the event's tags rather than the
//! filter's values.
//!
//! `nostr::Filter::match_event` tests a tag condition by looking up every value of the
//! filter in the event's tags. Our filters carry 100–400 values each (a chunk of repo
//! refs or root-event ids), so every received event cost hundreds of string lookups per
//! filter of its subscription, and an in-memory store answering a negentropy session
//! paid that for every event it held: at 100k events the e2e benchmark spent ~40 % of
//! its CPU there. An event has a handful of tag values, so [`matches()`] walks those and
//! looks each one up in the filter's set instead. Same answer (the property test below
//! holds it to nostr's), a few lookups per event.

use nostr::filter::MatchEventOptions;
use nostr::{Event, Filter};

/// Whether `event` matches `filter` as NIP-01 says (and as
/// `filter.match_event(event, MatchEventOptions::new())` answers): ids, authors, kinds,
/// `since`/`until`, NIP-50 search, and for every tag of the filter at least one shared
/// value. `limit` says nothing about matching and is ignored.
pub fn matches(filter: &Filter, event: &Event) -> bool {
    let others = MatchEventOptions {
        tags: false,
        ..MatchEventOptions::new()
    };
    filter.match_event(event, others) && tags_match(filter, event)
}

fn tags_match(filter: &Filter, event: &Event) -> bool {
    if filter.generic_tags.is_empty() {
        return true;
    }
    let indexes = event.tags.indexes();
    filter.generic_tags.iter().all(|(letter, wanted)| {
        indexes.get(letter).is_some_and(|present| {
            // Walk the smaller set, look up in the larger one.
            if present.len() <= wanted.len() {
                present.iter().any(|v| wanted.contains(v))
            } else {
                wanted.iter().any(|v| present.contains(v))
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr::{Alphabet, EventBuilder, Keys, Kind, SingleLetterTag, Tag, TagKind, Timestamp};
    use proptest::prelude::*;

    /// A small alphabet of values so filters and events often share some.
    fn value() -> impl Strategy<Value = String> {
        (0u8..6).prop_map(|v| format!("v{v}"))
    }

    fn letter() -> impl Strategy<Value = SingleLetterTag> {
        prop_oneof![
            Just(SingleLetterTag::lowercase(Alphabet::E)),
            Just(SingleLetterTag::uppercase(Alphabet::E)),
            Just(SingleLetterTag::lowercase(Alphabet::Q)),
            Just(SingleLetterTag::lowercase(Alphabet::A)),
        ]
    }

    fn event(
        keys: &Keys,
        kind: u16,
        at: u64,
        tags: Vec<(SingleLetterTag, String)>,
        subject: bool,
    ) -> Event {
        let tags = tags
            .into_iter()
            .map(|(l, v)| Tag::custom(TagKind::SingleLetter(l), [v]))
            // A tag that is not single-letter: never matched.
            .chain(subject.then(|| Tag::custom(TagKind::custom("subject"), ["v1"])));
        EventBuilder::new(Kind::Custom(kind), "Some content")
            .tags(tags)
            .custom_created_at(Timestamp::from_secs(at))
            .sign_with_keys(keys)
            .expect("sign")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matches_answers_as_nostr_does(
            kind in 1u16..4,
            at in 0u64..10,
            tags in proptest::collection::vec((letter(), value()), 0..6),
            kinds in proptest::option::of(proptest::collection::btree_set(1u16..4, 0..3)),
            since in proptest::option::of(0u64..10),
            until in proptest::option::of(0u64..10),
            wanted in proptest::collection::vec(
                (letter(), proptest::collection::btree_set(value(), 0..8)), 0..3),
            search in proptest::option::of(prop_oneof![Just("some"), Just("other"), Just("")]),
            subject in any::<bool>(),
            author in 0u8..3,
            id in 0u8..3,
        ) {
            let keys = Keys::parse(
                "0000000000000000000000000000000000000000000000000000000000000001",
            ).expect("key");
            let other = Keys::parse(
                "0000000000000000000000000000000000000000000000000000000000000002",
            ).expect("key");
            let e = event(&keys, kind, at, tags, subject);
            let mut f = Filter::new();
            if let Some(kinds) = kinds {
                f.kinds = Some(kinds.into_iter().map(Kind::from).collect());
            }
            f.since = since.map(Timestamp::from_secs);
            f.until = until.map(Timestamp::from_secs);
            f.search = search.map(str::to_owned);
            // 0: no condition, 1: the event's, 2: another one.
            match author {
                1 => f = f.author(keys.public_key()),
                2 => f = f.author(other.public_key()),
                _ => {}
            }
            match id {
                1 => f = f.id(e.id),
                2 => f = f.id(nostr::EventId::all_zeros()),
                _ => {}
            }
            for (l, values) in wanted {
                f.generic_tags.insert(l, values.into_iter().collect());
            }
            prop_assert_eq!(matches(&f, &e), f.match_event(&e, MatchEventOptions::new()));
        }
    }

    #[test]
    fn a_filter_with_an_empty_tag_set_matches_nothing_tagged_so() {
        let keys = Keys::generate();
        let e = event(
            &keys,
            1,
            1,
            vec![(SingleLetterTag::lowercase(Alphabet::E), "v1".into())],
            false,
        );
        let mut f = Filter::new();
        f.generic_tags
            .insert(SingleLetterTag::lowercase(Alphabet::E), Default::default());
        assert_eq!(matches(&f, &e), f.match_event(&e, MatchEventOptions::new()));
        assert!(!matches(&f, &e));
    }
}
