//! Criterion benchmarks of the pure core at 1k / 10k / 100k repos (each listing 1–5 of
//! 2,000 relays, 10 root events per repo, every relay Connected, nothing confirmed):
//! `derive_relay_targets`, derive + `compute_actions`, filter building for every relay's
//! additions, and at 100k the reaction to one new repo.
//!
//! `cargo bench -p grasp-sync-benches` (a few minutes on 2 cores; the 100k groups take
//! 10 samples). `cargo run --release -p grasp-sync-benches --bin core_table` prints the
//! same figures as one table, with memory.

use std::cell::RefCell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use grasp_sync::diff::compute_actions;
use grasp_sync::filters::{build_sync_level_aware_filters, RelayLimits};
use grasp_sync::model::PendingSyncIndex;
use grasp_sync::targets::derive_relay_targets;
use grasp_sync_benches::{
    all_connected, connected_with_confirmed, derive_and_diff, forget_repo, react_to_new_repo,
    World, WorldSpec,
};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

fn tune(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, n: usize) {
    if n >= 100_000 {
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(5));
    } else {
        group.sample_size(20);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(2));
    }
}

fn core(c: &mut Criterion) {
    for n in SIZES {
        let world = World::build(&WorldSpec::full(n));
        let relays = world.generator.relays().to_vec();
        let pending = PendingSyncIndex::new();
        let connected = all_connected(&relays);
        let targets = derive_relay_targets(&world.index);
        let confirmed90 = connected_with_confirmed(&relays, &targets, 90);
        let actions = compute_actions(&targets, &pending, &connected);
        let limits = RelayLimits::default();

        let mut g = c.benchmark_group("derive_relay_targets");
        tune(&mut g, n);
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| derive_relay_targets(black_box(&world.index)))
        });
        g.finish();

        let mut g = c.benchmark_group("derive+compute_actions");
        tune(&mut g, n);
        g.bench_function(BenchmarkId::new("nothing_confirmed", n), |b| {
            b.iter(|| derive_and_diff(black_box(&world.index), &pending, &connected))
        });
        g.bench_function(BenchmarkId::new("90pct_confirmed", n), |b| {
            b.iter(|| derive_and_diff(black_box(&world.index), &pending, &confirmed90))
        });
        g.finish();

        let mut g = c.benchmark_group("filters");
        tune(&mut g, n);
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                actions
                    .add
                    .iter()
                    .map(|a| build_sync_level_aware_filters(&a.items, &limits, None).len())
                    .sum::<usize>()
            })
        });
        g.finish();

        if n == 100_000 {
            // Each iteration adds a repo not seen before and diffs its relays; the repo
            // is removed again outside the measured time, so the world stays at n.
            let state = RefCell::new((world.index, targets, world.generator));
            let mut g = c.benchmark_group("incremental_one_repo");
            g.sample_size(50);
            g.measurement_time(Duration::from_secs(3));
            g.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let (index, targets, gen) = &mut *state.borrow_mut();
                    for _ in 0..iters {
                        let spec = gen.repo();
                        let t = Instant::now();
                        black_box(react_to_new_repo(
                            index, targets, &pending, &connected, &spec,
                        ));
                        total += t.elapsed();
                        forget_repo(index, targets, &spec);
                    }
                    total
                })
            });
            g.finish();
        }
    }
}

criterion_group!(benches, core);
criterion_main!(benches);
