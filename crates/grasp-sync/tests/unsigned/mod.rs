//! Events for engine tests, built without a real signature: the engine never verifies
//! (the driver does), and signing thousands of events per simulation seed would dominate
//! the run.

use nostr::secp256k1::schnorr::Signature;
use nostr::{Event, EventBuilder, EventId, Keys, Kind, Tag, Timestamp};

/// Builds an event without a real signature: the engine never verifies (the driver
/// does), and signing thousands of events per seed would dominate the run.
pub fn event(
    keys: &Keys,
    kind: u16,
    tags: Vec<Vec<String>>,
    created_at: u64,
    content: &str,
) -> Event {
    let tags: Vec<Tag> = tags
        .into_iter()
        .filter_map(|t| Tag::parse(t).ok())
        .collect();
    let unsigned = EventBuilder::new(Kind::from(kind), content)
        .tags(tags)
        .custom_created_at(Timestamp::from_secs(created_at))
        .build(keys.public_key());
    let id = unsigned.id.unwrap_or_else(EventId::all_zeros);
    let sig = Signature::from_slice(&[7u8; 64]).expect("64 bytes");
    Event::new(
        id,
        unsigned.pubkey,
        unsigned.created_at,
        unsigned.kind,
        unsigned.tags,
        unsigned.content,
        sig,
    )
}
