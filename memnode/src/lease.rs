//! Sessions and their leases: how the memnode knows which regions still have a live client.
//!
//! Every region belongs to a session of its identity (an [`Owner`]). A session is *held* by one
//! client instance (a random nonce chosen by the client) and *renewed* by every request on a
//! connection bound to it, and by `Renew` while the client is idle. Its life:
//!
//! ```text
//!   claim(nonce) ──► live ──(no renewal for `lease`)──► grace ──(`grace` more)──► regions freed
//!                     ▲  └─ renew ◄─┘                     │
//!                     └──── renew by the holder, or claim by a new nonce (takeover) ┘
//! ```
//! A client that restarts with the same identity and session name (a stable identity) claims the
//! session again once the old holder's lease has lapsed, and frees (or keeps) what it left. A
//! second live client claiming a session held by another is refused. The identity's default
//! session (the empty name, used by connections that send no `Session`) has no holder: any of its
//! connections renews it.
//!
//! Renewal is one relaxed atomic store per request; the table's mutex is taken only to bind a
//! connection and by the reaper.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::Owner;

/// How long sessions live unrenewed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// A session not renewed for this long ends (its holder is presumed dead). Default 10 s.
    pub lease: Duration,
    /// An ended session's regions are kept this much longer (for its client to come back, or a
    /// restarted one to reclaim them), then freed. Default 60 s.
    pub grace: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig { lease: Duration::from_secs(10), grace: Duration::from_secs(60) }
    }
}

/// The holder value of a session that ended: nothing bound to it may renew it any more.
const ENDED: u64 = u64::MAX;

/// One session, shared by the table and the connections bound to it.
#[derive(Debug)]
pub struct Session {
    /// The holding client's nonce (0 for the default session).
    holder: AtomicU64,
    /// Milliseconds since the table's epoch at the last renewal.
    renewed_ms: AtomicU64,
    connections: AtomicU32,
}

/// Why a connection may not use a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("session is held by another client that renewed it {renewed_ms_ago} ms ago: give each client its own session name, or wait for a crashed one's lease to lapse")]
    Held { renewed_ms_ago: u64 },
    #[error("this client no longer holds the session (its lease lapsed and it was taken over or freed): reconnect")]
    Lost,
}

/// What a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The session existed under another (lapsed) holder: its regions are leftovers.
    pub taken_over: bool,
}

/// One row of [`Leases::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub owner: Owner,
    pub renewed_ago: Duration,
    pub connections: u32,
    pub live: bool,
}

/// The session table of a memnode.
#[derive(Debug)]
pub struct Leases {
    config: LeaseConfig,
    epoch: Instant,
    sessions: Mutex<HashMap<Owner, Arc<Session>>>,
}

/// A connection's binding to its session; renews it, and unbinds on drop.
#[derive(Debug)]
pub struct Binding {
    session: Arc<Session>,
    nonce: u64,
    epoch: Instant,
}

impl Binding {
    /// Renews the session; `Err(Lost)` once this client no longer holds it.
    pub fn renew(&self) -> Result<(), LeaseError> {
        self.renew_at(ms_since(self.epoch))
    }

    fn renew_at(&self, now: u64) -> Result<(), LeaseError> {
        if self.session.holder.load(Ordering::Acquire) != self.nonce {
            return Err(LeaseError::Lost);
        }
        self.session.renewed_ms.store(now, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        self.session.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

fn ms_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Leases {
    pub fn new(config: LeaseConfig) -> Leases {
        Leases { config, epoch: Instant::now(), sessions: Mutex::new(HashMap::new()) }
    }

    pub fn config(&self) -> LeaseConfig {
        self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Owner, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bind(&self, session: &Arc<Session>, nonce: u64, now: u64) -> Binding {
        session.connections.fetch_add(1, Ordering::Relaxed);
        session.renewed_ms.store(now, Ordering::Relaxed);
        Binding { session: session.clone(), nonce, epoch: self.epoch }
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.config.lease.as_millis()).unwrap_or(u64::MAX)
    }

    /// Binds a connection to `owner`'s session. With `claim`, `nonce` takes the session unless
    /// another nonce holds it and renewed it within the lease; without, `nonce` must hold it
    /// already. Nonce 0 binds to the default session (empty name), which has no holder.
    pub fn bind_session(&self, owner: &Owner, nonce: u64, claim: bool) -> Result<(Binding, Claim), LeaseError> {
        self.bind_session_at(owner, nonce, claim, ms_since(self.epoch))
    }

    fn bind_session_at(&self, owner: &Owner, nonce: u64, claim: bool, now: u64) -> Result<(Binding, Claim), LeaseError> {
        let mut sessions = self.lock();
        let fresh = || Arc::new(Session { holder: AtomicU64::new(nonce), renewed_ms: AtomicU64::new(now), connections: AtomicU32::new(0) });
        let session = sessions.entry(owner.clone()).or_insert_with(fresh).clone();
        let holder = session.holder.load(Ordering::Acquire);
        let mut taken_over = false;
        if holder != nonce {
            let renewed_ms_ago = now.saturating_sub(session.renewed_ms.load(Ordering::Relaxed));
            if !claim {
                return Err(LeaseError::Lost);
            }
            if holder != ENDED && renewed_ms_ago < self.lease_ms() {
                return Err(LeaseError::Held { renewed_ms_ago });
            }
            session.holder.store(nonce, Ordering::Release);
            taken_over = true;
        }
        Ok((self.bind(&session, nonce, now), Claim { taken_over }))
    }

    /// Ends `owner`'s session now (its holder said so, or it expired): connections still bound to
    /// it can no longer renew it.
    pub fn end(&self, owner: &Owner) {
        if let Some(s) = self.lock().remove(owner) {
            s.holder.store(ENDED, Ordering::Release);
        }
    }

    /// Sessions whose lease and grace period have both passed, removed from the table (their
    /// regions are the caller's to free).
    pub fn expired(&self) -> Vec<Owner> {
        self.expired_at(ms_since(self.epoch))
    }

    fn expired_at(&self, now: u64) -> Vec<Owner> {
        let limit = self.lease_ms().saturating_add(u64::try_from(self.config.grace.as_millis()).unwrap_or(u64::MAX));
        let mut sessions = self.lock();
        let gone: Vec<Owner> = sessions
            .iter()
            .filter(|(_, s)| now.saturating_sub(s.renewed_ms.load(Ordering::Relaxed)) >= limit)
            .map(|(o, _)| o.clone())
            .collect();
        for o in &gone {
            if let Some(s) = sessions.remove(o) {
                s.holder.store(ENDED, Ordering::Release);
            }
        }
        gone
    }

    /// Every session (or those `keep` accepts), for the usage view.
    pub fn list(&self, keep: impl Fn(&Owner) -> bool) -> Vec<SessionInfo> {
        let now = ms_since(self.epoch);
        self.lock()
            .iter()
            .filter(|(o, _)| keep(o))
            .map(|(o, s)| {
                let ago = now.saturating_sub(s.renewed_ms.load(Ordering::Relaxed));
                SessionInfo {
                    owner: o.clone(),
                    renewed_ago: Duration::from_millis(ago),
                    connections: s.connections.load(Ordering::Relaxed),
                    live: ago < self.lease_ms(),
                }
            })
            .collect()
    }

    /// Whether `owner` has a session in the table (live or in grace).
    pub fn has(&self, owner: &Owner) -> bool {
        self.lock().contains_key(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Identity;

    fn owner(name: &str) -> Owner {
        Owner::new(Identity::Tenant("t".into()), name.as_bytes())
    }

    #[test]
    fn claim_renew_takeover_and_expiry() {
        // Times are milliseconds since the table's epoch: lease 40, grace 40.
        let leases = Leases::new(LeaseConfig { lease: Duration::from_millis(40), grace: Duration::from_millis(40) });
        let o = owner("rt");
        let (a, claim) = leases.bind_session_at(&o, 7, true, 0).unwrap();
        assert!(!claim.taken_over);
        a.renew_at(10).unwrap();
        // Another client may neither claim a live session nor attach to it.
        assert_eq!(leases.bind_session_at(&o, 8, true, 30).unwrap_err(), LeaseError::Held { renewed_ms_ago: 20 });
        assert_eq!(leases.bind_session_at(&o, 8, false, 30).unwrap_err(), LeaseError::Lost);
        // The holder attaches more connections.
        let (_a2, _) = leases.bind_session_at(&o, 7, false, 30).unwrap();
        // Once the holder stops renewing, a new client takes over and the old one is lost.
        assert!(leases.expired_at(75).is_empty(), "in grace, not expired");
        let (b, claim) = leases.bind_session_at(&o, 8, true, 75).unwrap();
        assert!(claim.taken_over);
        assert_eq!(a.renew_at(76).unwrap_err(), LeaseError::Lost);
        b.renew_at(80).unwrap();
        drop(b);
        // Renewed last at 80: expired once lease and grace (80) have passed since.
        assert!(leases.expired_at(159).is_empty());
        assert_eq!(leases.expired_at(160), vec![o.clone()]);
        assert!(!leases.has(&o));
    }

    #[test]
    fn ended_sessions_cannot_be_renewed() {
        let leases = Leases::new(LeaseConfig::default());
        let o = owner("x");
        let (a, _) = leases.bind_session(&o, 1, true).unwrap();
        leases.end(&o);
        assert_eq!(a.renew().unwrap_err(), LeaseError::Lost);
        let (_b, claim) = leases.bind_session(&o, 1, true).unwrap();
        assert!(!claim.taken_over, "a new session after the end");
    }
}
