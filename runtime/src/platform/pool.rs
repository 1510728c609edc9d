//! The call pool: a fixed set of worker threads that run calls, with a bounded queue per user and
//! fair turns between users.
//!
//! ```text
//!   submit(user, id, job) ─► user's queue (≤ per-user bound; all queues ≤ total bound, else Full)
//!   workers: take the next user in round-robin order that has a queued call and fewer running
//!            than its limit; run the call; repeat
//!   take(id): a call still queued is handed to the caller instead (an await runs it inline)
//! ```
//! One tenant's calls can fill neither the workers (per-user running limit) nor the queue
//! (per-user queue bound); routes that are not calls never wait for a worker. A call awaiting
//! another that is still queued runs it on its own thread, so awaits cannot deadlock the pool.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The pool's size and bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Worker threads (calls running at once). Default 16.
    pub workers: usize,
    /// Calls of one user running at once. Default: half the workers (at least 1).
    pub max_running_per_user: usize,
    /// Calls queued over all users. Default 1024.
    pub max_queued: usize,
    /// Calls of one user queued. Default 256.
    pub max_queued_per_user: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig { workers: 16, max_running_per_user: 8, max_queued: 1024, max_queued_per_user: 256 }
    }
}

/// A call to run. A worker runs it with no deadline of its own (the call's limit applies); a
/// call awaiting it that runs it on its own thread passes its own deadline, which the call must
/// not outlive.
pub type Job = Box<dyn FnOnce(Option<std::time::Instant>) + Send>;

/// Why a call was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolFull {
    #[error("the runtime's call queue is full ({0} calls waiting): retry later")]
    Total(usize),
    #[error("user {user} has {queued} calls waiting, the most allowed: retry later")]
    User { user: String, queued: usize },
}

#[derive(Default)]
struct UserQueue {
    queue: VecDeque<(u32, Job)>,
    running: usize,
}

#[derive(Default)]
struct State {
    users: HashMap<String, UserQueue>,
    /// Users with queued calls, in turn order.
    ring: VecDeque<String>,
    queued: usize,
    stop: bool,
}

struct Shared {
    config: PoolConfig,
    state: Mutex<State>,
    wake: Condvar,
}

/// The pool.
pub struct CallPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for CallPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallPool").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next call to run, in fair order, if any user may run one.
    fn next(&self, s: &mut State) -> Option<(String, Job)> {
        for _ in 0..s.ring.len() {
            let user = s.ring.pop_front()?;
            let limit = self.config.max_running_per_user.max(1);
            // A user whose queue emptied (its calls were taken) leaves the ring.
            let Some(q) = s.users.get_mut(&user).filter(|q| !q.queue.is_empty()) else { continue };
            if q.running < limit
                && let Some((_, job)) = q.queue.pop_front()
            {
                q.running += 1;
                s.queued -= 1;
                if !q.queue.is_empty() {
                    s.ring.push_back(user.clone());
                }
                return Some((user, job));
            }
            s.ring.push_back(user);
        }
        None
    }

    fn worker(self: Arc<Self>) {
        let mut s = self.lock();
        loop {
            if s.stop {
                return;
            }
            let Some((user, job)) = self.next(&mut s) else {
                s = self.wake.wait(s).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            drop(s);
            // A job records its own outcome; a panic in it must not take the worker.
            if std::panic::catch_unwind(AssertUnwindSafe(|| job(None))).is_err() {
                tracing::error!("a call of {user} panicked; its worker goes on");
            }
            s = self.lock();
            if let Some(q) = s.users.get_mut(&user) {
                q.running -= 1;
                if q.running == 0 && q.queue.is_empty() {
                    s.users.remove(&user);
                }
            }
            // Another user's call may have been waiting for this user's slot or a worker.
            self.wake.notify_all();
        }
    }
}

impl CallPool {
    pub fn start(config: PoolConfig) -> std::io::Result<CallPool> {
        let shared = Arc::new(Shared { config, state: Mutex::new(State::default()), wake: Condvar::new() });
        let mut threads = Vec::new();
        for i in 0..config.workers.max(1) {
            let s = shared.clone();
            threads.push(std::thread::Builder::new().name(format!("ebb-call-{i}")).spawn(move || s.worker())?);
        }
        Ok(CallPool { shared, threads })
    }

    pub fn config(&self) -> PoolConfig {
        self.shared.config
    }

    /// Queues call `id` of `user`.
    pub fn submit(&self, user: &str, id: u32, job: Job) -> Result<(), PoolFull> {
        let c = self.shared.config;
        let mut s = self.shared.lock();
        if s.queued >= c.max_queued {
            return Err(PoolFull::Total(s.queued));
        }
        let q = s.users.entry(user.to_string()).or_default();
        if q.queue.len() >= c.max_queued_per_user {
            return Err(PoolFull::User { user: user.to_string(), queued: q.queue.len() });
        }
        let was_empty = q.queue.is_empty();
        q.queue.push_back((id, job));
        s.queued += 1;
        if was_empty {
            s.ring.push_back(user.to_string());
        }
        drop(s);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Takes call `id` of `user` out of the queue if it has not started (to run it on the
    /// caller's thread).
    pub fn take(&self, user: &str, id: u32) -> Option<Job> {
        let mut s = self.shared.lock();
        let q = s.users.get_mut(user)?;
        let i = q.queue.iter().position(|(j, _)| *j == id)?;
        let (_, job) = q.queue.remove(i)?;
        let (empty, idle) = (q.queue.is_empty(), q.running == 0);
        s.queued -= 1;
        if empty {
            s.ring.retain(|u| u != user);
            if idle {
                s.users.remove(user);
            }
        }
        Some(job)
    }

    /// (running, queued) calls now.
    pub fn load(&self) -> (usize, usize) {
        let s = self.shared.lock();
        (s.users.values().map(|q| q.running).sum(), s.queued)
    }
}

impl Drop for CallPool {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        let me = std::thread::current().id();
        for t in self.threads.drain(..) {
            // The last reference may go from a worker itself (a job held the platform).
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn per_user_limits_and_fair_turns() {
        let pool = CallPool::start(PoolConfig { workers: 2, max_running_per_user: 1, max_queued: 100, max_queued_per_user: 3 }).unwrap();
        let (ran_tx, ran_rx) = mpsc::channel::<String>();
        // Each call blocks until its own release: which call ends is the test's choice, never
        // the scheduler's (a release shared by all went to whichever blocked call took it first).
        let mut releases = std::collections::HashMap::new();
        let mut blocker = |name: &str| -> Job {
            let (release_tx, release_rx) = mpsc::channel::<()>();
            releases.insert(name.to_string(), release_tx);
            let (tx, name) = (ran_tx.clone(), name.to_string());
            Box::new(move |_| {
                let _ = tx.send(name);
                let _ = release_rx.recv();
            })
        };
        // Alice runs one call (her bound) and queues 3 more (her bound); a fifth is refused. Bob's
        // one call runs although alice got there first: she may run only one at a time.
        pool.submit("alice", 0, blocker("alice-0")).unwrap();
        assert_eq!(ran_rx.recv_timeout(Duration::from_secs(5)).unwrap(), "alice-0");
        for i in 1..4 {
            pool.submit("alice", i, blocker(&format!("alice-{i}"))).unwrap();
        }
        assert!(matches!(pool.submit("alice", 9, blocker("x")), Err(PoolFull::User { .. })));
        pool.submit("bob", 10, blocker("bob")).unwrap();
        assert_eq!(ran_rx.recv_timeout(Duration::from_secs(5)).unwrap(), "bob");
        // A queued call can be taken out to run elsewhere.
        assert!(pool.take("alice", 3).is_some());
        assert!(pool.take("alice", 3).is_none());
        // Bob's call ending frees a worker, but alice still runs one: her next call waits.
        releases["bob"].send(()).unwrap();
        assert!(ran_rx.recv_timeout(Duration::from_millis(200)).is_err(), "alice ran two calls at once");
        releases["alice-0"].send(()).unwrap();
        assert_eq!(ran_rx.recv_timeout(Duration::from_secs(5)).unwrap(), "alice-1");
        releases["alice-1"].send(()).unwrap();
        assert_eq!(ran_rx.recv_timeout(Duration::from_secs(5)).unwrap(), "alice-2");
        releases["alice-2"].send(()).unwrap();
    }
}
