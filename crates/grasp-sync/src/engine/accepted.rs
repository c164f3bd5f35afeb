//! The self-subscriber and the purgatory timer: the two ways the repo index learns what
//! we want. Accepted events are buffered and applied together: when the sync round that
//! brought them ends (no historic batch left in flight), or `batch_window` after the
//! first at the latest; the purgatory snapshot keeps StateOnly entries in step with
//! what waits for git data.
//! Both update targets incrementally and diff only the relays they touched.

use std::collections::BTreeSet;

use nostr::Event;

use super::SyncEngine;
use crate::diff::compute_actions_for_relay;
use crate::model::{RelayUrl, RepoChange, RepoRef, SyncLevel, WallTime};
use crate::nip34::{self, parse_announcement};

impl SyncEngine {
    pub(super) fn on_accepted(&mut self, event: Event, now: WallTime) {
        // With Sync+ on, an event tagging a repo or an event may name a participant,
        // and a relay list may name their relays.
        let relevant = event.kind == nip34::KIND_REPO_ANNOUNCEMENT
            || nip34::is_root_kind(event.kind)
            || (self.sync_plus.is_some()
                && (nip34::relay_list_urls(&event).is_some()
                    || !nip34::references(&event).is_empty()));
        if !relevant {
            return;
        }
        self.accepted.push(event);
        if self.flush_at.is_none() {
            self.flush_at = Some(now + self.config.batch_window);
        }
    }

    /// A sync round ends when the last historic batch in flight leaves (done, cancelled,
    /// or dropped with its relay): every event it brought has its verdict, so the ids
    /// of the next layer (the threads of the root events found) are all known. They are
    /// applied now rather than at the end of the batch window, in one batch as large as
    /// the window would have made. Events accepted while nothing is in flight (live
    /// events) wait for the window.
    pub(super) fn end_round_if_over(&mut self, now: WallTime) {
        if self.pending.take_left() && self.pending.is_empty() && !self.accepted.is_empty() {
            self.flush_accepted(now);
        }
    }

    /// Applies the batch of accepted events: announcements first (so a root event in the
    /// same batch finds its repo), then root events and the rest, relay lists last (so
    /// their authors are known participants by then).
    pub(super) fn flush_accepted(&mut self, now: WallTime) {
        self.flush_at = None;
        let mut events = std::mem::take(&mut self.accepted);
        let rank = |e: &Event| {
            if e.kind == nip34::KIND_REPO_ANNOUNCEMENT {
                0
            } else if nip34::relay_list_urls(e).is_some() {
                2
            } else {
                1
            }
        };
        events.sort_by_key(|e| (rank(e), e.created_at));
        let mut touched = BTreeSet::new();
        for event in &events {
            if event.kind == nip34::KIND_REPO_ANNOUNCEMENT {
                match parse_announcement(event) {
                    Ok(a) => {
                        let relays = self.admit_relays(a.relays);
                        let change = self.repos.accept_announcement(&a.repo, relays);
                        self.apply_change(change, &mut touched);
                        self.adopt_orphans(&a.repo, &mut touched);
                        self.recompute_outbox(&a.repo, &mut touched);
                    }
                    Err(_) => self.metrics.dropped_malformed += 1,
                }
            } else if nip34::is_root_kind(event.kind) {
                let repos = nip34::tagged_repos(event);
                if repos.is_empty() {
                    self.metrics.dropped_malformed += 1;
                }
                for repo in repos {
                    self.add_root(&repo, event.id, &mut touched);
                }
            }
            self.sync_plus_accepted(event, &mut touched);
        }
        self.rediff(touched, now);
        // Relays kept Syncing while accepted events waited are all watched.
        for relay in self.timers.watched() {
            self.check_completion(&relay, now);
        }
        // A batch that left before or during this flush ended nothing that waits: the
        // next event accepted while nothing is in flight waits for the window.
        self.pending.take_left();
    }

    fn add_root(&mut self, repo: &RepoRef, id: nostr::EventId, touched: &mut BTreeSet<RelayUrl>) {
        match self.repos.get(repo) {
            Some(needs) if needs.root_events.len() < self.config.max_root_events_per_repo => {
                let change = self.repos.add_root_event(repo, id);
                self.apply_change(change, touched);
            }
            Some(_) => self.metrics.dropped_flood += 1,
            None if self.orphan_count < self.config.max_orphan_root_events => {
                if self.orphans.entry(repo.clone()).or_default().insert(id) {
                    self.orphan_count += 1;
                }
            }
            None => self.metrics.dropped_flood += 1,
        }
    }

    /// Root events that arrived before their repo's announcement.
    fn adopt_orphans(&mut self, repo: &RepoRef, touched: &mut BTreeSet<RelayUrl>) {
        if let Some(ids) = self.orphans.remove(repo) {
            self.orphan_count -= ids.len();
            for id in ids {
                self.add_root(repo, id, touched);
            }
        }
    }

    pub(super) fn apply_change(&mut self, change: RepoChange, touched: &mut BTreeSet<RelayUrl>) {
        if change.is_noop() {
            return;
        }
        for needs in change.before.iter().chain(change.after.iter()) {
            touched.extend(needs.relays.iter().cloned());
            touched.extend(needs.outbox_relays.iter().cloned());
        }
        self.targets.apply(&change);
        if let (Some(before), None) = (&change.before, &change.after) {
            self.sync_plus_forget(&change.repo, before);
        }
        self.dirty = true;
    }

    /// Diffs the relays a change touched: new items start, dropped items close, relays
    /// seen for the first time get registered (and dialled by `pump`).
    pub(super) fn rediff(&mut self, touched: BTreeSet<RelayUrl>, now: WallTime) {
        for relay in touched {
            if self.targets.get(&relay).is_some() {
                self.ensure_relay(&relay);
            }
            // Its wanted items changed (or it is no longer wanted): the next check
            // looks at it.
            self.wake(&relay);
            let (add, remove) =
                compute_actions_for_relay(&relay, &self.targets, &self.pending, &self.relays);
            if let Some(remove) = remove {
                self.apply_removals(&relay, &remove.items, now);
            }
            if let Some(add) = add {
                self.start_items(&relay, add.items, None, false, now);
            }
            self.open_layer1_if_now_carried(&relay, now);
        }
    }

    /// The purgatory timer's answer: StateOnly entries for waiting announcements, and
    /// StateOnly entries dropped for announcements that left purgatory without being
    /// accepted (expired). Accepted (Full) repos are never touched here.
    pub(super) fn on_purgatory(&mut self, announcements: Vec<Event>, now: WallTime) {
        self.purgatory_outstanding = false;
        let mut touched = BTreeSet::new();
        let mut waiting = BTreeSet::new();
        for event in &announcements {
            match parse_announcement(event) {
                Ok(a) => {
                    let relays = self.admit_relays(a.relays);
                    waiting.insert(a.repo.clone());
                    let change = self.repos.note_purgatory_announcement(&a.repo, relays);
                    self.apply_change(change, &mut touched);
                }
                Err(_) => self.metrics.dropped_malformed += 1,
            }
        }
        let gone: Vec<RepoRef> = self
            .repos
            .iter()
            .filter(|(repo, needs)| {
                needs.sync_level == SyncLevel::StateOnly && !waiting.contains(*repo)
            })
            .map(|(repo, _)| repo.clone())
            .collect();
        for repo in gone {
            let change = self.repos.remove(&repo);
            self.apply_change(change, &mut touched);
        }
        self.rediff(touched, now);
    }
}
