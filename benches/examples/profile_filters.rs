//! Profiling aid: builds the 100k world and the filters for every relay's additions once.
use grasp_sync::diff::compute_actions;
use grasp_sync::filters::{build_sync_level_aware_filters, RelayLimits};
use grasp_sync::model::PendingSyncIndex;
use grasp_sync::targets::derive_relay_targets;
use grasp_sync_benches::{all_connected, World, WorldSpec};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(100_000, |s| s.parse().expect("n"));
    let world = World::build(&WorldSpec::full(n));
    let connected = all_connected(world.generator.relays());
    let targets = derive_relay_targets(&world.index);
    let actions = compute_actions(&targets, &PendingSyncIndex::new(), &connected);
    let t = std::time::Instant::now();
    let limits = RelayLimits::default();
    let total: usize = actions
        .add
        .iter()
        .map(|a| build_sync_level_aware_filters(&a.items, &limits, None).len())
        .sum();
    println!("{total} filters in {:?}", t.elapsed());
}
