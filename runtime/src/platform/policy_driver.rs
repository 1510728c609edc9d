//! The policy driver: the platform's thread that moves idle instances along their timeline (see
//! [`crate::policy`]) — warm ones offload their cold segments, semi-warm ones drain to the
//! memnode, expired ones are freed — and keeps each function's local image as the policy says.
//!
//! It never holds a function's idle list while it moves pages: the instances it works on are taken
//! out of the list first (calls meanwhile use the others or start new ones) and given back after.
//! It stops offloading while the memnode does not answer.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::functions::{FunctionMetrics, Idle, Pooled};
use super::{PAGE, Platform};
use crate::pager::{MemoryHandle, PagerError};
use crate::policy::{Phase, PolicyConfig};

/// Pages the policy moved out of one function's instances.
#[derive(Debug, Default)]
struct Moved {
    written_back: u64,
    dropped_clean: u64,
}

impl Platform {
    /// One look at every function's idle instances.
    pub(super) fn policy_tick(&self, now: Instant) {
        self.policy_ticks.fetch_add(1, Ordering::Relaxed);
        let up = self.pager().transport().stats().is_ok();
        let was_up = self.memnode_up.swap(up, Ordering::Relaxed);
        if up != was_up {
            if up {
                tracing::warn!("the memnode answers again: offloading resumes");
            } else {
                tracing::warn!("the memnode does not answer: offloading paused, idle instances stay resident");
            }
        }
        for (key, f) in self.pools() {
            let policy = self.config.policy.get(&f.function.name).clone();
            let m = &f.metrics;
            let (semi_warm_after, last_call) = {
                let reuse = m.reuse.lock().unwrap_or_else(|e| e.into_inner());
                (reuse.0.semi_warm_after(&policy), reuse.1)
            };
            let offloads = up && policy.kind.offloads();
            let phase_of = |i: &Idle| crate::policy::phase(&policy, semi_warm_after, now.saturating_duration_since(i.since));
            let needs_work = |i: &Idle| {
                offloads
                    && match i.phase {
                        Phase::Warm => !i.warm_offloaded,
                        Phase::SemiWarm => !i.drained,
                        Phase::Expired => false,
                    }
            };
            let (work, expired) = f.sweep(phase_of, needs_work);
            drop(expired);
            let mut moved = Moved::default();
            // (A copy of the set only when an instance is to move: most ticks move none.)
            let working_set = if work.is_empty() { Vec::new() } else { f.function.snapshot().map(|s| s.working_set()).unwrap_or_default() };
            for mut i in work {
                if let Err(e) = advance(&policy, &mut i, now, &working_set, &mut moved) {
                    tracing::warn!("offloading an idle instance of {key} failed: {e}");
                }
                f.give_back(i, self.config.max_idle);
            }
            let image_dropped = self.tend_image(&f, &policy, offloads, last_call.map(|t| now.saturating_duration_since(t)), semi_warm_after, &mut moved);
            m.written_back.fetch_add(moved.written_back, Ordering::Relaxed);
            m.dropped_clean.fetch_add(moved.dropped_clean, Ordering::Relaxed);
            if image_dropped {
                m.calls_since_image_drop.store(0, Ordering::Relaxed);
            }
        }
    }

    /// The function's local image of its initial state: dropped when the function turns
    /// semi-warm; while warm, trimmed to the pages calls write (once the calls have shown which —
    /// FaaSMem's init rule, `init_idle_calls`) and topped up with any it lacks (warm again after a
    /// drop: from the second call on), off the calls' path. Returns whether it was dropped.
    fn tend_image(
        &self,
        f: &Pooled,
        policy: &PolicyConfig,
        offloads: bool,
        idle_for: Option<std::time::Duration>,
        semi_warm_after: std::time::Duration,
        moved: &mut Moved,
    ) -> bool {
        let Some(snap) = f.function.snapshot().filter(|_| offloads) else { return false };
        let m = &f.metrics;
        if snap.is_local() && f.busy.load(Ordering::Relaxed) == 0 && idle_for.is_some_and(|d| d >= semi_warm_after) {
            moved.dropped_clean += snap.drop_local() as u64 / PAGE;
            // Copy-on-write: the idle memories map the image; each moves off it now (keeping
            // the pages it had mapped), so that the image's memory is released.
            for i in f.take_all_idle() {
                if let Some(memory) = i.instance.memory()
                    && let Err(e) = memory.sync_image()
                {
                    tracing::warn!("an idle instance of {} could not leave its dropped image: {e}", f.function.name);
                }
                f.give_back(i, self.config.max_idle);
            }
            return true;
        }
        if idle_for.is_some_and(|d| d < semi_warm_after) {
            let calls = FunctionMetrics::get(&m.ok) + FunctionMetrics::get(&m.error);
            if calls >= u64::from(policy.init_idle_calls) {
                match snap.trim_local() {
                    Ok(bytes) => moved.dropped_clean += bytes as u64 / PAGE,
                    Err(e) => tracing::warn!("could not trim the local image of {}: {e}", f.function.name),
                }
            }
            if (snap.is_local() || FunctionMetrics::get(&m.calls_since_image_drop) >= 2)
                && let Err(e) = snap.restore_local()
            {
                tracing::warn!("could not fetch the initial state of {} back: {e}", f.function.name);
            }
        }
        false
    }
}

/// Offloads what the policy says one idle instance should no longer keep.
/// `working_set` (ascending) is the function's recorded one: its pages drain last, and with a hot
/// floor they stay.
fn advance(policy: &PolicyConfig, i: &mut Idle, now: Instant, working_set: &[usize], moved: &mut Moved) -> Result<(), PagerError> {
    let Some(memory) = i.instance.memory().cloned() else { return Ok(()) };
    // Whether the drain reaches the floor with these pages (then it is done: no further look).
    let mut reaches_floor = false;
    let pages = match i.phase {
        Phase::Warm if !i.warm_offloaded => {
            i.warm_offloaded = true;
            let mut resident = memory.resident_pages();
            if !policy.kind.dirty_tracking() {
                // Written back, pages leave the function's image (`offload_pages` first turns the
                // memory into anonymous memory, copying every image page it maps): only the
                // pages a warm instance holds of its own are worth that.
                resident = memory.own_pages(&resident);
            }
            i.segments.warm_offload(&resident, policy, now)
        }
        Phase::SemiWarm if !i.drained => {
            let budget = i.drain.pages(policy.drain_rate, now);
            let resident = memory.resident_pages();
            let floor = crate::policy::floor_pages(policy, &resident, working_set);
            if resident.len() <= floor {
                i.drained = true;
                return Ok(());
            }
            let mut order = i.segments.drain_order(&resident, working_set);
            order.truncate(budget.min(resident.len() - floor));
            order.sort_unstable();
            reaches_floor = resident.len() - order.len() <= floor;
            order
        }
        _ => return Ok(()),
    };
    if pages.is_empty() {
        return Ok(());
    }
    offload(&memory, &pages, policy.kind.dirty_tracking(), moved)?;
    i.segments.note_offloaded(&pages);
    i.drained |= reaches_floor;
    Ok(())
}

/// Takes `pages` (ascending) out of an idle instance's memory. With dirty tracking, pages the
/// memnode already holds unchanged are dropped without a write-back — after a reset that is every
/// resident page (each equals its initial state, or its copy in the memory's region). Without it
/// every non-zero page is written back to the memory's own region (FaaSMem's swap).
fn offload(memory: &MemoryHandle, pages: &[usize], dirty_tracking: bool, moved: &mut Moved) -> Result<(), PagerError> {
    if dirty_tracking {
        moved.dropped_clean += memory.evict_pages(Some(pages))? as u64;
    } else {
        moved.written_back += memory.offload_pages(Some(pages), false)?.pages_sent;
    }
    Ok(())
}
