use grasp_sync::driver::{Dialer, ExecutorConfig, PoolExecutor, SystemResolver};
use grasp_sync::ports::{AllowAllRelays, MemoryEventStore};
use grasp_sync::{Command, RelayUrl};
use std::sync::Arc;

fn rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: f64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096.0 / 1e6
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().nth(1).map_or(200, |s| s.parse().unwrap());
    let size: usize = std::env::args().nth(2).map_or(8192, |s| s.parse().unwrap());
    let dialer = Dialer::new(Arc::new(AllowAllRelays), Arc::new(SystemResolver));
    let config = ExecutorConfig {
        relay_notification_channel_size: size,
        ..Default::default()
    };
    let (mut exec, mut rx) =
        PoolExecutor::new(Arc::new(MemoryEventStore::default()), dialer, config);
    let before = rss_mb();
    for i in 0..n {
        let url = RelayUrl::parse(&format!("ws://127.0.0.1:1/r{i}")).unwrap();
        exec.execute(Command::Connect { relay: url }).await.unwrap();
    }
    for _ in 0..n {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await;
    }
    println!(
        "{n} relays, channel {size}: {:.1} MB more RSS ({:.2} MB per relay)",
        rss_mb() - before,
        (rss_mb() - before) / n as f64
    );
}
