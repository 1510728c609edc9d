//! Supervised background threads: a panic in one turn of a long-lived loop is logged and counted,
//! and the loop goes on — a platform whose epoch ticker died would never time a call out again,
//! one whose policy thread died would never free memory again.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Spawns thread `name` running `turn` until it returns false. A turn that panics is counted in
/// `restarts` and the loop resumes after a short pause.
pub fn spawn(name: &str, restarts: Arc<AtomicU64>, mut turn: impl FnMut() -> bool + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    let label = name.to_string();
    std::thread::Builder::new().name(label.clone()).spawn(move || {
        loop {
            match std::panic::catch_unwind(AssertUnwindSafe(&mut turn)) {
                Ok(true) => {}
                Ok(false) => return,
                Err(panic) => {
                    let msg = panic.downcast_ref::<&str>().map(|s| (*s).to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
                    restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("thread {label} panicked ({}); restarting it", msg.unwrap_or_else(|| "no message".into()));
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_turn_restarts_the_loop() {
        let restarts = Arc::new(AtomicU64::new(0));
        let turns = Arc::new(AtomicU64::new(0));
        let t = turns.clone();
        let handle = spawn("test-supervised", restarts.clone(), move || {
            let n = t.fetch_add(1, Ordering::Relaxed);
            assert!(n != 1 && n != 3, "injected panic in turn {n}");
            n < 5
        })
        .unwrap();
        handle.join().unwrap();
        assert_eq!(turns.load(Ordering::Relaxed), 6, "every turn ran, panics included");
        assert_eq!(restarts.load(Ordering::Relaxed), 2);
    }
}
