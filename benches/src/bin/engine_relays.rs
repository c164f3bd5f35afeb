//! The engine's cost per received event as the number of connected relays grows: the
//! same live events on one relay, with 4 and with 1,999 other relays connected and
//! settled. The engine should touch only the relay an input comes from, so the two
//! rates should be close (issue 13's bar: the many-relay rate within 20 % of the
//! few-relay rate).
//!
//! `cargo run --release -p grasp-sync-benches --bin engine_relays [events]`
//!
//! Prints the best rate of each configuration over eleven paired runs (each on fresh
//! engines), the median of the per-pair ratios, and a
//! `summary:` line. Compare the rates with each other, not with other machines.

use std::time::{Duration, Instant};

use grasp_sync::engine::Input;
use grasp_sync_benches::engine_world;

const FEW: usize = 5;
const MANY: usize = 2_000;
const RUNS: usize = 11;

/// A fresh engine with `relays` relays connected, and `events` events for one of them.
fn world(relays: usize, events: usize) -> (engine_world::EngineWorld, Vec<Input>) {
    let w = engine_world::build_among(10, relays - 1);
    let inputs = w.inputs(engine_world::issues(&w.repos, events));
    (w, inputs)
}

/// How long `w` takes to take `inputs`.
fn feed((mut w, inputs): (engine_world::EngineWorld, Vec<Input>)) -> Duration {
    let events = inputs.len();
    let t = Instant::now();
    let handed = w.feed(inputs);
    let took = t.elapsed();
    assert_eq!(handed, events, "every event handed to the host");
    took
}

fn main() {
    let events: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("events: a number"))
        .unwrap_or(50_000);
    // Both engines are built before either is timed, so both run on the same heap,
    // and the order alternates; the ratio is taken within each pair of runs and the
    // median kept, so the machine's drift between pairs cancels out.
    let (mut few, mut many) = (Duration::MAX, Duration::MAX);
    let mut ratios = Vec::with_capacity(RUNS);
    for run in 0..RUNS {
        let (a, b) = (world(FEW, events), world(MANY, events));
        let (f, m) = if run % 2 == 0 {
            let f = feed(a);
            (f, feed(b))
        } else {
            let m = feed(b);
            (feed(a), m)
        };
        few = few.min(f);
        many = many.min(m);
        ratios.push(f.as_secs_f64() / m.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    let ratio = ratios[RUNS / 2];
    let eps = |d: Duration| events as f64 / d.as_secs_f64();
    let (few, many) = (eps(few), eps(many));
    println!("{FEW} relays connected: {events} events on one relay at {few:.0} events/s");
    println!("{MANY} relays connected: {events} events on one relay at {many:.0} events/s");
    println!(
        "many / few, median of {RUNS} paired runs = {ratio:.2} (bar: >= 0.80) {}",
        if ratio >= 0.8 { "pass" } else { "MISS" }
    );
    println!(
        "summary: events={events} relays_few={FEW} relays_many={MANY} few_eps={few:.0} many_eps={many:.0} many_over_few={ratio:.3}"
    );
}
