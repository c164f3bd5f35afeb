//! The demo's client (used by `examples/demo.sh`): publishes a repository announcement
//! and its events to relay A, watches them reach relay B, then publishes an issue to
//! relay C and watches it reach A and B live.
//!
//! `grasp-demo-client <A ws url> <B ws url> <C ws url> <clone urls> <main oid> <pr oid>`
//! (clone URLs separated by spaces). The maintainer's key comes from `GRASP_DEMO_KEY`
//! (hex) when set, so the script knows where the repository lives;
//! `grasp-demo-client npub <hex key>` prints that key's npub.

use std::time::{Duration, Instant};

use nostr::{Event, EventBuilder, EventId, Filter, Keys, Kind, Tag, TagKind, ToBech32};
use nostr_relay_pool::relay::{RelayOptions, ReqExitPolicy};
use nostr_relay_pool::RelayPool;

async fn pool(url: &str) -> Result<RelayPool, String> {
    let pool = RelayPool::new();
    pool.add_relay(url, RelayOptions::new().reconnect(false))
        .await
        .map_err(|e| e.to_string())?;
    pool.try_connect_relay(url, Duration::from_secs(10))
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    Ok(pool)
}

async fn publish(url: &str, event: &Event, what: &str) -> Result<(), String> {
    let p = pool(url).await?;
    let out = p
        .send_event_to([url], event)
        .await
        .map_err(|e| e.to_string())?;
    p.shutdown().await;
    match out.failed.values().next() {
        None => println!("  {url} accepted {what}"),
        Some(m) => println!("  {url} answered OK false for {what}: {m}"),
    }
    Ok(())
}

async fn wait_for(url: &str, ids: &[EventId], what: &str) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let p = pool(url).await?;
        let got = p
            .fetch_events(
                Filter::new().ids(ids.iter().copied()),
                Duration::from_secs(5),
                ReqExitPolicy::ExitOnEOSE,
            )
            .await
            .map(|e| e.len())
            .unwrap_or(0);
        p.shutdown().await;
        if got == ids.len() {
            println!(
                "  {url} serves {what} ({:.1} s)",
                started.elapsed().as_secs_f32()
            );
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "{url} still lacks {what} after 120 s ({got}/{})",
                ids.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn tag(name: &str, values: &[&str]) -> Tag {
    Tag::custom(TagKind::custom(name), values.iter().map(|s| s.to_string()))
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, key] = args.as_slice() {
        if cmd == "npub" {
            let keys = Keys::parse(key).map_err(|e| e.to_string())?;
            println!(
                "{}",
                keys.public_key().to_bech32().map_err(|e| e.to_string())?
            );
            return Ok(());
        }
    }
    let [a, b, c, clone, main_tip, pr_tip] = args.as_slice() else {
        return Err("usage: grasp-demo-client <A> <B> <C> <clone urls> <main oid> <pr oid>".into());
    };
    let clone: Vec<&str> = clone.split_whitespace().collect();
    let maintainer = match std::env::var("GRASP_DEMO_KEY") {
        Ok(key) => Keys::parse(&key).map_err(|e| e.to_string())?,
        Err(_) => Keys::generate(),
    };
    let contributor = Keys::generate();
    let coord = format!("30617:{}:demo", maintainer.public_key());
    let sign = |b: EventBuilder, k: &Keys| b.sign_with_keys(k).map_err(|e| e.to_string());

    let ann = sign(
        EventBuilder::new(Kind::Custom(30617), "").tags([
            Tag::identifier("demo"),
            tag("name", &["demo"]),
            tag("relays", &[a, b, c]),
            tag("clone", &clone),
        ]),
        &maintainer,
    )?;
    println!("1. announcement to A (held in purgatory until A has git data)");
    publish(a, &ann, "the announcement").await?;
    wait_for(a, &[ann.id], "the announcement").await?;

    println!("2. state, issue, comment, PR to A");
    let state = sign(
        EventBuilder::new(Kind::Custom(30618), "").tags([
            Tag::identifier("demo"),
            tag("refs/heads/main", &[main_tip]),
            tag("refs/heads/pr-1", &[pr_tip]),
            tag("HEAD", &["ref: refs/heads/main"]),
        ]),
        &maintainer,
    )?;
    let issue = sign(
        EventBuilder::new(Kind::Custom(1621), "it breaks")
            .tags([tag("a", &[&coord]), tag("subject", &["first issue"])]),
        &maintainer,
    )?;
    let root = issue.id.to_hex();
    let comment = sign(
        EventBuilder::new(Kind::Custom(1111), "me too").tags([
            tag("E", &[&root]),
            tag("K", &["1621"]),
            tag("e", &[&root]),
            tag("k", &["1621"]),
        ]),
        &contributor,
    )?;
    let pr = sign(
        EventBuilder::new(Kind::Custom(1618), "please merge").tags([
            tag("a", &[&coord]),
            tag("c", &[pr_tip]),
            tag("clone", &clone),
            tag("subject", &["a change"]),
        ]),
        &contributor,
    )?;
    for (e, what) in [
        (&state, "state"),
        (&issue, "issue"),
        (&comment, "comment"),
        (&pr, "PR"),
    ] {
        publish(a, e, what).await?;
    }

    println!("3. B discovers the announcement (bootstrap relay A), fetches the git data, syncs");
    let all = [ann.id, state.id, issue.id, comment.id, pr.id];
    wait_for(b, &all, "all five events").await?;

    println!("4. an issue published to C reaches A and B live");
    wait_for(
        c,
        &[ann.id],
        "the announcement (C accepts issues of repos it hosts)",
    )
    .await?;
    let later = sign(
        EventBuilder::new(Kind::Custom(1621), "published to C")
            .tags([tag("a", &[&coord]), tag("subject", &["second issue"])]),
        &contributor,
    )?;
    publish(c, &later, "the second issue").await?;
    wait_for(a, &[later.id], "the second issue").await?;
    wait_for(b, &[later.id], "the second issue").await?;
    println!("done: the repo is in sync on A, B and C");
    Ok(())
}
