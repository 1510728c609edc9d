//! The fault path of handler threads: each memory's userfaultfd is armed one-shot in an epoll set,
//! and a pool of threads reads its fault events and resolves them ([`super::fault`]) while the
//! faulting thread sleeps in the kernel.
//!
//! ```text
//!   handler thread ── epoll (one-shot per memory's uffd) ──► read the memory's fault events
//!                  ── resolve (fault.rs) ──► install, waking the faulting thread
//!   supervisor (the thread's own loop): a panic or an epoll error poisons the memory being
//!   served, releases its faulting thread, and the thread serves on
//! ```
//! The faulting thread sleeps in the kernel, so a syscall whose buffer lies in linear memory waits
//! for its page too. Each fault costs a wake-up of another thread (16–40 µs on these VMs,
//! shared/notes/kernel.md); the `sigbus` path avoids it.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ebb_memnode::PAGE_SIZE;
use userfaultfd::{Event, ReadWrite};

use super::fault::FaultBuf;
use super::{MemoryState, Poison, STOP_KEY, Shared};

/// What a handler is in the middle of, for its supervisor.
#[derive(Default)]
struct Serving {
    memory: Option<(Arc<MemoryState>, u64)>,
    fault: Option<usize>,
}

/// The body of a fault-handler thread: serves faults until the pager stops. A panic or an error
/// waiting for events never ends the thread: what it was serving is poisoned and released, and
/// it serves on.
pub(super) fn handler_thread(shared: Arc<Shared>) {
    let mut buf = FaultBuf::new(shared.config.readaround);
    let mut failures = 0u32;
    loop {
        let mut serving = Serving::default();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| shared.serve(&mut buf, &mut serving, &mut failures)));
        let why = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("waiting for fault events failed: {e}"),
            Err(panic) => {
                let msg = panic.downcast_ref::<&str>().map(|s| (*s).to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
                format!("the fault handler panicked: {}", msg.unwrap_or_else(|| "(no message)".into()))
            }
        };
        shared.stats.handler_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!("{why}; serving on");
        shared.abandon(serving, why);
        failures += 1;
        // Backs off on repeated errors so a broken epoll set does not spin a CPU.
        std::thread::sleep(Duration::from_millis(u64::from(failures.min(100)) * 10));
    }
}

impl Shared {
    /// Serves fault events until the stop key fires (`Ok`) or waiting fails (`Err`).
    fn serve(&self, buf: &mut FaultBuf, serving: &mut Serving, failures: &mut u32) -> std::io::Result<()> {
        loop {
            let key = self.epoll.wait_one(self.config.spin)?;
            if key == STOP_KEY {
                return Ok(());
            }
            *failures = 0;
            let Some(mem) = self.memories.read().unwrap_or_else(|e| e.into_inner()).get(&key).cloned() else {
                continue; // The memory was dropped after the event fired.
            };
            serving.memory = Some((mem.clone(), key));
            loop {
                match mem.uffd.read_event() {
                    Ok(Some(Event::Pagefault { addr, rw, .. })) => {
                        let addr = addr as usize;
                        serving.fault = Some(addr);
                        self.resolve(&mem, addr, rw == ReadWrite::Write, buf);
                        serving.fault = None;
                    }
                    Ok(Some(_)) => {} // Only page faults are requested.
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!("cannot read userfaultfd events: {e}");
                        break;
                    }
                }
            }
            serving.memory = None;
            if let Err(e) = self.epoll.rearm(&mem.uffd, key) {
                // Only fails once the memory's uffd is gone, i.e. the memory was dropped.
                tracing::debug!("not re-arming a dropped memory: {e}");
            }
        }
    }

    /// After a handler failed while serving a memory: poisons it, releases the fault it was on
    /// and every other waiter (they fault again and are answered at once), and gives the memory
    /// back to the epoll set so its remaining events are served by whichever thread is free.
    fn abandon(&self, serving: Serving, why: String) {
        let Some((mem, key)) = serving.memory else { return };
        mem.poison(Poison::Handler(why));
        self.fire_interrupt();
        if let Some(addr) = serving.fault {
            self.release_with_zero(&mem, addr);
        }
        let len = mem.accessible_pages() * PAGE_SIZE;
        if len > 0 {
            let _ = mem.uffd.wake(mem.base() as *mut _, len);
        }
        let _ = self.epoll.rearm(&mem.uffd, key);
    }
}
