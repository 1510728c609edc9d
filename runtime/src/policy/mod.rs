//! Offload policy: which pages leave this host and when, and what comes back eagerly.
//!
//! The policy does no I/O: it reads what the pager and the executor observed (faults, written
//! pages, call times) and answers with page lists and instance phases; the platform acts on them.
//!
//! ```text
//!   an idle instance:   Warm ──semi_warm_after──► SemiWarm ──keep_alive──► Expired (freed)
//!                        │ runtime pages: offloaded after the first call
//!                        │ init pages: offloaded once no call touched them for
//!                        │   `init_idle_calls` calls or `init_idle` time
//!                        │ hot pages (faulted back after the policy offloaded them): kept
//!                        └ SemiWarm: everything drains at `drain_rate` down to `floor`,
//!                          runtime first, then init, then execution pages oldest first
//! ```
//! Segments ("Puckets" in FaaSMem) are kept per page of an instance ([`Segments`]): *runtime*
//! (resident after instantiation), *init* (first touched by `_faasm_zygote`), *execution*
//! (first touched by a call), each with the call and time it was last seen touched. A touch is
//! seen when the page faults in or is written (PAGEMAP_SCAN); reads of resident pages are
//! invisible to user space (no accessed bit here), which is why a page the policy offloaded and
//! that faults back is marked hot.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

mod config;

pub use config::{ConfigError, PolicyConfig, PolicyFile, PolicyKind};

/// Where an idle instance is on its timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Kept resident (minus the cold segments).
    Warm,
    /// Draining to the memnode; a call runs at once and faults back what it touches.
    SemiWarm,
    /// Past the keep-alive: free it and its memnode pages.
    Expired,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Warm => "warm",
            Phase::SemiWarm => "semi_warm",
            Phase::Expired => "expired",
        }
    }
}

/// The phase of an instance idle for `idle`, with the semi-warm threshold `semi_warm_after`.
pub fn phase(config: &PolicyConfig, semi_warm_after: Duration, idle: Duration) -> Phase {
    if idle >= config.keep_alive {
        Phase::Expired
    } else if config.kind.offloads() && idle >= semi_warm_after {
        Phase::SemiWarm
    } else {
        Phase::Warm
    }
}

/// Intervals between a function's consecutive calls, to set its semi-warm threshold from its
/// observed reuse (FaaSMem: the P99 reuse interval, at least a minimum).
#[derive(Debug, Default)]
pub struct ReuseStats {
    last: Option<Instant>,
    intervals: VecDeque<Duration>,
}

/// Intervals kept per function.
const REUSE_WINDOW: usize = 512;

impl ReuseStats {
    /// Notes a call starting at `now`.
    pub fn record(&mut self, now: Instant) {
        if let Some(last) = self.last.replace(now) {
            if self.intervals.len() == REUSE_WINDOW {
                self.intervals.pop_front();
            }
            self.intervals.push_back(now.saturating_duration_since(last));
        }
    }

    /// The 99th percentile of the recorded intervals (nearest rank), if any.
    pub fn p99(&self) -> Option<Duration> {
        self.p99_below(Duration::MAX)
    }

    /// The 99th percentile (nearest rank) of the recorded intervals shorter than `below`, if any.
    fn p99_below(&self, below: Duration) -> Option<Duration> {
        let mut v: Vec<Duration> = self.intervals.iter().copied().filter(|&d| d < below).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let rank = (v.len() * 99).div_ceil(100).max(1);
        Some(v[rank - 1])
    }

    /// When an idle instance of this function turns semi-warm: the configured value, or the P99
    /// reuse interval but at least `semi_warm_min`. Intervals of keep-alive or longer do not
    /// count: the instance had expired, so they say nothing about how soon a kept instance is
    /// reused — and with the few intervals of a rarely called function (nearest-rank P99 of
    /// under 100 is the largest) one such gap would otherwise keep every later idle period warm
    /// until it expires, for the next 512 calls.
    pub fn semi_warm_after(&self, config: &PolicyConfig) -> Duration {
        config
            .semi_warm_after
            .unwrap_or_else(|| self.p99_below(config.keep_alive).unwrap_or_default().max(config.semi_warm_min))
    }
}

/// Paces a drain: how many pages may leave by now at `rate` bytes per second.
#[derive(Debug, Default)]
pub struct DrainBudget {
    last: Option<Instant>,
    /// Bytes allowed but not yet used (below one page).
    carry: u64,
}

impl DrainBudget {
    /// Pages that may be drained at `now`, given the time since the previous call (the first
    /// call starts the clock and allows nothing).
    pub fn pages(&mut self, rate: u64, now: Instant) -> usize {
        let Some(last) = self.last.replace(now) else { return 0 };
        let elapsed = now.saturating_duration_since(last);
        let bytes = u128::from(rate) * elapsed.as_nanos() / 1_000_000_000 + u128::from(self.carry);
        let page = ebb_memnode::PAGE_SIZE as u128;
        self.carry = u64::try_from(bytes % page).unwrap_or(0);
        usize::try_from(bytes / page).unwrap_or(usize::MAX)
    }

    /// Stops pacing (the instance was called): the next drain starts a new clock.
    pub fn reset(&mut self) {
        *self = DrainBudget::default();
    }
}

/// Which phase first touched a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Segment {
    /// Resident once the module was instantiated (data segments, the language runtime's setup).
    Runtime = 1,
    /// First touched by the init phase (`_faasm_zygote`).
    Init = 2,
    /// First touched by a call.
    Exec = 3,
}

#[derive(Clone, Copy, Debug)]
struct PageInfo {
    segment: Option<Segment>,
    /// The call that last touched the page, as far as seen (0: instantiation or init).
    last_call: u32,
    last_time: Option<Instant>,
    /// The policy offloaded the page while warm and a call touched it again.
    hot: bool,
    /// The policy offloaded the page and it has not been seen since.
    offloaded: bool,
}

const UNSEEN: PageInfo = PageInfo { segment: None, last_call: 0, last_time: None, hot: false, offloaded: false };

/// Per-page segments and ages of one instance's memory.
#[derive(Clone, Debug, Default)]
pub struct Segments {
    pages: Vec<PageInfo>,
    calls: u32,
}

impl Segments {
    fn info(&mut self, page: usize) -> &mut PageInfo {
        if page >= self.pages.len() {
            self.pages.resize(page + 1, UNSEEN);
        }
        &mut self.pages[page]
    }

    /// Calls observed so far.
    pub fn calls(&self) -> u32 {
        self.calls
    }

    /// The segment of `page`, if it was ever seen.
    pub fn segment(&self, page: usize) -> Option<Segment> {
        self.pages.get(page).and_then(|i| i.segment)
    }

    /// Whether `page` is hot (touched again after the policy offloaded it).
    pub fn is_hot(&self, page: usize) -> bool {
        self.pages.get(page).is_some_and(|i| i.hot)
    }

    /// Labels pages seen before any call: `Runtime` for those resident after instantiation,
    /// `Init` for those the init phase added. Pages already labelled keep their label.
    pub fn label(&mut self, pages: &[usize], segment: Segment, now: Instant) {
        for &p in pages {
            let info = self.info(p);
            if info.segment.is_none() {
                *info = PageInfo { segment: Some(segment), last_call: 0, last_time: Some(now), ..UNSEEN };
            }
        }
    }

    /// Notes one call that touched `touched` (faulted in or written), ending at `now`. A page
    /// never seen before takes the segment `initial(page)` gives (the function's labels for
    /// instances that adopted its initial state), else `Exec`. Returns how many of the touched
    /// pages the policy had offloaded (each becomes hot).
    pub fn observe_call(&mut self, touched: &[usize], now: Instant, initial: impl Fn(usize) -> Option<Segment>) -> usize {
        self.calls += 1;
        let call = self.calls;
        let mut refaulted = 0;
        for &p in touched {
            let info = self.info(p);
            if info.segment.is_none() {
                info.segment = Some(initial(p).unwrap_or(Segment::Exec));
            }
            if info.offloaded {
                info.hot = true;
                info.offloaded = false;
                refaulted += 1;
            }
            info.last_call = call;
            info.last_time = Some(now);
        }
        refaulted
    }

    /// Notes that the policy offloaded `pages`.
    pub fn note_offloaded(&mut self, pages: &[usize]) {
        for &p in pages {
            self.info(p).offloaded = true;
        }
    }

    /// Pages of `resident` a warm instance should offload now (FaaSMem's rule): runtime pages
    /// not seen by the latest call once there has been one, and init pages no call has been
    /// seen touching for `init_idle_calls` calls or for `init_idle`. Hot pages and execution
    /// pages stay.
    pub fn warm_offload(&self, resident: &[usize], config: &PolicyConfig, now: Instant) -> Vec<usize> {
        if self.calls == 0 {
            return Vec::new();
        }
        resident
            .iter()
            .copied()
            .filter(|&p| {
                let Some(info) = self.pages.get(p) else { return false };
                if info.hot {
                    return false;
                }
                match info.segment {
                    Some(Segment::Runtime) => info.last_call < self.calls,
                    Some(Segment::Init) => {
                        self.calls - info.last_call >= config.init_idle_calls
                            || info.last_time.is_some_and(|t| now.saturating_duration_since(t) >= config.init_idle)
                    }
                    _ => false,
                }
            })
            .collect()
    }

    /// `resident` in the order a semi-warm drain takes them: pages outside the function's
    /// working set (`working_set`, ascending) before those in it, cold before hot, then runtime,
    /// init, execution, then least recently seen first.
    pub fn drain_order(&self, resident: &[usize], working_set: &[usize]) -> Vec<usize> {
        let mut v = resident.to_vec();
        v.sort_by_key(|&p| {
            let info = self.pages.get(p).copied().unwrap_or(UNSEEN);
            (working_set.binary_search(&p).is_ok(), info.hot, info.segment.map_or(0, |s| s as u8), info.last_call, p)
        });
        v
    }
}

/// How many resident pages a semi-warm instance keeps: `floor` bytes, plus with `hot_floor` its
/// resident pages of the function's working set up to that many bytes (they drain last, see
/// [`Segments::drain_order`], so the floor holds them).
pub fn floor_pages(config: &PolicyConfig, resident: &[usize], working_set: &[usize]) -> usize {
    let page = ebb_memnode::PAGE_SIZE as u64;
    let hot = if config.hot_floor == 0 {
        0
    } else {
        let in_ws = resident.iter().filter(|p| working_set.binary_search(p).is_ok()).count();
        in_ws.min(usize::try_from(config.hot_floor / page).unwrap_or(usize::MAX))
    };
    usize::try_from(config.floor / page).unwrap_or(usize::MAX).saturating_add(hot)
}

/// Whether a restoring call should run without the working-set prefetch, so that what it touches
/// — faults, with their read-around, and writes — replaces the recorded working set instead of
/// joining it: every `ws_probe_every`-th restore of a function (counting from 1). User space
/// cannot see reads of resident pages, so a prefetched call can only add to the set; without
/// these probes it would be the union of every restore, and grow with every call shape.
pub fn probe_working_set(config: &PolicyConfig, restores: u64) -> bool {
    config.ws_probe_every > 0 && restores.is_multiple_of(u64::from(config.ws_probe_every))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: PolicyKind) -> PolicyConfig {
        PolicyConfig { kind, ..PolicyConfig::default() }
    }

    #[test]
    fn timeline_warm_semi_warm_expired() {
        let c = PolicyConfig { keep_alive: Duration::from_secs(600), ..config(PolicyKind::Ebb) };
        let after = Duration::from_secs(60);
        assert_eq!(phase(&c, after, Duration::from_secs(59)), Phase::Warm);
        assert_eq!(phase(&c, after, Duration::from_secs(60)), Phase::SemiWarm);
        assert_eq!(phase(&c, after, Duration::from_secs(599)), Phase::SemiWarm);
        assert_eq!(phase(&c, after, Duration::from_secs(600)), Phase::Expired);
        // Keep-alive never goes semi-warm, but still expires.
        let k = config(PolicyKind::KeepAlive);
        assert_eq!(phase(&k, after, Duration::from_secs(300)), Phase::Warm);
        assert_eq!(phase(&k, after, Duration::from_secs(600)), Phase::Expired);
    }

    #[test]
    fn semi_warm_after_is_p99_reuse_but_at_least_the_minimum() {
        let c = config(PolicyKind::Faasmem);
        let t0 = Instant::now();
        let mut r = ReuseStats::default();
        assert_eq!(r.semi_warm_after(&c), Duration::from_secs(60), "no history: the minimum");
        // 100 intervals: 99 of 10 s and one of 200 s. P99 (nearest rank) is 10 s.
        let mut t = t0;
        r.record(t);
        for i in 0..100 {
            t += Duration::from_secs(if i == 50 { 200 } else { 10 });
            r.record(t);
        }
        assert_eq!(r.p99(), Some(Duration::from_secs(10)));
        assert_eq!(r.semi_warm_after(&c), Duration::from_secs(60));
        // Two more long gaps put 200 s within the top 1 %.
        for _ in 0..2 {
            t += Duration::from_secs(200);
            r.record(t);
        }
        assert_eq!(r.p99(), Some(Duration::from_secs(200)));
        assert_eq!(r.semi_warm_after(&c), Duration::from_secs(200));
        let fixed = PolicyConfig { semi_warm_after: Some(Duration::from_secs(5)), ..c };
        assert_eq!(r.semi_warm_after(&fixed), Duration::from_secs(5));
    }

    #[test]
    fn gaps_beyond_keep_alive_do_not_set_the_semi_warm_threshold() {
        // A rarely called function: calls every 90 s, and once a 30 min gap (its instance
        // expired). With under 100 intervals the nearest-rank P99 is the largest one, so the gap
        // would keep every later idle period warm until the 10 min keep-alive ends.
        let c = config(PolicyKind::Ebb);
        let mut r = ReuseStats::default();
        let mut t = Instant::now();
        r.record(t);
        for i in 0..20 {
            t += Duration::from_secs(if i == 5 { 1800 } else { 90 });
            r.record(t);
        }
        assert_eq!(r.p99(), Some(Duration::from_secs(1800)));
        assert_eq!(r.semi_warm_after(&c), Duration::from_secs(90));
        // Only such gaps: the minimum.
        let mut r = ReuseStats::default();
        r.record(t);
        r.record(t + Duration::from_secs(3600));
        assert_eq!(r.semi_warm_after(&c), Duration::from_secs(60));
    }

    #[test]
    fn hot_floor_keeps_the_working_set_and_probes_come_every_nth_restore() {
        let mut c = config(PolicyKind::Ebb);
        let page = ebb_memnode::PAGE_SIZE as u64;
        let resident = [1, 2, 3, 4, 5, 9];
        let ws = [2, 3, 7, 9];
        assert_eq!(floor_pages(&c, &resident, &ws), 0, "no floor by default");
        c.floor = 2 * page;
        assert_eq!(floor_pages(&c, &resident, &ws), 2);
        c.hot_floor = 64 * page;
        assert_eq!(floor_pages(&c, &resident, &ws), 2 + 3, "the three resident working-set pages");
        c.hot_floor = 2 * page;
        assert_eq!(floor_pages(&c, &resident, &ws), 2 + 2, "capped at hot-floor");

        assert_eq!(c.ws_probe_every, 8);
        let probes: Vec<u64> = (1..=24).filter(|&n| probe_working_set(&c, n)).collect();
        assert_eq!(probes, vec![8, 16, 24]);
        c.ws_probe_every = 0;
        assert!(!(1..=100).any(|n| probe_working_set(&c, n)), "0: never");
    }

    #[test]
    fn drain_is_paced_by_rate_with_carry() {
        let t0 = Instant::now();
        let mut b = DrainBudget::default();
        assert_eq!(b.pages(4096 * 10, t0), 0, "the first tick starts the clock");
        assert_eq!(b.pages(4096 * 10, t0 + Duration::from_millis(250)), 2, "2.5 pages: 2 now");
        assert_eq!(b.pages(4096 * 10, t0 + Duration::from_millis(500)), 3, "2.5 + the carried half");
        assert_eq!(b.pages(4096 * 10, t0 + Duration::from_secs(10)), 95);
        b.reset();
        assert_eq!(b.pages(4096 * 10, t0 + Duration::from_secs(20)), 0);
    }

    #[test]
    fn segments_follow_faasmem_rule() {
        let c = PolicyConfig { init_idle_calls: 2, init_idle: Duration::from_secs(30), ..config(PolicyKind::Faasmem) };
        let t0 = Instant::now();
        let mut s = Segments::default();
        s.label(&[0, 1, 2], Segment::Runtime, t0);
        s.label(&[2, 3, 4, 5], Segment::Init, t0); // 2 stays Runtime
        assert_eq!(s.segment(2), Some(Segment::Runtime));
        let resident = [0, 1, 2, 3, 4, 5, 6];
        assert!(s.warm_offload(&resident, &c, t0).is_empty(), "nothing before the first call");

        // Call 1 touches runtime page 1, init page 3 and a new page 6.
        assert_eq!(s.observe_call(&[1, 3, 6], t0, |_| None), 0);
        assert_eq!(s.segment(6), Some(Segment::Exec));
        // Runtime pages the call did not touch go; init pages wait for 2 calls.
        assert_eq!(s.warm_offload(&resident, &c, t0), vec![0, 2]);
        s.note_offloaded(&[0, 2]);

        // Call 2 touches page 0 again: it faulted back, so it is hot from now on.
        assert_eq!(s.observe_call(&[0, 3, 6], t0 + Duration::from_secs(1), |_| None), 1);
        assert!(s.is_hot(0));
        // Init pages 4 and 5 were last seen at init (call 0): 2 calls ago.
        let resident = [0, 1, 3, 4, 5, 6];
        assert_eq!(s.warm_offload(&resident, &c, t0 + Duration::from_secs(1)), vec![1, 4, 5]);

        // Time alone also ages init pages: page 3 was seen at call 2, but 30 s ago.
        let later = t0 + Duration::from_secs(31);
        assert!(s.warm_offload(&[3], &c, later).contains(&3));
        assert!(!s.warm_offload(&[3], &c, t0 + Duration::from_secs(2)).contains(&3));

        // Execution pages never leave while warm; hot pages drain last.
        assert!(!s.warm_offload(&resident, &c, later).contains(&6));
        assert_eq!(s.drain_order(&[6, 0, 4, 1, 3], &[]), vec![1, 4, 3, 6, 0]);
        // Pages of the working set go after every other, hot or not.
        assert_eq!(s.drain_order(&[6, 0, 4, 1, 3], &[1, 4]), vec![3, 6, 0, 1, 4]);
    }

    #[test]
    fn adopted_instances_take_the_function_labels() {
        let t0 = Instant::now();
        let mut s = Segments::default();
        let labels = |p: usize| (p < 2).then_some(Segment::Init);
        s.observe_call(&[1, 7], t0, labels);
        assert_eq!(s.segment(1), Some(Segment::Init));
        assert_eq!(s.segment(7), Some(Segment::Exec));
        assert_eq!(s.calls(), 1);
    }
}
