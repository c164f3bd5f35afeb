//! The deterministic sync engine (sans-IO): inputs in, commands out, time injected.

mod io;

pub use io::{Command, IngestOutcome, Input, NegentropyFailure, SubscriptionMode};
