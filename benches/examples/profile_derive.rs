//! Profiling aid: derive_relay_targets at 100k repos, five times.
use grasp_sync::targets::derive_relay_targets;
use grasp_sync_benches::{World, WorldSpec};

fn main() {
    let world = World::build(&WorldSpec::full(100_000));
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let targets = derive_relay_targets(&world.index);
        println!("{} relays in {:?}", targets.len(), t.elapsed());
    }
}
