//! Prints the core benchmark table (markdown): derive, derive+diff, filter building and
//! one-repo reaction at 1k / 10k / 100k repos, memory held and peak at 100k (counted by
//! a global allocator wrapper), and the engine's throughput on received events.
//!
//! `cargo run --release -p grasp-sync-benches --bin core_table`
//!
//! Times are medians of several runs inside one process (std::time::Instant): compare
//! rows with each other and with the bar of design section 14, measured on a 2-core
//! machine like this one.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use grasp_sync::diff::compute_actions;
use grasp_sync::filters::{build_sync_level_aware_filters, RelayLimits};
use grasp_sync::model::PendingSyncIndex;
use grasp_sync::targets::derive_relay_targets;
use grasp_sync_benches::{
    all_connected, connected_with_confirmed, engine_world, time_new_repos, World, WorldSpec,
};

/// Counts live and peak heap bytes.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                grow(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

fn grow(n: usize) {
    let now = CURRENT.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn current() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// Restarts peak tracking from the current level; returns that level.
fn reset_peak() -> usize {
    let c = current();
    PEAK.store(c, Ordering::Relaxed);
    c
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                let out = f();
                let d = t.elapsed();
                drop(black_box(out));
                d
            })
            .collect(),
    )
}

fn fmt(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

fn mb(b: usize) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

struct Row {
    repos: usize,
    derive: Duration,
    diff_empty: Duration,
    diff_90: Duration,
    filters: Duration,
    one_repo: Duration,
}

fn row(repos: usize) -> Row {
    let runs = if repos >= 100_000 { 5 } else { 11 };
    let world = World::build(&WorldSpec::full(repos));
    let relays = world.generator.relays().to_vec();
    let pending = PendingSyncIndex::new();
    let connected = all_connected(&relays);
    let derive = time(runs, || derive_relay_targets(&world.index));
    let diff_empty = time(runs, || {
        let t = derive_relay_targets(&world.index);
        let a = compute_actions(&t, &pending, &connected);
        (t, a)
    });
    let targets = derive_relay_targets(&world.index);
    let confirmed90 = connected_with_confirmed(&relays, &targets, 90);
    let diff_90 = time(runs, || {
        let t = derive_relay_targets(&world.index);
        let a = compute_actions(&t, &pending, &confirmed90);
        (t, a)
    });
    drop(confirmed90);
    let actions = compute_actions(&targets, &pending, &connected);
    let limits = RelayLimits::default();
    let filters = time(runs.min(5), || {
        actions
            .add
            .iter()
            .map(|a| build_sync_level_aware_filters(&a.items, &limits, None).len())
            .sum::<usize>()
    });
    drop(actions);

    // One new repo at a time, diffed on its relays only; undone outside the timing.
    let mut index = world.index;
    let mut gen = world.generator;
    let mut targets = targets;
    let one_repo = median(time_new_repos(
        &mut index,
        &mut gen,
        &mut targets,
        &pending,
        &connected,
        201,
    ));
    Row {
        repos,
        derive,
        diff_empty,
        diff_90,
        filters,
        one_repo,
    }
}

/// Heap held by index + targets + diff at `repos`, and the peak while building them.
fn memory(repos: usize) -> (usize, usize, usize, usize) {
    let base = reset_peak();
    let world = World::build(&WorldSpec::full(repos));
    let index_bytes = current() - base;
    let relays = world.generator.relays().to_vec();
    let connected = all_connected(&relays);
    let pending = PendingSyncIndex::new();
    let before = current();
    let targets = derive_relay_targets(&world.index);
    let targets_bytes = current() - before;
    let before = current();
    let actions = compute_actions(&targets, &pending, &connected);
    let diff_bytes = current() - before;
    let peak = PEAK.load(Ordering::Relaxed) - base;
    drop(black_box((world, targets, actions)));
    (index_bytes, targets_bytes, diff_bytes, peak)
}

/// Heap held by every relay's filters for its additions, all built and kept at once.
fn filters_memory(repos: usize) -> usize {
    let world = World::build(&WorldSpec::full(repos));
    let relays = world.generator.relays().to_vec();
    let targets = derive_relay_targets(&world.index);
    let actions = compute_actions(&targets, &PendingSyncIndex::new(), &all_connected(&relays));
    let limits = RelayLimits::default();
    let before = current();
    let all: Vec<Vec<nostr::Filter>> = actions
        .add
        .iter()
        .map(|a| build_sync_level_aware_filters(&a.items, &limits, None))
        .collect();
    let bytes = current() - before;
    drop(black_box(all));
    bytes
}

fn engine(repos: usize, events: usize) -> (Duration, usize, usize) {
    let mut w = engine_world::build(repos);
    let filters = w.live_filters();
    let inputs = w.inputs(engine_world::issues(&w.repos, events));
    let t = Instant::now();
    let handed = w.feed(inputs);
    (t.elapsed(), handed, filters)
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .nth(1)
        .map(|s| {
            s.split(',')
                .map(|n| n.parse().expect("sizes: 1000,10000"))
                .collect()
        })
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000]);
    println!(
        "machine: {} cores; N repos × 1–5 of 2,000 relays × 10 root events, all Full; every relay Connected\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| repos | derive_relay_targets | derive + compute_actions (nothing confirmed) | derive + compute_actions (90% confirmed) | filters for every relay's adds | one new repo (apply + diff its relays) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for &n in &sizes {
        let r = row(n);
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.repos,
            fmt(r.derive),
            fmt(r.diff_empty),
            fmt(r.diff_90),
            fmt(r.filters),
            fmt(r.one_repo)
        );
        rows.push(r);
    }

    let n = *sizes.iter().max().expect("a size");
    let (index, targets, diff, peak) = memory(n);
    println!("\n| memory at {n} repos | bytes | bytes / repo |");
    println!("|---|---:|---:|");
    for (what, b) in [
        ("RepoSyncIndex", index),
        ("RelayTargets", targets),
        ("Actions (diff, nothing confirmed)", diff),
        ("held: index + targets + diff", index + targets + diff),
        ("peak while building all three", peak),
    ] {
        println!("| {what} | {} | {} |", mb(b), b / n);
    }

    let filters_bytes = filters_memory(n);
    println!(
        "| every relay's filters for its adds, held at once | {} | {} |",
        mb(filters_bytes),
        filters_bytes / n
    );
    if let Some(r) = rows.iter().find(|r| r.repos == n) {
        println!(
            "\nsummary: repos={n} at_rest_bytes={} peak_bytes={peak} diff_ms={:.1} diff90_ms={:.1} all_filters_ms={:.1} all_filters_bytes={filters_bytes} one_repo_us={:.1}",
            index + targets + diff,
            r.diff_empty.as_secs_f64() * 1e3,
            r.diff_90.as_secs_f64() * 1e3,
            r.filters.as_secs_f64() * 1e3,
            r.one_repo.as_secs_f64() * 1e6,
        );
    }

    let events = 100_000;
    for repos in [1, 1_000] {
        let (d, handed, filters) = engine(repos, events);
        println!(
            "\nengine, {repos} repo(s) on one relay, {filters} live filters: {events} received events in {} → {:.0} events/s ({handed} handed to the host)",
            fmt(d),
            events as f64 / d.as_secs_f64()
        );
    }
}
