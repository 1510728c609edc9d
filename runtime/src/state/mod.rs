//! Faasm state: named byte values per user (`/s/USER/KEY` and the `__faasm_*_state` host calls),
//! with the read/write locks guests take around read-modify-write sequences.
//!
//! A room of its own: the executor's host interface and the HTTP API both use it, and neither
//! owns it (the platform wires it in).
//!
//! ```text
//!   StateStore ── (user, key) → Entry { value, lock: readers by holder | writer holder }
//!              ── holder → keys it locks        (released all at once when its call ends)
//!                                 replica: the value's shared pages on this node, once mapped
//!              ── user → bytes stored, replicas (per-user limits; per-value limit)
//! ```
//! Locks belong to a *holder* — one call — and are released when that call returns, traps or
//! times out ([`StateStore::release_all`]). A wait for a lock is bounded by the waiting call's
//! deadline.
//!
//! Two tiers, as in Faasm: the entry's value is the global tier (the HTTP API's, and what a push
//! reaches), and a key a call asks a pointer to gets a [`Replica`] — the value's pages on this
//! node, which calls map into their memory. Writes to the store reach both; writes through a
//! mapping reach the replica only, until pushed.

mod replica;

pub use replica::Replica;

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
    /// Most bytes of state one user may hold, values and their replicas together. Default 1 GiB.
    pub max_per_user: usize,
    /// Most keys of one user that have a replica (each holds a file descriptor). Default 256.
    pub max_replicas_per_user: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits { max_value: 256 << 20, max_per_user: 1 << 30, max_replicas_per_user: 256 }
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
    #[error("User {user} has {limit} state keys mapped on this node, the limit: map fewer keys by pointer")]
    TooManyReplicas { user: String, limit: usize },
    #[error("The pages of state key {key} could not be set up on this node: {reason}")]
    Replica { key: String, reason: String },
}

impl StateError {
    fn replica(key: &str, e: std::io::Error) -> StateError {
        StateError::Replica { key: key.to_string(), reason: e.to_string() }
    }
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
    /// The value's pages on this node, once a call mapped it; taken after `value`'s lock.
    replica: Mutex<Option<Arc<Replica>>>,
    lock: Mutex<Lock>,
    changed: Condvar,
}

/// What one user holds.
#[derive(Debug, Default)]
struct Usage {
    bytes: usize,
    replicas: usize,
}

/// All users' state.
#[derive(Debug, Default)]
pub struct StateStore {
    limits: StateLimits,
    map: RwLock<HashMap<(String, String), Arc<Entry>>>,
    /// Bytes of values (and replicas) and replicas per user.
    usage: Mutex<HashMap<String, Usage>>,
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

    fn too_large(&self, key: &str, size: usize) -> Result<(), StateError> {
        if size > self.limits.max_value {
            return Err(StateError::TooLarge { key: key.to_string(), size, limit: self.limits.max_value });
        }
        Ok(())
    }

    /// Accounts bytes of `user` changing from `old` to `new`, or refuses a growth past the limit.
    fn account(&self, user: &str, old: usize, new: usize) -> Result<(), StateError> {
        let mut usage = lock(&self.usage);
        let used = &mut usage.entry(user.to_string()).or_default().bytes;
        let after = *used - old.min(*used) + new;
        if new > old && after > self.limits.max_per_user {
            return Err(StateError::UserFull { user: user.to_string(), size: after, limit: self.limits.max_per_user });
        }
        *used = after;
        Ok(())
    }

    /// Resizes `value` (and its replica, if any) to `len` bytes, accounting both.
    fn resize(&self, user: &str, key: &str, value: &mut Vec<u8>, replica: Option<&Replica>, len: usize) -> Result<(), StateError> {
        self.too_large(key, len)?;
        let old = value.len();
        let pages = |n| replica.map_or(0, |_| replica::capacity_for(n));
        self.account(user, old + pages(old), len + pages(len))?;
        if let Some(r) = replica
            && let Err(e) = r.resize(len)
        {
            let _ = self.account(user, len + pages(len), old + pages(old));
            return Err(StateError::replica(key, e));
        }
        value.resize(len, 0);
        Ok(())
    }

    /// The global value (what the HTTP API returns).
    pub fn get(&self, user: &str, key: &str) -> Option<Vec<u8>> {
        let e = self.entry(user, key, false)?;
        let v = e.value.read().unwrap_or_else(|e| e.into_inner()).clone();
        Some(v)
    }

    /// Bytes of state `user` holds.
    pub fn used(&self, user: &str) -> usize {
        lock(&self.usage).get(user).map_or(0, |u| u.bytes)
    }

    fn replica_of(e: &Entry) -> Option<Arc<Replica>> {
        lock(&e.replica).clone()
    }

    /// Sets the value (and this node's replica).
    pub fn set(&self, user: &str, key: &str, value: &[u8]) -> Result<(), StateError> {
        self.too_large(key, value.len())?;
        let e = self.entry(user, key, true).expect("created");
        let mut v = e.value.write().unwrap_or_else(|e| e.into_inner());
        let replica = Self::replica_of(&e);
        self.resize(user, key, &mut v, replica.as_deref(), value.len())?;
        v.copy_from_slice(value);
        if let Some(r) = replica {
            r.write(0, value);
        }
        Ok(())
    }

    /// Writes `data` at `offset` of a value of `total` bytes (created zero-filled, or grown), and
    /// of this node's replica. The limits are checked before anything is allocated.
    pub fn write_at(&self, user: &str, key: &str, total: usize, offset: usize, data: &[u8]) -> Result<(), StateError> {
        if offset.checked_add(data.len()).is_none_or(|end| end > total) {
            return Err(StateError::Range { key: key.to_string(), offset, len: data.len(), total });
        }
        self.too_large(key, total)?;
        let e = self.entry(user, key, true).expect("created");
        let mut v = e.value.write().unwrap_or_else(|e| e.into_inner());
        let replica = Self::replica_of(&e);
        if v.len() < total {
            self.resize(user, key, &mut v, replica.as_deref(), total)?;
        }
        v[offset..offset + data.len()].copy_from_slice(data);
        if let Some(r) = replica {
            r.write(offset, data);
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset` of the global value.
    pub fn read_at(&self, user: &str, key: &str, offset: usize, len: usize) -> Result<Vec<u8>, StateError> {
        let e = self.entry(user, key, false).ok_or_else(|| StateError::Missing { user: user.into(), key: key.into() })?;
        let v = e.value.read().unwrap_or_else(|e| e.into_inner());
        match offset.checked_add(len) {
            Some(end) if end <= v.len() => Ok(v[offset..end].to_vec()),
            _ => Err(StateError::Range { key: key.to_string(), offset, len, total: v.len() }),
        }
    }

    /// Reads `len` bytes at `offset` (all from `offset` when `None`) as a call on this node sees
    /// them: from the key's replica if it has one (writes through pointers, pushed or not), else
    /// from the value. `Ok(None)`: no such key.
    pub fn read_local(&self, user: &str, key: &str, offset: usize, len: Option<usize>) -> Result<Option<Vec<u8>>, StateError> {
        let Some(e) = self.entry(user, key, false) else {
            return match len {
                Some(len) if offset > 0 || len > 0 => Err(StateError::Missing { user: user.into(), key: key.into() }),
                _ => Ok(None),
            };
        };
        let v = e.value.read().unwrap_or_else(|e| e.into_inner());
        let total = v.len();
        let len = len.unwrap_or(total.saturating_sub(offset));
        if offset.checked_add(len).is_none_or(|end| end > total) {
            return Err(StateError::Range { key: key.to_string(), offset, len, total });
        }
        Ok(Some(match Self::replica_of(&e) {
            Some(r) => r.read(offset, len),
            None => v[offset..offset + len].to_vec(),
        }))
    }

    /// The first `max` bytes of the key as a call on this node sees them (see
    /// [`StateStore::read_local`]) and the value's full size; `None` when there is no such key.
    pub fn read_local_prefix(&self, user: &str, key: &str, max: usize) -> Option<(Vec<u8>, usize)> {
        let e = self.entry(user, key, false)?;
        let v = e.value.read().unwrap_or_else(|e| e.into_inner());
        let n = max.min(v.len());
        let bytes = match Self::replica_of(&e) {
            Some(r) => r.read(0, n),
            None => v[..n].to_vec(),
        };
        Some((bytes, v.len()))
    }

    /// This node's replica of the key, made (from the value, created zero-filled or extended to
    /// `total` bytes) if it has none: the pages calls map. Counted in the user's bytes.
    pub fn replica(&self, user: &str, key: &str, total: usize) -> Result<Arc<Replica>, StateError> {
        self.too_large(key, total)?;
        let e = self.entry(user, key, true).expect("created");
        let mut v = e.value.write().unwrap_or_else(|e| e.into_inner());
        let mut slot = lock(&e.replica);
        if v.len() < total {
            self.resize(user, key, &mut v, slot.as_deref(), total)?;
        }
        if let Some(r) = &*slot {
            return Ok(r.clone());
        }
        {
            let mut usage = lock(&self.usage);
            let u = usage.entry(user.to_string()).or_default();
            if u.replicas >= self.limits.max_replicas_per_user {
                return Err(StateError::TooManyReplicas { user: user.to_string(), limit: self.limits.max_replicas_per_user });
            }
            u.replicas += 1;
        }
        let made = self.account(user, 0, replica::capacity_for(v.len())).and_then(|()| {
            Replica::new(&v, v.len()).map_err(|e| {
                let _ = self.account(user, replica::capacity_for(v.len()), 0);
                StateError::replica(key, e)
            })
        });
        match made {
            Ok(r) => {
                let r = Arc::new(r);
                *slot = Some(r.clone());
                Ok(r)
            }
            Err(e) => {
                lock(&self.usage).entry(user.to_string()).or_default().replicas -= 1;
                Err(e)
            }
        }
    }

    /// Copies the `ranges` (offset, length) of the key's replica to its value (Faasm's push; a
    /// key without a replica has nothing to push). Ranges are clipped to the value.
    pub fn push(&self, user: &str, key: &str, ranges: &[(usize, usize)]) -> Result<(), StateError> {
        let Some(e) = self.entry(user, key, false) else { return Ok(()) };
        let mut v = e.value.write().unwrap_or_else(|e| e.into_inner());
        let Some(r) = Self::replica_of(&e) else { return Ok(()) };
        for &(offset, len) in ranges {
            let bytes = r.read(offset, len);
            let n = bytes.len().min(v.len().saturating_sub(offset));
            v[offset..offset + n].copy_from_slice(&bytes[..n]);
        }
        Ok(())
    }

    /// Copies the key's value over its replica (Faasm's pull: writes not pushed are lost).
    pub fn pull(&self, user: &str, key: &str) -> Result<(), StateError> {
        let Some(e) = self.entry(user, key, false) else { return Ok(()) };
        let v = e.value.read().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = Self::replica_of(&e) {
            r.write(0, &v);
        }
        Ok(())
    }

    /// Appends one element to the append-only value of `key` (counted in the user's bytes).
    pub fn append(&self, user: &str, key: &str, data: &[u8]) -> Result<(), StateError> {
        self.too_large(key, data.len())?;
        let mut appended = lock(&self.appended);
        self.account(user, 0, data.len())?;
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
            let _ = self.account(user, bytes, 0);
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
        let s = StateStore::new(StateLimits { max_value: 16, max_per_user: 24, ..Default::default() });
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
    fn a_replica_is_the_local_tier_pushed_and_pulled_by_range_and_counted() {
        let page = ebb_memnode::PAGE_SIZE;
        let s = StateStore::new(StateLimits { max_value: 4 * page, max_per_user: 6 * page, max_replicas_per_user: 2 });
        s.set("u", "k", b"abcd").unwrap();
        let r = s.replica("u", "k", 8).unwrap();
        assert_eq!(s.get("u", "k").unwrap(), b"abcd\0\0\0\0", "extended to the size asked for");
        assert_eq!(s.used("u"), 8 + page, "the replica's page is counted");
        assert!(Arc::ptr_eq(&r, &s.replica("u", "k", 4).unwrap()), "one replica per key");
        // A write through a mapping reaches the replica only: local reads see it, the global
        // value does not until pushed, and only the pushed ranges go.
        r.write(0, b"WXYZ");
        assert_eq!(s.read_local("u", "k", 0, None).unwrap().unwrap(), b"WXYZ\0\0\0\0");
        assert_eq!(s.get("u", "k").unwrap(), b"abcd\0\0\0\0");
        s.push("u", "k", &[(1, 2), (6, 100)]).unwrap();
        assert_eq!(s.get("u", "k").unwrap(), b"aXYd\0\0\0\0");
        // Writes to the store reach the replica; a pull drops what was not pushed.
        s.write_at("u", "k", 8, 7, b"!").unwrap();
        assert_eq!(r.read(7, 1), b"!");
        s.pull("u", "k").unwrap();
        assert_eq!(r.read(0, 8), b"aXYd\0\0\0!");
        // Growing the value grows (and counts) the replica; shrinking gives pages back.
        s.set("u", "k", &vec![7; 2 * page + 1]).unwrap();
        assert_eq!((r.len(), s.used("u")), (2 * page + 1, 2 * page + 1 + 3 * page));
        assert!(matches!(s.set("u", "k", &vec![7; 4 * page]), Err(StateError::UserFull { .. })), "value and replica count");
        assert_eq!(r.len(), 2 * page + 1, "a refused write changes nothing");
        s.set("u", "k", b"x").unwrap();
        assert_eq!((r.read(0, 10), s.used("u")), (b"x".to_vec(), 1 + page));
        // Replicas per user are bounded; other users are not affected.
        s.replica("u", "k2", 1).unwrap();
        assert_eq!(s.replica("u", "k3", 1).unwrap_err(), StateError::TooManyReplicas { user: "u".into(), limit: 2 });
        s.replica("v", "k3", 1).unwrap();
        assert_eq!(s.read_local("u", "none", 0, None), Ok(None));
        assert!(matches!(s.read_local("u", "k", 0, Some(2)), Err(StateError::Range { .. })));
    }

    #[test]
    fn limits_are_checked_before_allocating() {
        let s = StateStore::new(StateLimits { max_value: 1 << 20, max_per_user: 3 << 20, ..Default::default() });
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
