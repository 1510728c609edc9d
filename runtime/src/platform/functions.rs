//! Per-function state of the platform: the instance pool (idle instances with their policy
//! timeline and segments), the memories of every live instance (for accounting), and counters.
//!
//! The executor's [`Function`] knows only its module and initial state; everything here is the
//! platform's. Counters are relaxed atomics, and gauges (instances per phase) are kept as the idle
//! list changes, so `/metrics` never walks a list or a page table under a lock calls take.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::exec::{Function, Instance};
use crate::pager::MemoryHandle;
use crate::policy::{DrainBudget, Phase, ReuseStats, Segments};

/// An idle instance and where it is on the policy's timeline.
#[derive(Debug)]
pub struct Idle {
    pub instance: Instance,
    /// Per-page segments and ages, for the offload policy.
    pub segments: Segments,
    /// When its last call ended.
    pub since: Instant,
    pub phase: Phase,
    pub drain: DrainBudget,
    /// The warm offload of cold segments was done for this idle period.
    pub warm_offloaded: bool,
    /// A semi-warm drain reached the floor.
    pub drained: bool,
}

impl Idle {
    pub fn new(instance: Instance, segments: Segments, since: Instant) -> Idle {
        Idle { instance, segments, since, phase: Phase::Warm, drain: DrainBudget::default(), warm_offloaded: false, drained: false }
    }
}

/// Call latency buckets (seconds) of the histogram; a last bucket holds the rest (+Inf).
pub const BUCKETS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0];

/// One function's counters.
#[derive(Debug, Default)]
pub struct FunctionMetrics {
    pub ok: AtomicU64,
    pub error: AtomicU64,
    pub buckets: [AtomicU64; BUCKETS.len() + 1],
    pub sum_micros: AtomicU64,
    /// Pages that faults brought in during calls (with their read-around).
    pub faults: AtomicU64,
    /// Calls that found an instance idle in each phase, or none (`cold_starts`).
    pub warm_starts: AtomicU64,
    pub semi_warm_starts: AtomicU64,
    pub cold_starts: AtomicU64,
    /// Pages installed from the recorded working set before calls.
    pub prefetched: AtomicU64,
    /// Prefetched pages seen touched by their call (written: reads of resident pages cannot be
    /// seen from user space, so this is a lower bound).
    pub prefetch_hits: AtomicU64,
    /// Pages with content that calls still faulted on after a prefetch.
    pub prefetch_misses: AtomicU64,
    /// Calls on restored instances with a working set recorded, and those of them that ran
    /// without prefetch to record it afresh.
    pub restores: AtomicU64,
    pub ws_probes: AtomicU64,
    /// Pages the policy sent to the memnode, and pages it dropped because the memnode already
    /// held them unchanged.
    pub written_back: AtomicU64,
    pub dropped_clean: AtomicU64,
    /// Calls since the policy dropped the function's local image.
    pub calls_since_image_drop: AtomicU64,
    /// Reuse intervals (for the automatic semi-warm threshold) and the last call's end.
    pub reuse: Mutex<(ReuseStats, Option<Instant>)>,
}

impl FunctionMetrics {
    /// Notes a finished call that took `secs`.
    pub fn call(&self, secs: f64, ok: bool) {
        let bucket = BUCKETS.iter().position(|&b| secs <= b).unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "durations in µs fit a u64")]
        self.sum_micros.fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
        if ok { &self.ok } else { &self.error }.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }
}

/// The platform's record of one uploaded function.
#[derive(Debug)]
pub struct Pooled {
    pub function: Arc<Function>,
    idle: Mutex<Vec<Idle>>,
    /// Idle instances the policy has out of the list now (changed under the list's lock), and
    /// the signal that one came back: a call that finds the list empty waits for them a little.
    out: AtomicUsize,
    given_back: Condvar,
    /// Idle instances per phase: [warm, semi-warm], kept with the list. An instance taken out for
    /// the policy's work ([`Pooled::sweep`], [`Pooled::take_all_idle`]) still counts: it is idle in
    /// its phase while its pages move, and the gauge must not show it gone and back.
    phases: [AtomicUsize; 2],
    /// Instances running a call now.
    pub busy: AtomicUsize,
    /// The memories of every live instance (idle or running), for accounting.
    memories: Mutex<Vec<MemoryHandle>>,
    pub metrics: FunctionMetrics,
    /// The segments the first instance's init phase labelled (runtime and init pages).
    pub initial_segments: OnceLock<Segments>,
}

/// How long a call waits for an idle instance the policy has out before it starts a new one.
pub const POLICY_WAIT: Duration = Duration::from_millis(250);

fn slot(phase: Phase) -> Option<usize> {
    match phase {
        Phase::Warm => Some(0),
        Phase::SemiWarm => Some(1),
        Phase::Expired => None,
    }
}

impl Pooled {
    pub fn new(function: Arc<Function>) -> Pooled {
        Pooled {
            function,
            idle: Mutex::new(Vec::new()),
            out: AtomicUsize::new(0),
            given_back: Condvar::new(),
            phases: Default::default(),
            busy: AtomicUsize::new(0),
            memories: Mutex::new(Vec::new()),
            metrics: FunctionMetrics::default(),
            initial_segments: OnceLock::new(),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, phase: Phase, delta: isize) {
        if let Some(i) = slot(phase) {
            if delta > 0 {
                self.phases[i].fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
            } else {
                self.phases[i].fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
            }
        }
    }

    /// The most recently used idle instance, if any. With none in the list but some out for the
    /// policy's work (a drain step, an image swap: milliseconds), it waits up to
    /// [`POLICY_WAIT`] for one to come back rather than start a new instance (instantiation and
    /// a restore of the whole initial state: far longer).
    pub fn pop_idle(&self) -> Option<Idle> {
        let i = self.wait_for_policy(POLICY_WAIT, |idle| !idle.is_empty()).pop()?;
        self.count(i.phase, -1);
        Some(i)
    }

    /// The idle list once `ready(list)` holds, no instance is out for the policy's work, or
    /// `wait` has passed, whichever comes first.
    fn wait_for_policy(&self, wait: Duration, ready: impl Fn(&[Idle]) -> bool) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        let mut idle = self.idle();
        let deadline = Instant::now() + wait;
        loop {
            let now = Instant::now();
            if ready(&idle) || self.out.load(Ordering::Relaxed) == 0 || now >= deadline {
                return idle;
            }
            idle = self.given_back.wait_timeout(idle, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Returns an instance to the pool, unless `max` are idle already (then it is dropped).
    pub fn push_idle(&self, i: Idle, max: usize) {
        let mut idle = self.idle();
        if idle.len() < max {
            self.count(i.phase, 1);
            idle.push(i);
        } else {
            drop(idle);
            self.forget(&i.instance);
        }
    }

    /// Gives back an instance taken out by [`Pooled::sweep`] or [`Pooled::take_all_idle`] (still
    /// counted in its phase), unless it must be discarded or `max` are idle already.
    pub fn give_back(&self, i: Idle, max: usize) {
        let mut idle = self.idle();
        self.out.fetch_sub(1, Ordering::Relaxed);
        let kept = idle.len() < max && !i.instance.must_discard();
        if kept {
            idle.push(i);
            drop(idle);
        } else {
            drop(idle);
            self.count(i.phase, -1);
            self.forget(&i.instance);
        }
        // Every waiter looks again: a call takes the instance (or, with nothing left out,
        // starts one at once), an offload goes on once none is out.
        self.given_back.notify_all();
    }

    /// The policy's look at the idle list: sets each instance's phase to `phase_of(it)`, takes
    /// out the expired ones and those `needs_work` selects (to offload them without holding the
    /// list: calls meanwhile take the others, or start new instances). Returns (to work on,
    /// expired); the caller drops the expired ones outside the lock (freeing their memnode
    /// regions is network I/O) and gives the others back with [`Pooled::give_back`].
    pub fn sweep(&self, phase_of: impl Fn(&Idle) -> Phase, needs_work: impl Fn(&Idle) -> bool) -> (Vec<Idle>, Vec<Idle>) {
        let mut idle = self.idle();
        let (mut work, mut expired) = (Vec::new(), Vec::new());
        let mut keep = Vec::with_capacity(idle.len());
        for mut i in idle.drain(..) {
            let phase = phase_of(&i);
            if phase != i.phase {
                self.count(i.phase, -1);
                self.count(phase, 1);
                i.phase = phase;
            }
            if phase == Phase::Expired {
                expired.push(i);
            } else if needs_work(&i) {
                work.push(i);
            } else {
                keep.push(i);
            }
        }
        *idle = keep;
        self.out.fetch_add(work.len(), Ordering::Relaxed);
        drop(idle);
        for i in &expired {
            self.forget(&i.instance);
        }
        (work, expired)
    }

    /// Takes every idle instance out of the list (to work on them without holding it; no call can
    /// take them meanwhile). Give them back with [`Pooled::give_back`].
    pub fn take_all_idle(&self) -> Vec<Idle> {
        self.take_all_idle_within(Duration::ZERO)
    }

    /// [`Pooled::take_all_idle`] once the instances out for the policy's work are back (or
    /// `wait` has passed): an offload asked for must reach the instance a policy tick was
    /// working on (it found none and left it resident).
    pub fn take_all_idle_within(&self, wait: Duration) -> Vec<Idle> {
        let mut idle = self.wait_for_policy(wait, |_| false);
        self.out.fetch_add(idle.len(), Ordering::Relaxed);
        std::mem::take(&mut *idle)
    }

    /// Records a new live instance's memory.
    pub fn adopt_instance(&self, instance: &Instance) {
        if let Some(m) = instance.memory() {
            self.memories.lock().unwrap_or_else(|e| e.into_inner()).push(m.clone());
        }
    }

    /// Forgets a dropped (or about to be dropped) instance's memory.
    pub fn forget(&self, instance: &Instance) {
        if let Some(m) = instance.memory() {
            self.memories.lock().unwrap_or_else(|e| e.into_inner()).retain(|x| !x.is(m));
        }
    }

    /// Every live instance's memory (clones of the handles).
    pub fn memories(&self) -> Vec<MemoryHandle> {
        self.memories.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Idle instances (warm, semi-warm).
    pub fn phase_counts(&self) -> (usize, usize) {
        (self.phases[0].load(Ordering::Relaxed), self.phases[1].load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{Executor, Stdout};
    use crate::pager::{Pager, PagerConfig};

    /// A pool of one function with `n` idle instances, warm since `since`.
    fn pool(n: usize, since: Instant) -> Pooled {
        let transport = Arc::new(ebb_memnode::LocalTransport::embedded(1 << 26));
        let exec = Executor::new(Pager::new(PagerConfig::default(), transport).unwrap()).unwrap();
        let module = exec.compile(br#"(module (memory (export "memory") 1) (func (export "_start")))"#).unwrap();
        let f = Arc::new(Function::new("demo/empty", module));
        let p = Pooled::new(f.clone());
        for _ in 0..n {
            let instance = exec.function_instance(&f, Stdout::Inherit, None, None).unwrap().0;
            p.adopt_instance(&instance);
            p.push_idle(Idle::new(instance, Segments::default(), since), 8);
        }
        p
    }

    #[test]
    fn a_call_waits_for_the_instance_the_policy_has_out() {
        let p = pool(1, Instant::now());
        let taken = p.take_all_idle();
        std::thread::scope(|s| {
            let caller = s.spawn(|| p.pop_idle().map(|i| i.phase));
            std::thread::sleep(Duration::from_millis(30));
            for i in taken {
                p.give_back(i, 8);
            }
            assert_eq!(caller.join().unwrap(), Some(Phase::Warm), "the call took the instance given back");
        });
        assert!(p.pop_idle().is_none(), "none idle, none out: no instance");
        // Given back to a full pool, the instance goes; a waiting call gets none.
        let p = pool(1, Instant::now());
        let taken = p.take_all_idle();
        std::thread::scope(|s| {
            let caller = s.spawn(|| p.pop_idle().is_none());
            for i in taken {
                p.give_back(i, 0);
            }
            assert!(caller.join().unwrap());
        });
    }

    #[test]
    fn an_offload_waits_for_the_instances_the_policy_has_out() {
        let p = pool(2, Instant::now());
        let taken = p.take_all_idle();
        std::thread::scope(|s| {
            let offload = s.spawn(|| p.take_all_idle_within(Duration::from_secs(30)).len());
            std::thread::sleep(Duration::from_millis(30));
            for i in taken {
                p.give_back(i, 8);
            }
            assert_eq!(offload.join().unwrap(), 2, "the offload got both instances, once back");
        });
        // Out for longer than it waits: it takes what is idle, and the instance out is not lost.
        let p = pool(2, Instant::now());
        let one = p.pop_idle().unwrap();
        p.push_idle(one, 8);
        let out: Vec<Idle> = p.sweep(|i| i.phase, {
            let first = std::cell::Cell::new(true);
            move |_| first.replace(false)
        })
        .0;
        assert_eq!(out.len(), 1);
        assert_eq!(p.take_all_idle_within(Duration::from_millis(20)).len(), 1, "the one idle, without the one out");
        for i in out {
            p.give_back(i, 8);
        }
        assert!(p.pop_idle().is_some(), "the one out is back in the list");
    }

    #[test]
    fn instances_the_policy_works_on_stay_counted_in_their_phase() {
        let p = pool(3, Instant::now());
        assert_eq!(p.phase_counts(), (3, 0));
        // Two turn semi-warm and are taken out to drain; the gauge still shows them semi-warm
        // (it showed them gone, and a reader took a drain for an expiry).
        let turned = std::cell::Cell::new(0);
        let (work, expired) = p.sweep(
            |_| {
                turned.set(turned.get() + 1);
                if turned.get() <= 2 { Phase::SemiWarm } else { Phase::Warm }
            },
            |i| i.phase == Phase::SemiWarm,
        );
        assert_eq!((work.len(), expired.len()), (2, 0));
        assert_eq!(p.phase_counts(), (1, 2));
        let called = p.pop_idle().expect("the warm one is still there for a call");
        p.forget(&called.instance);
        assert_eq!(p.phase_counts(), (0, 2));
        for i in work {
            p.give_back(i, 8);
        }
        assert_eq!(p.phase_counts(), (0, 2));
        assert_eq!(p.memories().len(), 2);
        // Given back to a full pool, an instance leaves the count and the accounting.
        let taken = p.take_all_idle();
        assert_eq!(p.phase_counts(), (0, 2));
        for i in taken {
            p.give_back(i, 1);
        }
        assert_eq!(p.phase_counts(), (0, 1));
        assert_eq!(p.memories().len(), 1);
        // Expired ones leave at once.
        let (work, expired) = p.sweep(|_| Phase::Expired, |_| true);
        assert_eq!((work.len(), expired.len(), p.phase_counts()), (0, 1, (0, 0)));
        assert!(p.memories().is_empty());
    }
}
