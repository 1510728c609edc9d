//! Faasm state: named byte values per user (`/s/USER/KEY` and the `__faasm_*_state` host calls),
//! with the read/write locks guests take around read-modify-write sequences.
//!
//! State lives in the runtime's memory: on one node "push" and "pull" have nothing to move.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, RwLock};

/// Why a state operation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("State key {key} of user {user} does not exist: write it first")]
    Missing { user: String, key: String },
    #[error("State range {offset}+{len} is outside the {total}-byte value {key}")]
    Range { key: String, offset: usize, len: usize, total: usize },
}

#[derive(Debug, Default)]
struct Lock {
    readers: usize,
    writer: bool,
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
    map: RwLock<HashMap<(String, String), Arc<Entry>>>,
}

impl StateStore {
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

    pub fn get(&self, user: &str, key: &str) -> Option<Vec<u8>> {
        let e = self.entry(user, key, false)?;
        let v = e.value.read().unwrap_or_else(|e| e.into_inner()).clone();
        Some(v)
    }

    pub fn set(&self, user: &str, key: &str, value: &[u8]) {
        let e = self.entry(user, key, true).expect("created");
        *e.value.write().unwrap_or_else(|e| e.into_inner()) = value.to_vec();
    }

    /// Writes `data` at `offset` of a value of `total` bytes (created zero-filled, or grown).
    pub fn write_at(&self, user: &str, key: &str, total: usize, offset: usize, data: &[u8]) -> Result<(), StateError> {
        if offset.checked_add(data.len()).is_none_or(|end| end > total) {
            return Err(StateError::Range { key: key.to_string(), offset, len: data.len(), total });
        }
        let e = self.entry(user, key, true).expect("created");
        let mut v = e.value.write().unwrap_or_else(|e| e.into_inner());
        if v.len() < total {
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

    /// Takes the key's guest lock (shared or exclusive), blocking until available.
    pub fn lock(&self, user: &str, key: &str, exclusive: bool) {
        let e = self.entry(user, key, true).expect("created");
        let mut l = e.lock.lock().unwrap_or_else(|e| e.into_inner());
        while l.writer || (exclusive && l.readers > 0) {
            l = e.changed.wait(l).unwrap_or_else(|e| e.into_inner());
        }
        if exclusive {
            l.writer = true;
        } else {
            l.readers += 1;
        }
    }

    /// Releases a lock taken by [`StateStore::lock`]; releasing one not held does nothing.
    pub fn unlock(&self, user: &str, key: &str, exclusive: bool) {
        let Some(e) = self.entry(user, key, false) else { return };
        let mut l = e.lock.lock().unwrap_or_else(|e| e.into_inner());
        if exclusive {
            l.writer = false;
        } else {
            l.readers = l.readers.saturating_sub(1);
        }
        e.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_ranges_and_users() {
        let s = StateStore::default();
        s.set("a", "k", b"hello");
        assert_eq!(s.get("a", "k").unwrap(), b"hello");
        assert_eq!(s.get("b", "k"), None, "users do not share keys");
        s.write_at("a", "big", 8, 4, b"wxyz").unwrap();
        assert_eq!(s.get("a", "big").unwrap(), b"\0\0\0\0wxyz");
        assert_eq!(s.read_at("a", "big", 6, 2).unwrap(), b"yz");
        assert!(matches!(s.read_at("a", "big", 6, 3), Err(StateError::Range { .. })));
        assert!(matches!(s.write_at("a", "big", 8, 6, b"abc"), Err(StateError::Range { .. })));
    }

    #[test]
    fn exclusive_lock_excludes() {
        let s = Arc::new(StateStore::default());
        s.lock("u", "k", true);
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            s2.lock("u", "k", false);
            s2.get("u", "k")
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!t.is_finished(), "a reader got in while a writer held the lock");
        s.set("u", "k", b"v");
        s.unlock("u", "k", true);
        assert_eq!(t.join().unwrap().unwrap(), b"v");
    }
}
