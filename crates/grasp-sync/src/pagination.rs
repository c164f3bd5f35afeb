//! The historic REQ+EOSE pagination planner (design section 7), pure: given the page a
//! relay just returned for one subscription, decide which ids are new and what to ask
//! next. It terminates on every relay, honest or not, and never loses events silently:
//! whatever it could not prove complete is reported as an [`IncompleteReason`].
//!
//! Pages go backwards in time with an inclusive `until` (the oldest `created_at` seen).
//! The hard cases are a tie group (many events with one timestamp) larger than a page,
//! a relay that caps `limit` below what we ask without saying so, and a relay that
//! ignores `until`.

use std::collections::HashSet;

use nostr::{EventId, Timestamp};

/// Bounds of the planner. Defaults: limit doubled up to 5000, at most 10 000 pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaginationConfig {
    /// Largest `limit` the planner asks when it doubles to get past a tie group.
    pub max_limit: usize,
    /// Most pages per subscription; a relay feeding endless new ids is cut off here.
    pub max_pages: u32,
}

impl Default for PaginationConfig {
    fn default() -> Self {
        Self {
            max_limit: 5000,
            max_pages: 10_000,
        }
    }
}

/// Why a paginated subscription may have missed events. Reported, never swallowed, so
/// the batch can be marked failed and retried later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IncompleteReason {
    /// More events share `timestamp` than the relay returns in one page (even with the
    /// largest limit we ask); we moved on to older events without all of them.
    TieGroupLargerThanCap {
        /// The shared `created_at`.
        timestamp: Timestamp,
    },
    /// A page held only events at `timestamp`, fewer than we asked; the relay's cap is
    /// unknown, so we cannot tell "that was all of them" from "the relay capped the
    /// page". Learn the cap (NIP-11 `max_limit`) to avoid this.
    TieGroupMayExceedUnknownCap {
        /// The shared `created_at`.
        timestamp: Timestamp,
    },
    /// The relay returned events newer than the `until` asked and nothing new: it
    /// ignores `until`, so older events are out of reach by REQ.
    RelayIgnoresUntil,
    /// The page budget ([`PaginationConfig::max_pages`]) ran out.
    PageBudgetExhausted,
}

/// What to do after a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageDecision {
    /// The subscription is finished: close it.
    Done,
    /// Ask again with this inclusive `until` and `limit`.
    Next {
        /// Inclusive upper bound on `created_at`.
        until: Timestamp,
        /// `limit` to ask.
        limit: usize,
    },
}

/// The planner's answer to one page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageOutcome {
    /// Ids not returned as new before, in arrival order, each once.
    pub new_ids: Vec<EventId>,
    /// Stop or ask the next page.
    pub decision: PageDecision,
    /// Set when this page made the subscription possibly incomplete.
    pub incomplete: Option<IncompleteReason>,
}

/// Pagination state of one historic subscription.
#[derive(Debug, Clone)]
pub struct Paginator {
    config: PaginationConfig,
    seen: HashSet<EventId>,
    limit: usize,
    known_cap: Option<usize>,
    largest_page: usize,
    pages: u32,
    done: bool,
    incomplete: Option<IncompleteReason>,
}

impl Paginator {
    /// A planner whose first page asks `limit` (at least 1). `known_cap` is the relay's
    /// advertised `max_limit`, if any: only with it may a short page mean "exhausted".
    pub fn new(limit: usize, known_cap: Option<usize>, config: PaginationConfig) -> Self {
        let known_cap = known_cap.map(|c| c.max(1));
        let mut limit = limit.max(1);
        if let Some(cap) = known_cap {
            limit = limit.min(cap);
        }
        Self {
            config,
            seen: HashSet::new(),
            limit,
            known_cap,
            largest_page: 0,
            pages: 0,
            done: false,
            incomplete: None,
        }
    }

    /// The `limit` to ask on the next page (the first page has no `until`).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Pages received so far.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// True once a [`PageDecision::Done`] was returned.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The first incompleteness reported on this subscription, if any.
    pub fn incomplete(&self) -> Option<IncompleteReason> {
        self.incomplete
    }

    /// Ids seen so far (for dedupe and tests).
    pub fn seen_count(&self) -> usize {
        self.seen.len()
    }

    /// Feeds the page the relay returned (until EOSE) for the REQ asked with
    /// `until_asked` (`None` on the first page) and [`Paginator::limit`].
    pub fn on_page(
        &mut self,
        until_asked: Option<Timestamp>,
        page: &[(EventId, Timestamp)],
    ) -> PageOutcome {
        let mut new_ids = Vec::new();
        for (id, _) in page {
            if self.seen.insert(*id) {
                new_ids.push(*id);
            }
        }
        if self.done {
            // A late page after Done: report ids, decide nothing new.
            return self.finish(new_ids, None);
        }
        self.pages = self.pages.saturating_add(1);
        let asked = self.limit;
        let n = page.len();
        let largest_before = self.largest_page;
        self.largest_page = self.largest_page.max(n);
        let Some(oldest) = page.iter().map(|(_, t)| *t).min() else {
            return self.finish(new_ids, None);
        };
        // A page shorter than both what we asked and the relay's known cap holds every
        // matching event (at or before `until`, or all of them if `until` is ignored).
        let exhausted = self.known_cap.is_some_and(|cap| n < asked.min(cap));
        if exhausted {
            return self.finish(new_ids, None);
        }

        let ignores_until = until_asked.is_some_and(|u| page.iter().any(|(_, t)| *t > u));
        let ceiling = self
            .known_cap
            .map_or(self.config.max_limit, |c| c.min(self.config.max_limit));
        if ignores_until {
            if new_ids.is_empty() {
                // The same newest page again: on such a relay only a larger page reaches
                // further back. Ask the largest it allows, once; whatever it still
                // withholds is reported.
                if n >= asked && asked < ceiling {
                    let until = until_asked.map_or(oldest, |u| u.min(oldest));
                    return self.next(new_ids, until, ceiling, None);
                }
                return self.finish(new_ids, Some(IncompleteReason::RelayIgnoresUntil));
            }
            // New ids despite ignoring `until` (events arriving meanwhile): keep going
            // backwards, never forwards.
            let until = until_asked.map_or(oldest, |u| u.min(oldest));
            return self.next(new_ids, until, asked, None);
        }

        let tie_at_until = until_asked.filter(|u| page.iter().all(|(_, t)| t == u));
        let Some(tie) = tie_at_until else {
            if new_ids.is_empty() {
                // Only possible when older events in the page were all seen: nothing
                // left that this relay will show us.
                return self.finish(new_ids, None);
            }
            return self.next(new_ids, oldest, asked, None);
        };

        // Every event sits at the `until` asked: asking the same again returns the same
        // page. Get past the tie group: a larger limit if the page was full, else move
        // one second older.
        if n >= asked && asked < ceiling {
            let doubled = asked.saturating_mul(2).min(ceiling);
            return self.next(new_ids, tie, doubled, None);
        }
        // Complete when the relay returned fewer than the cap allows: fewer than the
        // known cap (handled above), or fewer than a page it returned before.
        let tie_complete = n < largest_before && n < asked;
        if tie_complete {
            // The relay returned fewer than it has shown it can and fewer than asked,
            // newest first: that was every event at or before `until`, so nothing older
            // exists either. Stop here (design §7: a page without new ids ends it)
            // instead of asking `until − 1` for an empty page on every subscription.
            return self.finish(new_ids, None);
        }
        let reason = if n >= asked || self.known_cap.is_some() {
            IncompleteReason::TieGroupLargerThanCap { timestamp: tie }
        } else {
            IncompleteReason::TieGroupMayExceedUnknownCap { timestamp: tie }
        };
        match tie.as_secs().checked_sub(1) {
            Some(older) => self.next(new_ids, Timestamp::from_secs(older), asked, Some(reason)),
            None => self.finish(new_ids, Some(reason)),
        }
    }

    fn note(&mut self, reason: Option<IncompleteReason>) {
        if self.incomplete.is_none() {
            self.incomplete = reason;
        }
    }

    fn finish(&mut self, new_ids: Vec<EventId>, reason: Option<IncompleteReason>) -> PageOutcome {
        self.done = true;
        self.note(reason);
        PageOutcome {
            new_ids,
            decision: PageDecision::Done,
            incomplete: reason,
        }
    }

    fn next(
        &mut self,
        new_ids: Vec<EventId>,
        until: Timestamp,
        limit: usize,
        reason: Option<IncompleteReason>,
    ) -> PageOutcome {
        if self.pages >= self.config.max_pages {
            let reason = reason.or(Some(IncompleteReason::PageBudgetExhausted));
            return self.finish(new_ids, reason);
        }
        self.limit = limit.max(1);
        self.note(reason);
        PageOutcome {
            new_ids,
            decision: PageDecision::Next {
                until,
                limit: self.limit,
            },
            incomplete: reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn eid(n: u32) -> EventId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_be_bytes());
        EventId::from_byte_array(b)
    }

    /// An in-memory relay: sorts newest first (ties by id), honours or ignores `until`,
    /// clamps `limit` to its cap.
    struct SimRelay {
        events: Vec<(EventId, Timestamp)>,
        cap: usize,
        honours_until: bool,
    }

    impl SimRelay {
        fn new(stamps: &[u64], cap: usize, honours_until: bool) -> Self {
            let mut events: Vec<(EventId, Timestamp)> = stamps
                .iter()
                .enumerate()
                .map(|(i, t)| (eid(i as u32), Timestamp::from_secs(*t)))
                .collect();
            events.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            Self {
                events,
                cap,
                honours_until,
            }
        }

        fn query(&self, until: Option<Timestamp>, limit: usize) -> Vec<(EventId, Timestamp)> {
            self.events
                .iter()
                .filter(|(_, t)| !self.honours_until || until.is_none_or(|u| *t <= u))
                .take(limit.min(self.cap))
                .copied()
                .collect()
        }
    }

    struct Run {
        collected: Vec<EventId>,
        incomplete: Vec<IncompleteReason>,
        pages: u32,
    }

    fn run(
        relay: &SimRelay,
        limit: usize,
        known_cap: Option<usize>,
        config: PaginationConfig,
    ) -> Run {
        let mut p = Paginator::new(limit, known_cap, config);
        let mut until = None;
        let mut out = Run {
            collected: Vec::new(),
            incomplete: Vec::new(),
            pages: 0,
        };
        loop {
            let page = relay.query(until, p.limit());
            let o = p.on_page(until, &page);
            out.pages += 1;
            out.collected.extend(o.new_ids);
            out.incomplete.extend(o.incomplete);
            match o.decision {
                PageDecision::Done => return out,
                PageDecision::Next { until: u, .. } => until = Some(u),
            }
            assert!(
                out.pages <= config.max_pages,
                "planner exceeded its page budget"
            );
        }
    }

    #[test]
    fn simple_history_in_pages() {
        let stamps: Vec<u64> = (0..25).collect();
        let r = run(
            &SimRelay::new(&stamps, 1000, true),
            10,
            None,
            PaginationConfig::default(),
        );
        assert_eq!(r.collected.len(), 25);
        assert!(r.incomplete.is_empty());
    }

    #[test]
    fn known_cap_short_page_finishes_at_once() {
        let stamps: Vec<u64> = (0..5).collect();
        let r = run(
            &SimRelay::new(&stamps, 100, true),
            10,
            Some(100),
            PaginationConfig::default(),
        );
        assert_eq!((r.collected.len(), r.pages), (5, 1));
        assert!(r.incomplete.is_empty());
    }

    #[test]
    fn unknown_cap_below_limit_is_not_mistaken_for_exhaustion() {
        let stamps: Vec<u64> = (0..100).collect();
        let r = run(
            &SimRelay::new(&stamps, 7, true),
            50,
            None,
            PaginationConfig::default(),
        );
        assert_eq!(r.collected.len(), 100);
        assert!(r.incomplete.is_empty());
    }

    #[test]
    fn tie_group_larger_than_page_doubles_limit() {
        let mut stamps = vec![50; 30];
        stamps.extend(0..10);
        let r = run(
            &SimRelay::new(&stamps, 1000, true),
            8,
            None,
            PaginationConfig::default(),
        );
        assert_eq!(r.collected.len(), 40);
        assert!(r.incomplete.is_empty());
    }

    #[test]
    fn tie_group_larger_than_cap_is_reported_and_passed() {
        let mut stamps = vec![50; 30];
        stamps.extend(0..10);
        let r = run(
            &SimRelay::new(&stamps, 8, true),
            8,
            Some(8),
            PaginationConfig::default(),
        );
        assert_eq!(
            r.incomplete[0],
            IncompleteReason::TieGroupLargerThanCap {
                timestamp: Timestamp::from_secs(50)
            }
        );
        // it moved on and still fetched everything older
        assert_eq!(r.collected.len(), 8 + 10);
    }

    #[test]
    fn relay_ignoring_until_gets_one_larger_page_and_is_still_reported_without_a_known_cap() {
        let stamps: Vec<u64> = (0..100).collect();
        let r = run(
            &SimRelay::new(&stamps, 1000, false),
            10,
            None,
            PaginationConfig::default(),
        );
        assert_eq!(r.collected.len(), 100, "the larger page brought them all");
        // Without a known cap, "fewer than asked" cannot prove there is nothing more.
        assert_eq!(r.incomplete, vec![IncompleteReason::RelayIgnoresUntil]);
    }

    #[test]
    fn relay_ignoring_until_is_paged_up_to_its_advertised_max_limit() {
        // NIP-11 max_limit 5000, no cap at or below 500, `until` ignored: 1,200 events.
        let stamps: Vec<u64> = (0..1200).collect();
        let r = run(
            &SimRelay::new(&stamps, 5000, false),
            500,
            Some(5000),
            PaginationConfig::default(),
        );
        assert_eq!(r.collected.len(), 1200);
        assert!(r.incomplete.is_empty(), "{:?}", r.incomplete);
        assert!(r.pages <= 4, "pages: {}", r.pages);
    }

    #[test]
    fn relay_ignoring_until_and_capping_below_the_larger_page_is_reported() {
        let stamps: Vec<u64> = (0..1200).collect();
        let r = run(
            &SimRelay::new(&stamps, 500, false),
            500,
            None,
            PaginationConfig::default(),
        );
        assert_eq!(r.collected.len(), 500);
        assert_eq!(r.incomplete, vec![IncompleteReason::RelayIgnoresUntil]);
    }

    #[test]
    fn page_budget_is_reported() {
        let stamps: Vec<u64> = (0..100).collect();
        let cfg = PaginationConfig {
            max_pages: 3,
            ..PaginationConfig::default()
        };
        let r = run(&SimRelay::new(&stamps, 1000, true), 10, None, cfg);
        assert_eq!(r.pages, 3);
        assert_eq!(r.incomplete, vec![IncompleteReason::PageBudgetExhausted]);
    }

    #[test]
    fn empty_relay_and_timestamp_zero() {
        let r = run(
            &SimRelay::new(&[], 10, true),
            10,
            None,
            PaginationConfig::default(),
        );
        assert_eq!((r.collected.len(), r.pages), (0, 1));
        let r = run(
            &SimRelay::new(&[0; 20], 5, true),
            5,
            Some(5),
            PaginationConfig::default(),
        );
        assert_eq!(r.collected.len(), 5);
        assert!(!r.incomplete.is_empty());
    }

    fn relay_strategy() -> impl Strategy<Value = (Vec<u64>, usize, usize, Option<usize>, bool)> {
        (
            // few distinct timestamps → heavy ties
            (1u64..12).prop_flat_map(|spread| proptest::collection::vec(0..spread, 0..120)),
            1usize..40,                    // relay cap
            1usize..40,                    // limit asked
            proptest::bool::ANY,           // cap known to the planner
            proptest::bool::weighted(0.8), // until honoured
        )
            .prop_map(|(stamps, cap, limit, known, honours)| {
                (stamps, cap, limit, known.then_some(cap), honours)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn pagination_properties((stamps, cap, limit, known_cap, honours) in relay_strategy()) {
            let relay = SimRelay::new(&stamps, cap, honours);
            let config = PaginationConfig { max_limit: 64, max_pages: 10_000 };
            let r = run(&relay, limit, known_cap, config);
            let all: BTreeSet<EventId> = relay.events.iter().map(|(id, _)| *id).collect();
            let got: BTreeSet<EventId> = r.collected.iter().copied().collect();

            // (a) terminates within a bound: per distinct timestamp a few pages, plus one
            // per page-full of events, plus the doublings.
            let distinct = stamps.iter().collect::<BTreeSet<_>>().len() as u32;
            let bound = 3 * distinct + (stamps.len() as u32) + 8 + 2;
            prop_assert!(r.pages <= bound, "pages {} > bound {}", r.pages, bound);
            // (d) no id is returned as new twice
            prop_assert_eq!(got.len(), r.collected.len());
            prop_assert!(got.is_subset(&all));
            // (b) honoured until and a cap above the largest tie group: lossless
            let mut ties = std::collections::BTreeMap::new();
            for t in &stamps { *ties.entry(*t).or_insert(0usize) += 1; }
            let largest_tie = ties.values().copied().max().unwrap_or(0);
            if honours && cap > largest_tie && config.max_limit > largest_tie {
                prop_assert_eq!(&got, &all);
            }
            // (c) never lose silently
            if got.len() < all.len() {
                prop_assert!(!r.incomplete.is_empty(), "lost {} events silently", all.len() - got.len());
            }
        }
    }
}
