//! The in-thread fault path: memories whose userfaultfd has `UFFD_FEATURE_SIGBUS`, so that a
//! missing page raises SIGBUS in the thread that touched it, and that thread resolves its own
//! fault ([`super::fault`]) inside the signal handler and returns into wasm (or into the host
//! code that touched the page). No other thread wakes up: a zero-page fault costs about as much
//! as the kernel's own first-touch fault (4.3–5.6 µs against 16–40 µs through a handler thread
//! on these VMs, shared/notes/kernel.md).
//!
//! ```text
//!   guest touches a missing page ─► kernel: VM_FAULT_SIGBUS ─► SIGBUS (BUS_ADRERR, the address)
//!   on_sigbus ─► the slot whose memory holds the address ─► resolve (fault.rs) ─► return
//!            └─ not ours (another mapping, a `kill -BUS`) ─► the previous handler, or the default
//! ```
//!
//! Why a signal handler may do this much: the signal is synchronous — raised by an access to a
//! registered linear memory and delivered to the accessing thread at that instruction. Code that
//! touches linear memory (wasm, wasmtime's bulk-memory libcalls, the guest ABI's copies) never
//! does so while inside the allocator or holding a lock this handler takes (the fault path's
//! rule, stated in [`super::fault`], which the handler-thread path needs as well), so nothing the
//! handler waits for can be held by the code it interrupted. Its common paths allocate nothing:
//! each memory has its own scratch buffer, made with the memory, and the tcp transport reads into
//! fixed buffers. Failure paths (a panic caught here, an error logged) may allocate.
//!
//! Wasmtime handles SIGSEGV, SIGILL and SIGFPE on x86_64 Linux, not SIGBUS, so its traps are
//! untouched: an out-of-bounds access hits a PROT_NONE guard (SIGSEGV) and stays a trap. Its
//! per-store signal hook only sees the signals it handles, so this handler is process-wide and
//! chains to whatever was installed before it for every SIGBUS that is not a paged memory's.
//!
//! On the kmod path the module fills every fault in the kernel, and a SIGBUS from one of its
//! memories means the module could not (its RDMA backend's memnode failed or went silent past
//! the timeout): the handler poisons the memory, interrupts the call, and puts an anonymous zero
//! page there so that the faulting thread runs on to its trap — the call fails, the process lives.
//!
//! The kernel's own accesses to a missing page (a syscall whose buffer lies in linear memory)
//! fail with EFAULT on this path instead of waiting. Host code must copy through user space:
//! wasmtime-wasi does so as long as blocking on the current thread is not allowed (its direct
//! `read`/`write` into linear memory is used only then), which the executor never allows.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use libc::{c_int, c_void, siginfo_t};

use super::fault::FaultBuf;
use super::{MemoryState, PagerError, Poison, Shared};

/// Most memories on this path at once in one process (each holds a slot the handler scans).
const MAX_MEMORIES: usize = 8192;

/// A registered memory's address range and state, read by the handler without a lock.
struct Slot {
    claimed: AtomicBool,
    start: AtomicUsize,
    end: AtomicUsize,
    state: AtomicPtr<MemoryState>,
    /// Handlers using `state` right now; the memory's drop waits for zero.
    users: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const, reason = "only the array initialiser below uses it")]
const EMPTY: Slot = Slot {
    claimed: AtomicBool::new(false),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    state: AtomicPtr::new(std::ptr::null_mut()),
    users: AtomicUsize::new(0),
};

static SLOTS: [Slot; MAX_MEMORIES] = [EMPTY; MAX_MEMORIES];
/// One past the highest slot ever claimed: the handler scans no further.
static HIGH: AtomicUsize = AtomicUsize::new(0);
/// The SIGBUS disposition before ours (set once, when ours is installed).
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();

/// What a memory on this path holds: its slot, its pager, its fault's scratch.
pub(super) struct InThread {
    slot: usize,
    // Kept alive as long as the memory, so the handler's `shared` is always valid.
    shared: Arc<Shared>,
    /// The read-around scratch buffer; none for a memory the kernel module fills (its SIGBUS is
    /// a failed fill, answered without one).
    buf: Option<Mutex<FaultBuf>>,
}

/// Installs the process's SIGBUS handler (once; later calls return the first outcome).
pub(super) fn install_handler() -> Result<(), PagerError> {
    let outcome = *INSTALLED.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid value; every field is then set as sigaction(2)
        // wants, and `on_sigbus` has the SA_SIGINFO signature.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            // Not SA_ONSTACK: the alternate stacks std gives its threads are a few KiB, too
            // small for a fetch; the faulting thread's own stack has the room (wasm stops at
            // its stack limit well before the thread's stack ends).
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &action, &mut previous) != 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
            let _ = PREVIOUS.set(previous);
        }
        Ok(())
    });
    outcome.map_err(|errno| PagerError::Setup { len: 0, source: std::io::Error::from_raw_os_error(errno) })
}

/// Puts `state` in a slot so that its faults are served in the faulting thread.
pub(super) fn register(state: &Arc<MemoryState>, shared: Arc<Shared>) -> Result<(), PagerError> {
    let slot = SLOTS
        .iter()
        .position(|s| s.claimed.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok())
        .ok_or_else(|| PagerError::Config(format!("more than {MAX_MEMORIES} paged memories on the sigbus fault path in one process")))?;
    let buf = state.kernel.is_none().then(|| Mutex::new(FaultBuf::new(shared.config.readaround)));
    if state.in_thread.set(InThread { slot, shared, buf }).is_err() {
        SLOTS[slot].claimed.store(false, Ordering::Release);
        return Err(PagerError::Config("a memory was registered twice".into()));
    }
    let s = &SLOTS[slot];
    s.start.store(state.base(), Ordering::Relaxed);
    s.end.store(state.base() + state.capacity, Ordering::Relaxed);
    s.state.store(Arc::as_ptr(state).cast_mut(), Ordering::SeqCst);
    HIGH.fetch_max(slot + 1, Ordering::AcqRel);
    Ok(())
}

/// Takes a memory's slot back (from its drop): no handler uses the memory once this returns.
pub(super) fn unregister(registered: &InThread) {
    let s = &SLOTS[registered.slot];
    s.state.store(std::ptr::null_mut(), Ordering::SeqCst);
    // A handler that read the old pointer holds `users` (it increments before it loads, both
    // SeqCst): wait for it. Such a handler serves a fault of some other thread on a memory being
    // dropped, which only a broken owner does, so this almost never waits.
    while s.users.load(Ordering::SeqCst) != 0 {
        std::thread::yield_now();
    }
    s.start.store(0, Ordering::Relaxed);
    s.end.store(0, Ordering::Relaxed);
    s.claimed.store(false, Ordering::Release);
}

extern "C" fn on_sigbus(signum: c_int, info: *mut siginfo_t, context: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler; for SIGBUS `si_addr`
    // is the address of the access.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if code == libc::BUS_ADRERR && serve(addr, is_write(context)) {
        return;
    }
    // SAFETY: forwarded unchanged from the kernel.
    unsafe { chain(signum, info, context) }
}

/// Whether the access was a write: the page-fault error code's W bit (x86_64). Elsewhere every
/// fault counts as a write, which is always correct (a private page, counted dirty).
fn is_write(context: *mut c_void) -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        let uc = context.cast::<libc::ucontext_t>();
        // SAFETY: an SA_SIGINFO handler's third argument is the interrupted ucontext.
        let err = unsafe { (*uc).uc_mcontext.gregs[libc::REG_ERR as usize] };
        err & 2 != 0
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        let _ = context;
        true
    }
}

thread_local! {
    /// The slot this thread's last fault was in: a thread faults on its own call's memory, so
    /// this is nearly always the one, and the scan is skipped. (A const-initialised `Cell` has
    /// no lazy initialisation and no destructor: safe to touch in a signal handler.)
    static LAST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Serves a fault at `addr` if a registered memory holds it; false if none does.
fn serve(addr: usize, write: bool) -> bool {
    let high = HIGH.load(Ordering::Acquire).min(MAX_MEMORIES);
    let last = LAST.with(std::cell::Cell::get);
    let order = std::iter::once(last).filter(|&i| i < high).chain((0..high).filter(|&i| i != last));
    for i in order {
        let s = &SLOTS[i];
        if addr < s.start.load(Ordering::Relaxed) || addr >= s.end.load(Ordering::Relaxed) {
            continue;
        }
        s.users.fetch_add(1, Ordering::SeqCst);
        let state = s.state.load(Ordering::SeqCst);
        // SAFETY: a non-null pointer read while `users` is held stays valid: `unregister` (run
        // before the memory is freed) clears it and then waits for `users` to drop to zero.
        let served = !state.is_null() && serve_on(unsafe { &*state }, addr, write);
        s.users.fetch_sub(1, Ordering::Release);
        if served {
            LAST.with(|l| l.set(i));
            return true;
        }
    }
    false
}

fn serve_on(mem: &MemoryState, addr: usize, write: bool) -> bool {
    let Some(t) = mem.in_thread.get() else { return false };
    if addr < mem.base() || addr >= mem.base() + mem.accessible.load(Ordering::Acquire) || mem.in_file_map(addr) {
        // Not a userfaultfd fault: a file mapped into the memory (past its end), or a page
        // that is not accessible. Not ours to hide.
        return false;
    }
    if let Some(k) = &mem.kernel {
        // The module answers a fault with SIGBUS only when its backend failed: on the DRAM
        // backend that cannot happen (a page it cannot allocate is an OOM, not a SIGBUS).
        let why = if k.is_remote() { Poison::KernelFill(addr) } else { Poison::Inconsistent("the kernel module refused a fault on its DRAM store") };
        t.shared.fail(mem, why);
        t.shared.release_with_zero(mem, addr);
        return true;
    }
    let Some(buf) = &t.buf else { return false };
    let mut buf = buf.lock().unwrap_or_else(|e| e.into_inner());
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| t.shared.resolve(mem, addr, write, &mut buf)));
    if outcome.is_err() {
        // The faulting thread cannot be released by anyone else: release it here with a zero
        // page on a poisoned memory, so the call ends in an error.
        t.shared.stats.handler_failures.fetch_add(1, Ordering::Relaxed);
        mem.poison(Poison::Handler("the in-thread fault handler panicked".into()));
        t.shared.fire_interrupt();
        t.shared.release_with_zero(mem, addr);
    }
    true
}

/// Hands a SIGBUS that is not ours to the handler installed before ours, or to the default
/// action (the process ends, as it would have without this handler).
///
/// # Safety
/// The arguments are the kernel's, unchanged.
unsafe fn chain(signum: c_int, info: *mut siginfo_t, context: *mut c_void) {
    let previous = PREVIOUS.get().copied();
    match previous {
        Some(p) if p.sa_sigaction != libc::SIG_DFL && p.sa_sigaction != libc::SIG_IGN => {
            if p.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: an SA_SIGINFO disposition's handler has this signature.
                let f: extern "C" fn(c_int, *mut siginfo_t, *mut c_void) = unsafe { std::mem::transmute(p.sa_sigaction) };
                f(signum, info, context);
            } else {
                // SAFETY: a plain disposition's handler takes the signal number.
                let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(p.sa_sigaction) };
                f(signum);
            }
        }
        _ => {
            // SAFETY: restoring the default disposition and raising the signal again (it stays
            // pending until this handler returns) are async-signal-safe.
            unsafe {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
                libc::raise(libc::SIGBUS);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sigbus_that_is_not_a_paged_memorys_still_ends_the_process() {
        install_handler().expect("install the handler");
        // SAFETY: the child makes raw system calls only, and ends by the signal or `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: plain system calls on memory and descriptors the child owns.
            unsafe {
                let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                libc::setrlimit(libc::RLIMIT_CORE, &none);
                let fd = libc::memfd_create(c"bus".as_ptr(), 0);
                libc::ftruncate(fd, 4096);
                let p = libc::mmap(std::ptr::null_mut(), 8192, libc::PROT_READ, libc::MAP_SHARED, fd, 0).cast::<u8>();
                // The second page lies past the file's end: a genuine SIGBUS, not a missing page.
                let _ = p.add(4096).read_volatile();
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGBUS, "the child was not ended by SIGBUS: status {status:#x}");
    }
}
