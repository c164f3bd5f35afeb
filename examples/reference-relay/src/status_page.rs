//! The operator's status page (`/status.html`, and `/` for browsers): every remote relay
//! (health, NIP-77, last refusal and why, events, next retry), every repo (level, how many
//! of its relays confirmed it), every event held in purgatory (what git data it waits for
//! and where it is hunted), and the sync and hunt counters. Rendered on the server, so it
//! needs no script; it reloads itself every few seconds.
//!
//! Everything shown that came from the network (relay URLs, refusal reasons, repo
//! identifiers) is HTML-escaped: a remote relay's NOTICE must not become markup here.

use std::fmt::Write as _;

use grasp_sync::driver::DriverStatus;
use grasp_sync::engine::{NegentropySupport, RepoStatusSnapshot};
use grasp_sync::git::{HuntMetrics, WaitKind, WaitingEvent, Want};
use grasp_sync::WallTime;

use crate::host::HeldEvent;

/// Seconds between the page's own reloads.
const REFRESH_SECS: u32 = 5;
/// Most repos listed (a relay may hold 100k); the count says how many there are.
pub const REPOS_LISTED: usize = 500;
/// Most held events listed.
const HELD_LISTED: usize = 500;

/// What the page shows, gathered by the HTTP handler.
pub struct PageData<'a> {
    /// The relay's own public URLs.
    pub public_urls: Vec<String>,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// The sync driver's status, or why there is none.
    pub sync: Result<DriverStatus, String>,
    /// Up to [`REPOS_LISTED`] repos.
    pub repos: &'a [RepoStatusSnapshot],
    /// Events held in purgatory.
    pub held: &'a [HeldEvent],
    /// What each held event waits for (soft-expired announcements are absent).
    pub waiting: &'a [WaitingEvent],
    /// Git hunt counters.
    pub hunt: HuntMetrics,
    /// Now.
    pub now: WallTime,
}

/// Renders the page.
pub fn render(d: &PageData<'_>) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>grasp-reference-relay status</title><style>{CSS}</style></head><body>\
         <h1>grasp-reference-relay</h1><p class=\"sub\">{} · up {} · reloads every {REFRESH_SECS} s · \
         <a href=\"/status\">JSON</a> · <a href=\"/metrics\">metrics</a></p>",
        esc(&d.public_urls.join(", ")),
        duration(d.uptime_secs),
    );
    match &d.sync {
        Ok(s) => {
            summary(&mut h, s, d);
            relays(&mut h, s, d.now);
            repos(&mut h, s.repos, d.repos);
        }
        Err(why) => {
            let _ = write!(
                h,
                "<p class=\"bad\" id=\"sync-error\">sync: {}</p>",
                esc(why)
            );
        }
    }
    held(&mut h, d);
    h.push_str("</body></html>\n");
    h
}

fn summary(h: &mut String, s: &DriverStatus, d: &PageData<'_>) {
    let done = s
        .relays
        .iter()
        .filter(|r| r.historic_sync_completed)
        .count();
    let m = &s.metrics;
    let _ = write!(
        h,
        "<h2>Sync</h2><table id=\"summary\"><tr><th>repos</th><td>{}</td></tr>\
         <tr><th>relays finished historic sync</th><td>{done} of {}</td></tr>\
         <tr><th>events synced (stored)</th><td>{}</td></tr>\
         <tr><th>events received</th><td>{}</td></tr>\
         <tr><th>held in purgatory / refused / duplicate / failed</th><td>{} / {} / {} / {}</td></tr>\
         <tr><th>dropped (unsolicited / flood / malformed)</th><td>{} / {} / {}</td></tr>\
         <tr><th>git hunts (complete / partial / empty / failed / refused)</th><td>{} / {} / {} / {} / {}</td></tr>\
         <tr><th>git bytes fetched</th><td>{}</td></tr></table>",
        s.repos,
        s.relays.len(),
        m.events_accepted,
        m.events_received,
        m.events_purgatory,
        m.events_rejected,
        m.events_duplicate,
        m.events_failed,
        m.dropped_unsolicited,
        m.dropped_flood,
        m.dropped_malformed,
        d.hunt.hunts_complete,
        d.hunt.hunts_partial,
        d.hunt.hunts_empty,
        d.hunt.hunts_failed,
        d.hunt.hunts_refused,
        d.hunt.bytes_fetched,
    );
}

fn relays(h: &mut String, s: &DriverStatus, now: WallTime) {
    let _ = write!(
        h,
        "<h2>Relays ({})</h2><table id=\"relays\"><tr><th>relay</th><th>status</th>\
         <th>health</th><th>NIP-77</th><th>events received</th>\
         <th>bytes received: wire (messages)</th><th>repos confirmed</th><th>batches in flight</th><th>last refusal or error</th><th>next retry</th></tr>",
        s.relays.len()
    );
    for r in &s.relays {
        // The wire figure well below the messages' says the relay compresses.
        let bytes = s
            .wire
            .binary_search_by(|(relay, _)| relay.cmp(&r.relay))
            .map(|at| {
                let b = &s.wire[at].1;
                format!("{} ({})", size(b.received), size(b.message_bytes_received))
            })
            .unwrap_or_default();
        let nip77 = match r.negentropy {
            NegentropySupport::Unknown => "not tried",
            NegentropySupport::Supported => "yes",
            NegentropySupport::Unsupported => "no (REQ)",
        };
        let retry = r
            .next_retry
            .map(|at| format!("in {}", duration(at.0.saturating_sub(now.0) / 1000)))
            .unwrap_or_default();
        let _ = write!(
            h,
            "<tr class=\"{}\"><td>{}{}</td><td>{:?}</td><td>{:?}</td><td>{nip77}</td><td>{}</td>\
             <td>{bytes}</td><td>{}</td><td>{}</td><td>{}</td><td>{retry}</td></tr>",
            if r.last_error.is_some() { "bad" } else { "" },
            esc(r.relay.as_str()),
            if r.is_bootstrap { " (bootstrap)" } else { "" },
            r.status,
            r.health,
            r.events_received,
            r.confirmed_repos,
            r.pending_batches,
            esc(r.last_error.as_deref().unwrap_or("")),
        );
    }
    if s.relays.is_empty() {
        none_row(
            h,
            10,
            "none yet: remote relays come from accepted announcements and bootstrap relays",
        );
    }
    h.push_str("</table>");
}

/// The one row of an empty table, saying why it is empty.
fn none_row(h: &mut String, columns: usize, why: &str) {
    let _ = write!(h, "<tr><td colspan=\"{columns}\">{}</td></tr>", esc(why));
}

fn repos(h: &mut String, total: usize, list: &[RepoStatusSnapshot]) {
    let _ = write!(
        h,
        "<h2>Repos ({total}{})</h2><table id=\"repos\"><tr><th>owner</th><th>identifier</th>\
         <th>level</th><th>relays confirmed</th><th>root events</th></tr>",
        if total > list.len() {
            format!(", first {} shown", list.len())
        } else {
            String::new()
        }
    );
    for r in list {
        let _ = write!(
            h,
            "<tr><td title=\"{owner}\">{}…</td><td>{}</td><td>{:?}</td><td>{} of {}</td><td>{}</td></tr>",
            &r.repo.pubkey_hex()[..12],
            esc(r.repo.identifier()),
            r.sync_level,
            r.confirmed_on,
            r.relays,
            r.root_events,
            owner = r.repo.pubkey_hex(),
        );
    }
    if list.is_empty() {
        none_row(
            h,
            5,
            "none yet: a repo is synced once this relay accepts or holds its announcement",
        );
    }
    h.push_str("</table>");
}

fn held(h: &mut String, d: &PageData<'_>) {
    let _ = write!(
        h,
        "<h2>Purgatory ({})</h2><table id=\"purgatory\"><tr><th>event</th><th>kind</th>\
         <th>repo</th><th>from</th><th>waiting</th><th>waits for</th></tr>",
        d.held.len()
    );
    for e in d.held.iter().take(HELD_LISTED) {
        let w = d.waiting.iter().find(|w| w.id == e.event.id);
        let repo = w.map(|w| w.repo.identifier()).unwrap_or("");
        let why = match w {
            None => "nothing now: its hunt window passed; kept until it expires or a new \
                     state event revives it"
                .to_owned(),
            Some(w) => {
                let what = match (&w.kind, &w.want) {
                    (_, Want::AnyData) => "any git data".to_owned(),
                    (WaitKind::State, Want::Objects(o)) => {
                        format!("{} objects its refs name", o.len())
                    }
                    (_, Want::Objects(o)) => format!(
                        "tip {}",
                        o.iter()
                            .map(|o| o.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                let urls: Vec<&str> = w.clone_urls.iter().map(|u| u.as_str()).collect();
                format!(
                    "{what} from {}",
                    if urls.is_empty() {
                        "its maintainers' other clone URLs".to_owned()
                    } else {
                        urls.join(", ")
                    }
                )
            }
        };
        let _ = write!(
            h,
            "<tr><td title=\"{id}\">{}…</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            &e.event.id.to_hex()[..12],
            e.event.kind.as_u16(),
            esc(repo),
            if e.from_user { "a user" } else { "sync" },
            duration(d.now.0.saturating_sub(e.received_at_ms) / 1000),
            esc(&why),
            id = e.event.id.to_hex(),
        );
    }
    if d.held.is_empty() {
        none_row(h, 6, "nothing waits for git data");
    }
    h.push_str("</table>");
}

/// `95` → `1 min 35 s`.
fn duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

/// `48_198` → `47.1 KiB`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Text into HTML text or a quoted attribute.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
h1{margin:0}.sub{color:#666}table{border-collapse:collapse;margin:.5em 0 1.5em}\
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}\
th{background:#f4f4f4}tr.bad td{background:#fff1f0}.bad{color:#a00}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_from_the_network() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(48_198), "47.1 KiB");
        assert_eq!(size(5 * 1_048_576), "5.0 MiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(5), "5 s");
        assert_eq!(duration(95), "1 min 35 s");
        assert_eq!(duration(7260), "2 h 1 min");
    }
}
