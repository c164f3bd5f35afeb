//! Profiling aid: at 100k repos, derive_relay_targets and compute_actions with nothing
//! and with 90 % confirmed, each timed on its own, five times.
use std::time::Instant;

use grasp_sync::diff::compute_actions;
use grasp_sync::model::PendingSyncIndex;
use grasp_sync::targets::derive_relay_targets;
use grasp_sync_benches::{all_connected, connected_with_confirmed, World, WorldSpec};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(100_000, |s| s.parse().expect("n"));
    let world = World::build(&WorldSpec::full(n));
    let relays = world.generator.relays().to_vec();
    let pending = PendingSyncIndex::new();
    let connected = all_connected(&relays);
    let targets = derive_relay_targets(&world.index);
    let confirmed90 = connected_with_confirmed(&relays, &targets, 90);
    for _ in 0..5 {
        let t = Instant::now();
        let derived = derive_relay_targets(&world.index);
        let derive = t.elapsed();
        let t = Instant::now();
        let empty = compute_actions(&targets, &pending, &connected);
        let diff = t.elapsed();
        let t = Instant::now();
        let ninety = compute_actions(&targets, &pending, &confirmed90);
        let diff90 = t.elapsed();
        println!(
            "derive {derive:?} ({} relays), diff {diff:?} ({} adds), diff 90 % {diff90:?} ({} adds)",
            derived.len(),
            empty.add.len(),
            ninety.add.len()
        );
    }
}
