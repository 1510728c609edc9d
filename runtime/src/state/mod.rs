//! Faasm state: named byte values per user (`/s/USER/KEY` and the `__faasm_*_state` host calls),
//! with the read/write locks guests take around read-modify-write sequences.
//!
//! A room of its own: the executor's host interface and the HTTP API both use it, and neither
//! owns it (the platform wires it in).
//!
//! ```text
//!   StateStore ── (user, key) → Entry { value, lock: readers by holder | writer holder }
//!              ── holder → keys it locks        (released all at once when its call ends)
//!              ── user → bytes stored           (per-user limit; per-value limit)
//! ```
//! Locks belong to a *holder* — one call — and are released when that call returns, traps or
//! times out ([`StateStore::release_all`]). A wait for a lock is bounded by the waiting call's
//! deadline. State lives in the runtime's memory: on one node "push" and "pull" have nothing to
//! move.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Instant;

/// A value's name: (user, key).
type UserKey = (String, String);

/// Who holds a lock: one call (its call id, or an id the platform gives a call without one).
pub type Holder = u64;

/// How much state may be kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateLimits {
    /// Largest value of one key, in bytes. Default 256 MiB.
    pub max_value: usize,
    /// Most bytes of state one user may hold. Default 1 GiB.
    pub max_per_user: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits { max_value: 256 << 20, max_per_user: 1 << 30 }
    }
}

/// Why a state operation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("State key {key} of user {user} does not exist: write it first")]
    Missing { user: String, key: String },
    #[error("State range {offset}+{len} is outside the {total}-byte value {key}")]
    Range { key: String, offset: usize, len: usize, total: usize },
    #[error("State value {key} of {size} bytes is over the {limit}-byte limit per value")]
    TooLarge { key: String, size: usize, limit: usize },
    #[error("User {user} would hold {size} bytes of state, over the {limit}-byte limit per user: delete keys first")]
    UserFull { user: String, size: usize, limit: usize },
    #[error("Waiting for the lock on state key {key} ran past the call's deadline")]
    LockTimeout { key: String },
    #[error("Appended state {key} has {have} elements, fewer than the {want} asked for")]
    FewAppended { key: String, have: usize, want: usize },
}

#[derive(Debug, Default)]
struct Lock {
    readers: HashMap<Holder, u32>,
    writer: Option<(Holder, u32)>,
}

impl Lock {
    fn free_for(&self, holder: Holder, exclusive: bool) -> bool {
        let others_read = self.readers.keys().any(|&h| h != holder);
        match self.writer {
            Some((h, _)) if h != holder => false,
            _ => !exclusive || !others_read,
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    value: RwLock<Vec<u8>>,
    lock: Mutex<Lock>,
    changed: Condvar,
}

/// All users' state.
#[derive(Debug, Default)]
pub struct StateStore {
    limits: StateLimits,
    map: RwLock<HashMap<(String, String), Arc<Entry>>>,
    /// Bytes of values per user.
    usage: Mutex<HashMap<String, usize>>,
    /// Append-only values (Faasm's appended state): a list of elements per key, apart from the
    /// key's value.
    appended: Mutex<HashMap<UserKey, Vec<Vec<u8>>>>,
    /// Keys each holder has locked (to release them when its call ends).
    held: Mutex<HashMap<Holder, Vec<(String, String)>>>,
    /// Calls waiting for a lock now (for tests and metrics).
    waiting: std::sync::atomic::AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StateStore {
    pub fn new(limits: StateLimits) -> StateStore {
        StateStore { limits, ..Default::default() }
    }

    pub fn limits(&self) -> StateLimits {
        self.limits
    }

    fn entry(&self, user: &str, key: &str, create: bool) -> Option<Arc<Entry>> {
        let k = (user.to_string(), key.to_string());
        if let Some(e) = self.map.read().unwrap_or_else(|e| e.into_inner()).get(&k) {
            return Some(e.clone());
        }
        if !create {
            return None;
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        Some(map.entry(k).or_default().clone())
    }

    /// Accounts a value of `user` changing from `old` to `new` bytes, or refuses it.
    fn resize_usage(&self, user: &str, key: &str, old: usize, new: usize) -> Result<(), StateError> {
        if new > self.limits.max_value {
            return Err(StateError::TooLarge { key: key.to_string(), size: new, limit: self.limits.max_value });
        }
        let mut usage = lock(&self.usage);
        let used = usage.entry(user.to_string()).or_default();
        let after = *used - old.min(*used) + new;
        if new > old && after > self.limits.max_per_user {
            return Err(StateError::UserFull { user: user.to_string(), size: after, limit: self.limits.max_per_user });
        }
        *used = after;
        Ok(())
    }

    pub fn get(&self, user: &str, key: &str) -> Option<Vec<u8>> {
        let e = self.entry(user, key, false)?;
        let v = e.value.read().unwrap_or_else(|e| e.into_inner()).clone();
        Some(v)
    }

    /// Bytes of state `user` holds.
    pub fn used(&self, user: &str) -> usize {
        lock(&self.usage).get(user).copied().unwrap_or(0)
    }

    pub fn set(&self, user: &str, key: &str, value: &[u8]) -> Result<(), StateError> {
        if value.len() > self.limits.max_value {
            return Err(StateError::TooLarge { key: key.to_string(), size: value.len(), limit: self.limits.max_value });
        }
        let e = self.entry(user, key, true).expect("created");
        let mut v = e.value.write().unwrap_or_else(|e| e.into_inner());
        self.resize_usage(user, key, v.len(), value.len())?;
        *v = value.to_vec();
        Ok(())
    }

    /// Writes `data` at `offset` of a value of `total` bytes (created zero-filled, or grown). The
    /// limits are checked before anything is allocated.
    pub fn write_at(&self, user: &str, key: &str, total: usize, offset: usize, data: &[u8]) -> Result<(), StateError> {
        if offset.checked_add(data.len()).is_none_or(|end| end > total) {
            return Err(StateError::Range { key: key.to_string(), offset, len: data.len(), total });
        }
        if total > self.limits.max_value {
            return Err(StateError::TooLarge { key: key.to_string(), size: total, limit: self.limits.max_value });
        }
        let e = self.entry(user, key, true).expect("created");
        let mut v = e.value.write().unwrap_or_else(|e| e.into_inner());
        if v.len() < total {
            self.resize_usage(user, key, v.len(), total)?;
            v.resize(total, 0);
        }
        v[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }

    /// Reads `len` bytes at `offset`.
    pub fn read_at(&self, user: &str, key: &str, offset: usize, len: usize) -> Result<Vec<u8>, StateError> {
        let e = self.entry(user, key, false).ok_or_else(|| StateError::Missing { user: user.into(), key: key.into() })?;
        let v = e.value.read().unwrap_or_else(|e| e.into_inner());
        match offset.checked_add(len) {
            Some(end) if end <= v.len() => Ok(v[offset..end].to_vec()),
            _ => Err(StateError::Range { key: key.to_string(), offset, len, total: v.len() }),
        }
    }

    /// Appends one element to the append-only value of `key` (counted in the user's bytes).
    pub fn append(&self, user: &str, key: &str, data: &[u8]) -> Result<(), StateError> {
        let mut appended = lock(&self.appended);
        self.resize_usage(user, key, 0, data.len())?;
        appended.entry((user.to_string(), key.to_string())).or_default().push(data.to_vec());
        Ok(())
    }

    /// The first `n` appended elements of `key`, one after another.
    pub fn read_appended(&self, user: &str, key: &str, n: usize) -> Result<Vec<u8>, StateError> {
        let appended = lock(&self.appended);
        let elems = appended.get(&(user.to_string(), key.to_string())).map_or(&[][..], Vec::as_slice);
        if elems.len() < n {
            return Err(StateError::FewAppended { key: key.to_string(), have: elems.len(), want: n });
        }
        Ok(elems[..n].concat())
    }

    /// Drops every appended element of `key`.
    pub fn clear_appended(&self, user: &str, key: &str) {
        let removed = lock(&self.appended).remove(&(user.to_string(), key.to_string()));
        let bytes: usize = removed.iter().flatten().map(Vec::len).sum();
        if bytes > 0 {
            let mut usage = lock(&self.usage);
            if let Some(used) = usage.get_mut(user) {
                *used = used.saturating_sub(bytes);
            }
        }
    }

    /// Takes the key's guest lock (shared or exclusive) for `holder`, waiting at most until
    /// `deadline`. A holder may take a lock it already holds again (it is counted).
    pub fn lock(&self, user: &str, key: &str, exclusive: bool, holder: Holder, deadline: Option<Instant>) -> Result<(), StateError> {
        let e = self.entry(user, key, true).expect("created");
        let mut l = lock(&e.lock);
        if !l.free_for(holder, exclusive) {
            self.waiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let timed_out = loop {
                if l.free_for(holder, exclusive) {
                    break false;
                }
                match deadline {
                    None => l = e.changed.wait(l).unwrap_or_else(|e| e.into_inner()),
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break true;
                        }
                        l = e.changed.wait_timeout(l, left).unwrap_or_else(|e| e.into_inner()).0;
                    }
                }
            };
            self.waiting.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            if timed_out {
                return Err(StateError::LockTimeout { key: key.to_string() });
            }
        }
        if exclusive {
            let n = l.writer.map_or(0, |(_, n)| n);
            l.writer = Some((holder, n + 1));
        } else {
            *l.readers.entry(holder).or_default() += 1;
        }
        drop(l);
        lock(&self.held).entry(holder).or_default().push((user.to_string(), key.to_string()));
        Ok(())
    }

    /// Releases one hold of a lock `holder` took; releasing what it does not hold does nothing
    /// (a guest cannot release another call's lock).
    pub fn unlock(&self, user: &str, key: &str, exclusive: bool, holder: Holder) {
        let Some(e) = self.entry(user, key, false) else { return };
        let mut l = lock(&e.lock);
        let released = if exclusive {
            match &mut l.writer {
                Some((h, n)) if *h == holder => {
                    *n -= 1;
                    if *n == 0 {
                        l.writer = None;
                    }
                    true
                }
                _ => false,
            }
        } else {
            match l.readers.get_mut(&holder) {
                Some(n) => {
                    *n -= 1;
                    if *n == 0 {
                        l.readers.remove(&holder);
                    }
                    true
                }
                None => false,
            }
        };
        drop(l);
        if released {
            let mut held = lock(&self.held);
            if let Some(keys) = held.get_mut(&holder)
                && let Some(i) = keys.iter().position(|(u, k)| u == user && k == key)
            {
                keys.swap_remove(i);
                if keys.is_empty() {
                    held.remove(&holder);
                }
            }
            e.changed.notify_all();
        }
    }

    /// Releases every lock `holder` still holds (its call returned, trapped or timed out).
    /// Returns how many holds were released.
    pub fn release_all(&self, holder: Holder) -> usize {
        let keys = lock(&self.held).remove(&holder).unwrap_or_default();
        for (user, key) in &keys {
            let Some(e) = self.entry(user, key, false) else { continue };
            let mut l = lock(&e.lock);
            l.readers.remove(&holder);
            if l.writer.is_some_and(|(h, _)| h == holder) {
                l.writer = None;
            }
            drop(l);
            e.changed.notify_all();
        }
        keys.len()
    }

    /// Calls waiting for a lock now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn appended_elements_are_kept_in_order_apart_from_the_value_and_counted() {
        let s = StateStore::new(StateLimits { max_value: 16, max_per_user: 24 });
        s.set("a", "k", b"value").unwrap();
        for i in 0u32..4 {
            s.append("a", "k", &i.to_le_bytes()).unwrap();
        }
        assert_eq!(s.read_appended("a", "k", 2).unwrap(), [0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(s.read_appended("a", "k", 0).unwrap(), b"");
        assert_eq!(s.read_appended("a", "k", 5), Err(StateError::FewAppended { key: "k".into(), have: 4, want: 5 }));
        assert_eq!(s.read_appended("b", "k", 1), Err(StateError::FewAppended { key: "k".into(), have: 0, want: 1 }), "users do not share");
        assert_eq!(s.get("a", "k").unwrap(), b"value", "the value is untouched");
        assert_eq!(s.used("a"), 5 + 16);
        assert!(matches!(s.append("a", "k", b"12345678"), Err(StateError::UserFull { .. })));
        s.clear_appended("a", "k");
        assert_eq!(s.used("a"), 5);
        assert_eq!(s.read_appended("a", "k", 1), Err(StateError::FewAppended { key: "k".into(), have: 0, want: 1 }));
        s.append("a", "k", b"12345678").unwrap();
    }

    #[test]
    fn values_ranges_and_users() {
        let s = StateStore::default();
        s.set("a", "k", b"hello").unwrap();
        assert_eq!(s.get("a", "k").unwrap(), b"hello");
        assert_eq!(s.get("b", "k"), None, "users do not share keys");
        s.write_at("a", "big", 8, 4, b"wxyz").unwrap();
        assert_eq!(s.get("a", "big").unwrap(), b"\0\0\0\0wxyz");
        assert_eq!(s.read_at("a", "big", 6, 2).unwrap(), b"yz");
        assert!(matches!(s.read_at("a", "big", 6, 3), Err(StateError::Range { .. })));
        assert!(matches!(s.write_at("a", "big", 8, 6, b"abc"), Err(StateError::Range { .. })));
        assert_eq!(s.used("a"), 13);
    }

    #[test]
    fn limits_are_checked_before_allocating() {
        let s = StateStore::new(StateLimits { max_value: 1 << 20, max_per_user: 3 << 20 });
        // A 4 GiB value is refused without allocating it.
        let err = s.write_at("a", "huge", u32::MAX as usize, 0, b"x").unwrap_err();
        assert!(matches!(err, StateError::TooLarge { .. }), "{err}");
        s.set("a", "k1", &vec![1; 1 << 20]).unwrap();
        s.set("a", "k2", &vec![1; 1 << 20]).unwrap();
        s.write_at("a", "k3", 1 << 20, 0, b"x").unwrap();
        let err = s.set("a", "k4", b"x").unwrap_err();
        assert!(matches!(err, StateError::UserFull { .. }), "{err}");
        // Other users are unaffected; shrinking a value gives room back.
        s.set("b", "k", &vec![1; 1 << 20]).unwrap();
        s.set("a", "k1", b"small").unwrap();
        s.set("a", "k4", b"x").unwrap();
    }

    #[test]
    fn exclusive_lock_excludes_and_waits_are_bounded() {
        let s = Arc::new(StateStore::default());
        s.lock("u", "k", true, 1, None).unwrap();
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            s2.lock("u", "k", false, 2, None).unwrap();
            s2.get("u", "k")
        });
        // The reader is waiting (a condition, not a sleep), and has not got in.
        let until = Instant::now() + Duration::from_secs(10);
        while s.waiting() == 0 {
            assert!(Instant::now() < until, "the reader never waited");
            std::thread::yield_now();
        }
        assert!(!t.is_finished(), "a reader got in while a writer held the lock");
        // Another call's unlock does not release holder 1's lock.
        s.unlock("u", "k", true, 3);
        assert!(!t.is_finished());
        // A waiter with a deadline gives up at it.
        let err = s.lock("u", "k", true, 4, Some(Instant::now() + Duration::from_millis(20))).unwrap_err();
        assert_eq!(err, StateError::LockTimeout { key: "k".into() });
        s.set("u", "k", b"v").unwrap();
        s.unlock("u", "k", true, 1);
        assert_eq!(t.join().unwrap().unwrap(), b"v");
    }

    #[test]
    fn a_holders_locks_go_when_its_call_ends() {
        let s = StateStore::default();
        s.lock("u", "a", true, 7, None).unwrap();
        s.lock("u", "b", false, 7, None).unwrap();
        s.lock("u", "b", false, 8, None).unwrap();
        assert_eq!(s.release_all(7), 2);
        // Holder 7's write lock is gone; holder 8's read lock stays.
        s.lock("u", "a", true, 9, Some(Instant::now())).unwrap();
        assert!(s.lock("u", "b", true, 9, Some(Instant::now())).is_err());
        s.unlock("u", "b", false, 8);
        s.lock("u", "b", true, 9, Some(Instant::now())).unwrap();
    }
}
