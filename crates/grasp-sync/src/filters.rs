//! Filter building: the three layers of design section 3 (connection level, state,
//! repo tags, root-event tags), the `ids` fetch after negentropy, and the grouping of
//! filters into REQs. Everything is pure and deterministic: inputs are sorted and
//! de-duplicated, and chunks respect the limits a relay advertises in NIP-11.

use std::collections::btree_map::Entry;
use std::collections::{BTreeSet, HashMap};

use nostr::{Alphabet, EventId, Filter, SingleLetterTag, Timestamp};

use crate::model::{RepoRef, SyncItems};
use crate::nip34::{KIND_GRASP_LIST, KIND_REPO_ANNOUNCEMENT, KIND_REPO_STATE};

/// Bytes reserved in every REQ for what is not a tag value: `["REQ","<sub id up to 64
/// chars>",` plus the filter's keys, kinds, `since`, `until` and `limit`. Generous on
/// purpose: a REQ a few bytes too long is refused as a whole.
const REQ_OVERHEAD: usize = 256;

/// How many REQ chunks one negentropy session covers (400 values by default, ~27 KB of
/// filter: under the 64–128 KiB message limits relays commonly set).
pub const NEGENTROPY_CHUNK_FACTOR: usize = 4;
/// Serialized cost of one 64-hex value inside a JSON array: the hex, two quotes, a comma.
const HEX_VALUE_COST: usize = 64 + 3;

/// What the filter builders may put in one filter and one REQ, and when a relay's live
/// subscriptions should be consolidated.
///
/// The defaults are the design's; [`RelayLimits::lowered_to`] and
/// [`RelayLimits::from_nip11`] lower them to what a relay advertises, so one relay's
/// small limits never make us send REQs it would refuse. No field is ever zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayLimits {
    /// Most values (identifiers, repo refs, event ids) in one filter. Default 100.
    pub chunk_size: usize,
    /// Most filters in one REQ. Default 10: nostream's default `max_filters` is 10, the
    /// lowest default among widely deployed relays we know (strfry allows 200), and ten
    /// filters of 100 event ids (~68 KB) stay under the common 128 KiB message limit.
    pub max_filters_per_req: usize,
    /// Live filters above which the engine consolidates (closes all live subscriptions
    /// and rebuilds them from confirmed state). Default 70, as the anchor.
    pub max_live_filters: usize,
    /// `limit` asked on each historic REQ page. Default 500 (strfry's default cap).
    pub page_limit: usize,
    /// Most concurrent subscriptions the relay allows, if it says so.
    pub max_subscriptions: Option<usize>,
    /// Most events the relay returns for one filter, if it says so; the pagination
    /// planner's known cap.
    pub max_limit: Option<usize>,
    /// Longest websocket message the relay accepts, in bytes, if it says so.
    pub max_message_length: Option<usize>,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            chunk_size: 100,
            max_filters_per_req: 10,
            max_live_filters: 70,
            page_limit: 500,
            max_subscriptions: None,
            max_limit: None,
            max_message_length: None,
        }
    }
}

/// The fields of a NIP-11 `limitation` object that shape our REQs. Absent, negative,
/// zero or non-numeric values are `None`: a relay's nonsense never produces a zero limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Nip11Limitation {
    /// `max_filters`: most filters per subscription.
    pub max_filters: Option<usize>,
    /// `max_subscriptions`: most open subscriptions per connection.
    pub max_subscriptions: Option<usize>,
    /// `max_limit`: the relay clamps every filter's `limit` to this.
    pub max_limit: Option<usize>,
    /// `max_message_length`: longest incoming message, in bytes.
    pub max_message_length: Option<usize>,
}

impl Nip11Limitation {
    /// Reads `limitation` from a whole NIP-11 document (anything else yields all `None`).
    pub fn from_document(doc: &serde_json::Value) -> Self {
        let Some(lim) = doc.get("limitation") else {
            return Self::default();
        };
        let field = |name: &str| {
            lim.get(name)
                .and_then(serde_json::Value::as_u64)
                .filter(|v| *v > 0)
                .map(|v| usize::try_from(v).unwrap_or(usize::MAX))
        };
        Self {
            max_filters: field("max_filters"),
            max_subscriptions: field("max_subscriptions"),
            max_limit: field("max_limit"),
            max_message_length: field("max_message_length"),
        }
    }
}

impl RelayLimits {
    /// The defaults lowered to what a NIP-11 document advertises in `limitation`.
    pub fn from_nip11(doc: &serde_json::Value) -> Self {
        Self::default().lowered_to(&Nip11Limitation::from_document(doc))
    }

    /// These limits lowered (never raised) to `lim`:
    /// - `max_filters_per_req` ≤ `max_filters`;
    /// - `max_live_filters` ≤ half the subscriptions × filters per REQ, keeping the other
    ///   half of the relay's subscriptions for historic pages and negentropy;
    /// - `page_limit` ≤ `max_limit`;
    /// - `chunk_size` so that one filter of `chunk_size` 64-hex values fits in
    ///   `max_message_length`.
    ///
    /// Every count stays at least 1.
    pub fn lowered_to(mut self, lim: &Nip11Limitation) -> Self {
        if let Some(m) = lim.max_filters {
            self.max_filters_per_req = self.max_filters_per_req.min(m);
        }
        if let Some(s) = lim.max_subscriptions {
            self.max_subscriptions = Some(self.max_subscriptions.map_or(s, |old| old.min(s)));
        }
        if let Some(l) = lim.max_limit {
            self.page_limit = self.page_limit.min(l);
            self.max_limit = Some(self.max_limit.map_or(l, |old| old.min(l)));
        }
        if let Some(len) = lim.max_message_length {
            self.max_message_length = Some(self.max_message_length.map_or(len, |old| old.min(len)));
        }
        self.normalised()
    }

    /// Filters per historic REQ: the relay's filters-per-REQ where it says its `limit`
    /// cap, else one. Only with the cap known does a grouped page tell where each
    /// filter's history ends (see `engine/historic/req.rs`).
    pub fn historic_filters_per_req(&self) -> usize {
        match self.max_limit {
            Some(_) => self.max_filters_per_req,
            None => 1,
        }
    }

    /// The limits for a negentropy session's filter: [`NEGENTROPY_CHUNK_FACTOR`] times
    /// the values of a REQ's chunk, within the relay's message size when it says one.
    pub fn for_negentropy(mut self) -> Self {
        self.chunk_size = self.chunk_size.saturating_mul(NEGENTROPY_CHUNK_FACTOR);
        self.normalised()
    }

    /// These limits with at most `max` filters per REQ (a limit learnt from a relay's
    /// refusal), the live-filter budget re-derived to match.
    pub fn with_learnt_max_filters(mut self, max: usize) -> Self {
        self.max_filters_per_req = self.max_filters_per_req.min(max);
        self.normalised()
    }

    /// Enforces the invariants: no zero counts, chunks and live filters within what the
    /// relay's subscription and message limits allow.
    pub fn normalised(mut self) -> Self {
        self.max_filters_per_req = self.max_filters_per_req.max(1);
        self.page_limit = self.page_limit.max(1);
        if let Some(len) = self.max_message_length {
            let fit = len.saturating_sub(REQ_OVERHEAD) / HEX_VALUE_COST;
            self.chunk_size = self.chunk_size.min(fit);
        }
        self.chunk_size = self.chunk_size.max(1);
        if let Some(s) = self.max_subscriptions {
            let live_subs = (s / 2).max(1);
            let budget = live_subs.saturating_mul(self.max_filters_per_req);
            self.max_live_filters = self.max_live_filters.min(budget);
        }
        self.max_live_filters = self.max_live_filters.max(1);
        self
    }

    /// Byte budget for the tag values of one filter, if the relay limits message size.
    fn value_budget(&self) -> Option<usize> {
        self.max_message_length
            .map(|len| len.saturating_sub(REQ_OVERHEAD))
    }
}

/// Layer 1, the connection-level filter: announcements (30617) and GRASP server lists
/// (10317). `since` is set on the historic part of a quick reconnect.
pub fn layer1_filters(since: Option<Timestamp>) -> Vec<Filter> {
    let f = Filter::new().kinds([KIND_REPO_ANNOUNCEMENT, KIND_GRASP_LIST]);
    vec![with_since(f, since)]
}

/// State filters: kind 30618 with `#d` = the repos' identifiers (de-duplicated, sorted),
/// in chunks. Built for every repo whatever its level, because a StateOnly repo waits
/// for exactly these events.
pub fn state_filters<'a>(
    repos: impl IntoIterator<Item = &'a RepoRef>,
    limits: &RelayLimits,
    since: Option<Timestamp>,
) -> Vec<Filter> {
    let identifiers: BTreeSet<&str> = repos.into_iter().map(RepoRef::identifier).collect();
    chunk_values(identifiers, limits.chunk_size, limits.value_budget())
        .into_iter()
        .map(|chunk| {
            let f = with_tag(
                Filter::new().kind(KIND_REPO_STATE),
                SingleLetterTag::lowercase(Alphabet::D),
                to_set(chunk),
            );
            with_since(f, since)
        })
        .collect()
}

/// Layer 2 (Full repos only): per chunk of repo refs, three filters `#a`, `#A`, `#q`.
/// Three filters because conditions inside one filter are ANDed.
pub fn repo_tag_filters<'a>(
    repos: impl IntoIterator<Item = &'a RepoRef>,
    limits: &RelayLimits,
    since: Option<Timestamp>,
) -> Vec<Filter> {
    let refs: BTreeSet<&str> = repos.into_iter().map(RepoRef::as_str).collect();
    tag_triples(refs, limits, since, Alphabet::A)
}

/// Layer 3 (root events of Full repos): per chunk of event ids, three filters `#e`,
/// `#E`, `#q`.
pub fn root_event_tag_filters<'a>(
    ids: impl IntoIterator<Item = &'a EventId>,
    limits: &RelayLimits,
    since: Option<Timestamp>,
) -> Vec<Filter> {
    // Lower-case hex sorts as the bytes do: sort and dedupe the ids, then encode.
    let mut ids: Vec<&EventId> = ids.into_iter().collect();
    ids.sort_unstable();
    ids.dedup();
    let hex: Vec<String> = ids.into_iter().map(|id| hex32(id.as_bytes())).collect();
    tag_triples(hex, limits, since, Alphabet::E)
}

/// Everything a relay must carry for `items`: state filters for StateOnly and Full
/// repos, layer 2 for Full and Conversation repos, layer 3 for the root events. StateOnly
/// repos never produce layer 2 or layer 3 filters; Conversation repos no state filter.
pub fn build_sync_level_aware_filters(
    items: &SyncItems,
    limits: &RelayLimits,
    since: Option<Timestamp>,
) -> Vec<Filter> {
    let mut out = state_filters(items.state_repos(), limits, since);
    out.extend(repo_tag_filters(items.conversation_repos(), limits, since));
    out.extend(root_event_tag_filters(&items.root_events, limits, since));
    out
}

/// The live form of historic filters: `limit: 0` (no stored events, only new ones) and
/// no `since`/`until`.
pub fn live(filters: Vec<Filter>) -> Vec<Filter> {
    filters
        .into_iter()
        .map(|f| f.remove_since().remove_until().limit(0))
        .collect()
}

/// A historic page of `filter`: `until` (inclusive, when set) and `limit`, as the
/// pagination planner decides.
pub fn with_page(filter: Filter, until: Option<Timestamp>, limit: usize) -> Filter {
    let f = filter.limit(limit);
    match until {
        Some(u) => f.until(u),
        None => f.remove_until(),
    }
}

/// Filters fetching `ids` by id (after negentropy said we lack them), in chunks no
/// larger than the relay's `max_limit`, so a capped relay still returns every id asked.
pub fn ids_filters<'a>(
    ids: impl IntoIterator<Item = &'a EventId>,
    limits: &RelayLimits,
) -> Vec<Filter> {
    let ids: BTreeSet<EventId> = ids.into_iter().copied().collect();
    let chunk = limits
        .chunk_size
        .min(limits.max_limit.unwrap_or(usize::MAX))
        .max(1);
    let ids: Vec<EventId> = ids.into_iter().collect();
    ids.chunks(chunk)
        .map(|c| Filter::new().ids(c.iter().copied()).limit(c.len()))
        .collect()
}

/// Groups filters into REQs, in order: at most `max_filters_per_req` filters each and,
/// when the relay limits message size, at most `max_message_length` bytes each (a single
/// filter longer than that still gets its own REQ: it cannot be split here).
pub fn split_into_reqs(filters: Vec<Filter>, limits: &RelayLimits) -> Vec<Vec<Filter>> {
    let budget = req_budget(limits);
    let units = filters
        .into_iter()
        .map(|f| {
            let bytes = filter_bytes(&f, budget);
            vec![(f, bytes)]
        })
        .collect();
    pack_sized(units, limits.max_filters_per_req, budget)
}

/// Groups a batch's historic filters into REQs of at most `per_req` filters, within the
/// relay's message length as [`split_into_reqs`] does, keeping together the filters
/// that ask the same values under different tags (a chunk's `#e`, `#E` and `#q`)
/// wherever they fit in one REQ: a relay sends an event matching several filters of one
/// REQ once, and a comment carries both `e` and `E`. Packed greedily, a REQ could end in
/// the middle of such a family and that chunk's comments would come twice. A family
/// takes the place of its first filter, whatever order its filters came in.
pub fn group_historic(
    filters: Vec<Filter>,
    per_req: usize,
    limits: &RelayLimits,
) -> Vec<Vec<Filter>> {
    let budget = req_budget(limits);
    // Each filter's family: the first earlier filter it differs from only in its tag.
    // Candidates are looked up by the ends and size of their values, then compared in
    // full; every family with that key is a candidate (a `#d` chunk may share a key
    // with a chunk of coordinates and not be its sibling).
    let mut family_of: Vec<usize> = Vec::with_capacity(filters.len());
    let mut heads: HashMap<_, Vec<usize>> = HashMap::new();
    for (i, f) in filters.iter().enumerate() {
        let family = only_tag(f).and_then(|(_, values)| {
            let key = (values.first(), values.last(), values.len());
            let candidates = heads.entry(key).or_default();
            let found = candidates
                .iter()
                .copied()
                .find(|&head| same_values(&filters[head], f));
            if found.is_none() {
                candidates.push(i);
            }
            found
        });
        family_of.push(family.unwrap_or(i));
    }
    // Families in the order of their first filter (a filter's family index is never
    // after it), each with its members' sizes.
    let mut families: Vec<Vec<(Filter, usize)>> = Vec::new();
    let mut slot: Vec<Option<usize>> = vec![None; filters.len()];
    for (i, (f, family)) in filters.into_iter().zip(family_of).enumerate() {
        let bytes = filter_bytes(&f, budget);
        let at = match slot[family] {
            Some(at) => at,
            None => {
                families.push(Vec::new());
                families.len() - 1
            }
        };
        slot[i] = Some(at);
        families[at].push((f, bytes));
    }
    // A family that cannot go in one REQ goes filter by filter.
    let units = families
        .into_iter()
        .flat_map(|family| {
            let bytes: usize = family.iter().map(|(_, b)| b).sum();
            if family.len() <= per_req && budget.is_none_or(|b| bytes <= b) {
                vec![family]
            } else {
                family.into_iter().map(|m| vec![m]).collect()
            }
        })
        .collect();
    pack_sized(units, per_req, budget)
}

/// `filter` cut into filters of at most `limits.chunk_size` values (and the relay's
/// message budget for them), as the builders chunk: a negentropy session's filter
/// (four REQ chunks wide) becomes the REQ filters it stands for. A filter without
/// exactly one tag condition is returned as it is.
pub fn rechunk(filter: Filter, limits: &RelayLimits) -> Vec<Filter> {
    let tag = match only_tag(&filter) {
        Some((tag, values)) if values.len() > limits.chunk_size => tag,
        _ => return vec![filter],
    };
    let mut rest = filter;
    let values = rest.generic_tags.remove(&tag).unwrap_or_default();
    chunk_values(values, limits.chunk_size, limits.value_budget())
        .into_iter()
        .map(|chunk| with_tag(rest.clone(), tag, to_set(chunk)))
        .collect()
}

/// A filter's one tag condition, if it has exactly one.
fn only_tag(f: &Filter) -> Option<(SingleLetterTag, &BTreeSet<String>)> {
    let mut tags = f.generic_tags.iter();
    match (tags.next(), tags.next()) {
        (Some((tag, values)), None) => Some((*tag, values)),
        _ => None,
    }
}

/// Whether two filters differ only in the letter of their one tag condition (or not at
/// all: the same filter twice is asked once per REQ too).
fn same_values(a: &Filter, b: &Filter) -> bool {
    match (only_tag(a), only_tag(b)) {
        (Some((_, va)), Some((_, vb))) => {
            va == vb
                && a.ids == b.ids
                && a.authors == b.authors
                && a.kinds == b.kinds
                && a.search == b.search
                && (a.since, a.until, a.limit) == (b.since, b.until, b.limit)
        }
        _ => false,
    }
}

/// Greedy, order-preserving REQs of whole `units` (filters with their
/// [`filter_bytes`]): at most `per_req` filters and (under a `budget`) that many bytes
/// each; a unit that does not fit in what is left starts the next REQ.
fn pack_sized(
    units: Vec<Vec<(Filter, usize)>>,
    per_req: usize,
    budget: Option<usize>,
) -> Vec<Vec<Filter>> {
    let per_req = per_req.max(1);
    let mut reqs: Vec<Vec<Filter>> = Vec::new();
    let mut current: Vec<Filter> = Vec::new();
    let mut current_bytes = 0usize;
    for unit in units {
        let bytes: usize = unit.iter().map(|(_, b)| b).sum();
        let too_many = current.len() + unit.len() > per_req;
        let too_long = budget.is_some_and(|b| current_bytes + bytes > b);
        if !current.is_empty() && (too_many || too_long) {
            reqs.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += bytes;
        current.extend(unit.into_iter().map(|(f, _)| f));
    }
    if !current.is_empty() {
        reqs.push(current);
    }
    reqs
}

/// Bytes the filters of one REQ may take, if the relay limits message length.
fn req_budget(limits: &RelayLimits) -> Option<usize> {
    limits
        .max_message_length
        .map(|l| l.saturating_sub(REQ_ENVELOPE))
}

/// A filter's serialized length, its comma and room for the `limit` and `until` a
/// historic page adds to it, counted only under a budget.
fn filter_bytes(f: &Filter, budget: Option<usize>) -> usize {
    budget.map_or(0, |_| serialized_len(f) + 1 + PAGE_FIELDS)
}

/// `,"limit":` and `,"until":` with twenty digits each (a `u64`): what
/// [`with_page`] may add to a filter after it was packed.
const PAGE_FIELDS: usize = 2 * (9 + 20);

/// Bytes of `["REQ","<64-char sub id>",` and the closing `]`.
const REQ_ENVELOPE: usize = 80;

fn serialized_len(f: &Filter) -> usize {
    // Serializing a Filter cannot fail (string keys, plain values); if it ever did,
    // count it as too large so it goes alone.
    serde_json::to_string(f).map_or(usize::MAX / 2, |s| s.len())
}

fn with_since(f: Filter, since: Option<Timestamp>) -> Filter {
    match since {
        Some(s) => f.since(s),
        None => f,
    }
}

/// The inverse of the builders above: which of `items` a filter names — repos by `#d`
/// (state), `#a`/`#A`/`#q` (coordinates), root events by `#e`/`#E`/`#q`. `None` when it
/// names none of them (a layer-1 filter, an ids fetch): a failure of it concerns all.
pub fn items_named_by(filter: &Filter, items: &SyncItems) -> Option<SyncItems> {
    let values = |letters: &[SingleLetterTag]| -> BTreeSet<&str> {
        letters
            .iter()
            .filter_map(|t| filter.generic_tags.get(t))
            .flatten()
            .map(String::as_str)
            .collect()
    };
    let lower = SingleLetterTag::lowercase;
    let upper = SingleLetterTag::uppercase;
    let identifiers = values(&[lower(Alphabet::D)]);
    let coordinates = values(&[lower(Alphabet::A), upper(Alphabet::A), lower(Alphabet::Q)]);
    let events = values(&[lower(Alphabet::E), upper(Alphabet::E), lower(Alphabet::Q)]);
    let named = SyncItems {
        repos: items
            .repos
            .iter()
            .filter(|(r, _)| {
                identifiers.contains(r.identifier()) || coordinates.contains(r.as_str())
            })
            .map(|(r, l)| (r.clone(), *l))
            .collect(),
        root_events: items
            .root_events
            .iter()
            .filter(|id| events.contains(id.to_hex().as_str()))
            .copied()
            .collect(),
    };
    (!named.is_empty()).then_some(named)
}

/// Per chunk of `values`, three filters: lowercase `letter`, uppercase `letter`, `#q`.
fn tag_triples<S: AsRef<str> + Into<String>>(
    values: impl IntoIterator<Item = S>,
    limits: &RelayLimits,
    since: Option<Timestamp>,
    letter: Alphabet,
) -> Vec<Filter> {
    let mut out = Vec::new();
    for chunk in chunk_values(values, limits.chunk_size, limits.value_budget()) {
        // The value set is built once and cloned for the two other filters.
        let values = to_set(chunk);
        for tag in [
            SingleLetterTag::lowercase(letter),
            SingleLetterTag::uppercase(letter),
        ] {
            out.push(with_since(
                with_tag(Filter::new(), tag, values.clone()),
                since,
            ));
        }
        let q = SingleLetterTag::lowercase(Alphabet::Q);
        out.push(with_since(with_tag(Filter::new(), q, values), since));
    }
    out
}

/// Greedy, order-preserving chunks of at most `max_count` values and (when set) at most
/// `max_bytes` of serialized JSON. A value too long for `max_bytes` gets a chunk alone.
fn chunk_values<S: AsRef<str>>(
    values: impl IntoIterator<Item = S>,
    max_count: usize,
    max_bytes: Option<usize>,
) -> Vec<Vec<S>> {
    let max_count = max_count.max(1);
    let mut chunks = Vec::new();
    let mut current: Vec<S> = Vec::new();
    let mut bytes = 0usize;
    for v in values {
        let cost = if max_bytes.is_some() {
            json_string_len(v.as_ref()) + 1
        } else {
            0
        };
        let too_long = max_bytes.is_some_and(|b| bytes + cost > b);
        if !current.is_empty() && (current.len() >= max_count || too_long) {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += cost;
        current.push(v);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// A chunk of values (sorted and de-duplicated by the caller) as a filter's value set;
/// owned values (the hex of event ids) move in, borrowed ones are copied.
fn to_set<S: Into<String>>(chunk: Vec<S>) -> BTreeSet<String> {
    // Sorted input: bulk-built.
    chunk.into_iter().map(Into::into).collect()
}

/// `f` with `tag` = `values` (what `Filter::custom_tags` does, without re-collecting
/// the values into a temporary set and inserting them one by one).
fn with_tag(mut f: Filter, tag: SingleLetterTag, values: BTreeSet<String>) -> Filter {
    match f.generic_tags.entry(tag) {
        Entry::Vacant(e) => {
            e.insert(values);
        }
        Entry::Occupied(mut e) => e.get_mut().extend(values),
    }
    f
}

/// Lower-case hex of 32 bytes, through a table (`EventId::to_hex` goes char by char).
fn hex32(bytes: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(64);
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0x0f)]);
    }
    // Only ASCII hex digits were pushed.
    String::from_utf8(out).unwrap_or_default()
}

/// Length of `s` as a JSON string literal, quotes included (serde_json's escaping).
fn json_string_len(s: &str) -> usize {
    // Byte-wise: every byte of a multi-byte character is >= 0x80 and costs itself, so
    // this equals the per-character count.
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            b if b < 0x20 => 6,
            _ => 1,
        })
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr::{ClientMessage, JsonUtil, SubscriptionId};
    use std::collections::BTreeMap;

    use crate::model::SyncLevel;
    use proptest::prelude::*;

    const PK: &str = "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1";

    fn repo(id: &str) -> RepoRef {
        RepoRef::parse(&format!("30617:{PK}:{id}")).unwrap()
    }

    fn eid(n: u8) -> EventId {
        EventId::from_byte_array([n; 32])
    }

    #[test]
    fn negentropy_sessions_take_larger_chunks_within_the_message_size() {
        let l = RelayLimits::default();
        assert_eq!(
            l.for_negentropy().chunk_size,
            l.chunk_size * NEGENTROPY_CHUNK_FACTOR
        );
        let small = RelayLimits {
            max_message_length: Some(16 * 1024),
            ..RelayLimits::default()
        }
        .normalised();
        let fit = (16 * 1024 - REQ_OVERHEAD) / HEX_VALUE_COST;
        assert_eq!(small.chunk_size, l.chunk_size, "a REQ chunk fits");
        assert_eq!(
            small.for_negentropy().chunk_size,
            fit,
            "a session is capped by the size"
        );
    }

    #[test]
    fn items_named_by_inverts_the_builders() {
        let mut items = SyncItems::default();
        items.repos.insert(repo("full"), SyncLevel::Full);
        items.repos.insert(repo("state-only"), SyncLevel::StateOnly);
        items.root_events.extend([eid(1), eid(2), eid(3)]);
        let limits = RelayLimits {
            chunk_size: 2,
            ..RelayLimits::default()
        };
        let filters = build_sync_level_aware_filters(&items, &limits, None);
        let mut union = SyncItems::default();
        for f in &filters {
            let named = items_named_by(f, &items).expect("every item filter names items");
            // A filter names only what it was built from: a root chunk names no repo,
            // a repo filter no root.
            assert!(
                named.repos.is_empty() || named.root_events.is_empty(),
                "{f:?}"
            );
            union.merge(&named);
        }
        assert_eq!(union, items, "together they name everything");
        // Layer 1 and an ids fetch name nothing: their failure concerns all.
        assert_eq!(items_named_by(&layer1_filters(None)[0], &items), None);
        assert_eq!(items_named_by(&Filter::new().id(eid(1)), &items), None);
    }

    fn tag_values(f: &Filter, tag: SingleLetterTag) -> Vec<String> {
        f.generic_tags
            .get(&tag)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn layer1_has_both_kinds_and_optional_since() {
        let f = &layer1_filters(None)[0];
        assert_eq!(
            f.kinds
                .as_ref()
                .unwrap()
                .iter()
                .map(|k| k.as_u16())
                .collect::<Vec<_>>(),
            vec![10317, 30617]
        );
        assert!(f.since.is_none());
        let f = &layer1_filters(Some(Timestamp::from_secs(7)))[0];
        assert_eq!(f.since, Some(Timestamp::from_secs(7)));
    }

    #[test]
    fn state_filters_dedupe_identifiers_and_chunk() {
        let other = RepoRef::parse(&format!("30617:{}:x1", "b".repeat(64))).unwrap();
        let repos: Vec<RepoRef> = (0..5)
            .map(|i| repo(&format!("x{i}")))
            .chain([other])
            .collect();
        let limits = RelayLimits {
            chunk_size: 2,
            ..RelayLimits::default()
        };
        let fs = state_filters(&repos, &limits, None);
        assert_eq!(fs.len(), 3);
        let d = SingleLetterTag::lowercase(Alphabet::D);
        assert_eq!(tag_values(&fs[0], d), vec!["x0", "x1"]);
        assert_eq!(tag_values(&fs[2], d), vec!["x4"]);
        assert!(fs
            .iter()
            .all(|f| f.kinds.as_ref().unwrap().contains(&KIND_REPO_STATE)));
    }

    #[test]
    fn layer2_and_layer3_are_triples_with_uppercase_tags() {
        let fs = repo_tag_filters(&[repo("r")], &RelayLimits::default(), None);
        assert_eq!(fs.len(), 3);
        let json: Vec<String> = fs
            .iter()
            .map(|f| serde_json::to_string(f).unwrap())
            .collect();
        assert!(json[0].contains("\"#a\":[\"30617:"));
        assert!(json[1].contains("\"#A\":[\"30617:"));
        assert!(json[2].contains("\"#q\":[\"30617:"));
        let fs = root_event_tag_filters(
            &[eid(1)],
            &RelayLimits::default(),
            Some(Timestamp::from_secs(5)),
        );
        let json: Vec<String> = fs
            .iter()
            .map(|f| serde_json::to_string(f).unwrap())
            .collect();
        assert!(json[0].contains("\"#e\""));
        assert!(json[1].contains("\"#E\""));
        assert!(json[2].contains("\"#q\""));
        assert!(fs.iter().all(|f| f.since == Some(Timestamp::from_secs(5))));
    }

    #[test]
    fn state_only_repos_get_no_layer2_or_layer3() {
        let mut items = SyncItems::default();
        items.repos.insert(repo("full"), SyncLevel::Full);
        items.repos.insert(repo("waiting"), SyncLevel::StateOnly);
        items.root_events.insert(eid(3));
        let fs = build_sync_level_aware_filters(&items, &RelayLimits::default(), None);
        // one state filter (both identifiers), one L2 triple (full only), one L3 triple
        assert_eq!(fs.len(), 7);
        let d = SingleLetterTag::lowercase(Alphabet::D);
        assert_eq!(tag_values(&fs[0], d), vec!["full", "waiting"]);
        let a = SingleLetterTag::lowercase(Alphabet::A);
        assert_eq!(tag_values(&fs[1], a), vec![repo("full").to_string()]);
    }

    #[test]
    fn live_sets_limit_zero_and_strips_since() {
        let fs = live(layer1_filters(Some(Timestamp::from_secs(9))));
        assert_eq!(fs[0].limit, Some(0));
        assert_eq!(fs[0].since, None);
    }

    #[test]
    fn ids_filters_respect_max_limit() {
        let ids: Vec<EventId> = (0..10).map(eid).collect();
        let limits = RelayLimits {
            max_limit: Some(4),
            ..RelayLimits::default()
        };
        let fs = ids_filters(&ids, &limits);
        assert_eq!(
            fs.iter()
                .map(|f| f.ids.as_ref().unwrap().len())
                .collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
    }

    #[test]
    fn nip11_lowers_never_zero() {
        let doc = serde_json::json!({"limitation": {
            "max_filters": 3, "max_subscriptions": 4, "max_limit": 50, "max_message_length": 1000
        }});
        let l = RelayLimits::from_nip11(&doc);
        assert_eq!(l.max_filters_per_req, 3);
        assert_eq!(l.page_limit, 50);
        assert_eq!(l.max_limit, Some(50));
        assert_eq!(l.max_subscriptions, Some(4));
        assert_eq!(l.max_live_filters, 6); // 2 live subs × 3 filters
        assert_eq!(l.chunk_size, (1000 - REQ_OVERHEAD) / HEX_VALUE_COST);
        let silly = serde_json::json!({"limitation": {
            "max_filters": 0, "max_subscriptions": 1, "max_limit": -5, "max_message_length": 10
        }});
        let l = RelayLimits::from_nip11(&silly);
        assert_eq!(l.max_filters_per_req, 10);
        assert_eq!(l.chunk_size, 1);
        assert_eq!(l.page_limit, 500);
        assert!(l.max_live_filters >= 1);
        assert_eq!(
            RelayLimits::from_nip11(&serde_json::json!("nonsense")),
            RelayLimits::default()
        );
    }

    #[test]
    fn split_into_reqs_by_count_and_bytes() {
        let ids: Vec<EventId> = (0..25).map(eid).collect();
        let limits = RelayLimits {
            chunk_size: 1,
            ..RelayLimits::default()
        };
        let fs = ids_filters(&ids, &limits);
        let reqs = split_into_reqs(fs.clone(), &limits);
        assert_eq!(
            reqs.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        let small = RelayLimits {
            max_message_length: Some(400),
            ..limits
        };
        let reqs = split_into_reqs(fs, &small);
        assert!(reqs.iter().all(|r| {
            let len: usize = r
                .iter()
                .map(|f| serde_json::to_string(f).unwrap().len() + 1)
                .sum();
            len + REQ_ENVELOPE <= 400
        }));
        assert_eq!(reqs.iter().map(Vec::len).sum::<usize>(), 25);
    }

    #[test]
    fn grouped_historic_reqs_keep_a_chunks_three_filters_together() {
        let limits = RelayLimits {
            chunk_size: 2,
            ..RelayLimits::default()
        };
        let ids: Vec<EventId> = (0..8).map(eid).collect();
        let fs = root_event_tag_filters(&ids, &limits, None);
        let sizes = |reqs: &[Vec<Filter>]| reqs.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(sizes(&split_into_reqs(fs.clone(), &limits)), [10, 2]);
        assert_eq!(sizes(&group_historic(fs, 10, &limits)), [9, 3]);
    }

    /// A `#d` chunk whose identifiers equal a chunk of event ids (identifiers come from
    /// the network) is no sibling of that chunk's `#e`/`#E`/`#q`, which still keep
    /// together. Keyed on the first filter seen only, the three each went alone and
    /// three to a REQ parted them.
    #[test]
    fn a_lookalike_filter_does_not_part_a_family() {
        let limits = RelayLimits {
            chunk_size: 2,
            ..RelayLimits::default()
        };
        let ids = [eid(1), eid(2)];
        let hex: Vec<String> = ids.iter().map(EventId::to_hex).collect();
        let state = Filter::new()
            .kind(KIND_REPO_STATE)
            .custom_tags(SingleLetterTag::lowercase(Alphabet::D), hex.clone());
        let mut fs = vec![state.clone()];
        fs.extend(root_event_tag_filters(&ids, &limits, None));
        let reqs = group_historic(fs, 3, &limits);
        assert_eq!(reqs.len(), 2, "{reqs:?}");
        assert_eq!(reqs[0], vec![state]);
        assert_eq!(reqs[1].len(), 3);
    }

    /// A negentropy session's filter cut back into REQ chunks: every value once, in
    /// chunks of the chunk size, the rest of the filter kept.
    #[test]
    fn rechunk_cuts_a_sessions_filter_into_req_chunks() {
        let limits = RelayLimits::default();
        let ids: Vec<EventId> = (0..250u8).map(eid).collect();
        let wide = root_event_tag_filters(&ids, &limits.for_negentropy(), None);
        assert_eq!(wide.len(), 3);
        let e = wide[0].clone().since(Timestamp::from(7));
        let parts = rechunk(e.clone(), &limits);
        let sizes: Vec<usize> = parts
            .iter()
            .map(|f| f.generic_tags.values().map(BTreeSet::len).sum())
            .collect();
        assert_eq!(sizes, [100, 100, 50]);
        let mut values = BTreeSet::new();
        for p in &parts {
            assert_eq!(p.since, Some(Timestamp::from(7)));
            let (tag, v) = only_tag(p).unwrap();
            assert_eq!(Some(tag), only_tag(&e).map(|(t, _)| t));
            values.extend(v.iter().cloned());
        }
        assert_eq!(Some(&values), only_tag(&e).map(|(_, v)| v));
        assert_eq!(rechunk(parts[2].clone(), &limits), vec![parts[2].clone()]);
        assert_eq!(
            rechunk(Filter::new().kind(nostr::Kind::from(1)), &limits).len(),
            1
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A filter never holds more values than the chunk size, every REQ fits in the
        /// relay's message limit, nothing is lost, and equal input gives equal output.
        #[test]
        fn chunks_fit_and_are_deterministic(
            idents in proptest::collection::vec("[a-z0-9\"\\\\é-]{1,80}", 0..60),
            chunk in 1usize..20,
            max_len in proptest::option::of(300usize..4000),
        ) {
            let repos: Vec<RepoRef> = idents.iter().map(|i| repo(i)).collect();
            let limits = RelayLimits { chunk_size: chunk, max_message_length: max_len, ..RelayLimits::default() }
                .normalised();
            let fs = repo_tag_filters(&repos, &limits, None);
            let mut reversed = repos.clone();
            reversed.reverse();
            prop_assert_eq!(&fs, &repo_tag_filters(&reversed, &limits, None));
            let a = SingleLetterTag::lowercase(Alphabet::A);
            let mut all = BTreeSet::new();
            for f in &fs {
                let n = f.generic_tags.values().map(BTreeSet::len).sum::<usize>();
                prop_assert!(n <= limits.chunk_size);
                all.extend(tag_values(f, a));
                if let Some(m) = max_len {
                    let s = serde_json::to_string(f).unwrap();
                    // a single value longer than the budget is the only allowed excess
                    prop_assert!(s.len() + REQ_ENVELOPE <= m || n == 1);
                }
            }
            let want: BTreeSet<String> = repos.iter().map(|r| r.to_string()).collect();
            prop_assert_eq!(all, want);
            for req in split_into_reqs(fs, &limits) {
                prop_assert!(!req.is_empty() && req.len() <= limits.max_filters_per_req);
            }
        }

        /// Grouped historic REQs keep every filter once, hold at most `per_req`
        /// filters and fit the relay's message length (a filter too long alone aside),
        /// and never part the filters of one chunk (same values, other tags) where
        /// they fit in one REQ — in whatever order the filters came.
        #[test]
        fn grouped_reqs_fit_and_keep_families_whole(
            roots in 0u8..40,
            idents in proptest::collection::vec("[a-z0-9]{1,40}", 0..20),
            chunk in 1usize..12,
            per_req in 1usize..12,
            max_len in proptest::option::of(400usize..6000),
            reverse in any::<bool>(),
        ) {
            let limits = RelayLimits { chunk_size: chunk, max_message_length: max_len, ..RelayLimits::default() }
                .normalised();
            let items = SyncItems {
                repos: idents.iter().map(|i| (repo(i), SyncLevel::Full)).collect(),
                root_events: (0..roots).map(eid).collect(),
            };
            let mut fs = build_sync_level_aware_filters(&items, &limits, None);
            if reverse {
                fs.reverse();
            }
            let reqs = group_historic(fs.clone(), per_req, &limits);
            let json = |f: &Filter| serde_json::to_string(f).unwrap();
            let mut asked: Vec<String> = reqs.iter().flatten().map(json).collect();
            let mut given: Vec<String> = fs.iter().map(json).collect();
            asked.sort();
            given.sort();
            prop_assert_eq!(asked, given);
            let budget = max_len.map(|m| m - REQ_ENVELOPE);
            for req in &reqs {
                prop_assert!(!req.is_empty() && req.len() <= per_req);
                // Measured as sent: a REQ with a 64-character id, each filter paged
                // with the widest `until` and `limit`.
                let paged: Vec<Filter> = req
                    .iter()
                    .map(|f| with_page(f.clone(), Some(Timestamp::from(u64::MAX)), usize::MAX))
                    .collect();
                let sent = ClientMessage::req(SubscriptionId::new("x".repeat(64)), paged).as_json();
                prop_assert!(req.len() == 1 || max_len.is_none_or(|m| sent.len() <= m));
            }
            // Families from the filters themselves: one tag, the same values.
            let mut families: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
            for f in &fs {
                let values: Vec<String> = f.generic_tags.values().flatten().cloned().collect();
                families.entry(values).or_default().push(json(f));
            }
            for members in families.values().filter(|m| m.len() > 1) {
                let bytes: usize = members.iter().map(|j| j.len() + 1 + PAGE_FIELDS).sum();
                if members.len() <= per_req && budget.is_none_or(|b| bytes <= b) {
                    let holding = reqs
                        .iter()
                        .filter(|req| req.iter().any(|f| members.contains(&json(f))))
                        .count();
                    prop_assert_eq!(holding, 1, "family parted: {:?}", members);
                }
            }
        }
    }
}
