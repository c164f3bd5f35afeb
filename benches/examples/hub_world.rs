//! A skewed world: 100k repos, 80% of them also listing relay 0 (a hub GRASP server).
//! Times diffing the hub relay (compute_actions_for_relay, nothing confirmed) and
//! reacting to one new repo. `cargo run --release -p grasp-sync-benches --example hub_world`
use std::time::{Duration, Instant};

use grasp_sync::diff::compute_actions_for_relay;
use grasp_sync::model::PendingSyncIndex;
use grasp_sync::targets::derive_relay_targets;
use grasp_sync_benches::{all_connected, time_new_repos, World, WorldSpec};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let repos: usize = std::env::args()
        .nth(1)
        .map_or(100_000, |s| s.parse().expect("repos"));
    let spec = WorldSpec {
        hub_percent: 80,
        ..WorldSpec::full(repos)
    };
    let world = World::build(&spec);
    let hub = world.generator.relays()[0].clone();
    let connected = all_connected(world.generator.relays());
    let pending = PendingSyncIndex::new();
    let mut targets = derive_relay_targets(&world.index);
    let hub_diff = median(
        (0..7)
            .map(|_| {
                let t = Instant::now();
                let out = compute_actions_for_relay(&hub, &targets, &pending, &connected);
                let d = t.elapsed();
                std::hint::black_box(out);
                d
            })
            .collect(),
    );
    let mut index = world.index;
    let mut gen = world.generator;
    let one_repo = median(time_new_repos(
        &mut index,
        &mut gen,
        &mut targets,
        &pending,
        &connected,
        101,
    ));
    println!(
        "summary: repos={repos} hub_percent=80 hub_diff_ms={:.1} one_repo_us={:.1}",
        hub_diff.as_secs_f64() * 1e3,
        one_repo.as_secs_f64() * 1e6
    );
}
