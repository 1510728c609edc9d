//! The memnode's side of RDMA: one protection domain per client identity, one memory region per
//! store region (registered in its owner's domain on first request), one queue pair per client
//! connection that asked for one.
//!
//! Isolation on the fabric: a queue pair can touch only memory regions of its own protection
//! domain, so a client reaches only regions its identity owns, whatever key it guesses; a freed
//! or resized region's memory region is deregistered first, so its key stops working.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::verbs::{Context, Mr, Pd, Qp, RdmaError};
use crate::proto::{QpInfo, RegionKey};
use crate::store::{Identity, Owner, RegionId, Store, StoreError};

/// Why an RDMA control request failed.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rdma(#[from] RdmaError),
}

/// The memnode's RDMA device and what it has registered.
#[derive(Debug)]
pub struct Fabric {
    ctx: Arc<Context>,
    domains: Mutex<HashMap<Identity, Arc<Pd>>>,
    /// Registered regions. Held while a region is registered, freed or resized, so that a
    /// registration never covers memory about to move.
    keys: Mutex<HashMap<RegionId, Mr>>,
}

impl Fabric {
    /// Opens RDMA device `name` (e.g. `mlx4_0`, `rxe0`).
    pub fn open(name: &str) -> Result<Fabric, RdmaError> {
        Ok(Fabric { ctx: Context::open(Some(name))?, domains: Mutex::new(HashMap::new()), keys: Mutex::new(HashMap::new()) })
    }

    pub fn device(&self) -> &str {
        &self.ctx.name
    }

    fn domain(&self, identity: &Identity) -> Result<Arc<Pd>, RdmaError> {
        let mut domains = self.domains.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pd) = domains.get(identity) {
            return Ok(pd.clone());
        }
        let pd = Pd::new(&self.ctx)?;
        domains.insert(identity.clone(), pd.clone());
        Ok(pd)
    }

    /// A queue pair for `identity` connected to the client's `peer`; the caller keeps it for as
    /// long as the client's control connection lives.
    pub fn connect(&self, identity: &Identity, peer: &QpInfo) -> Result<(Qp, QpInfo), RdmaError> {
        let qp = Qp::new(&self.domain(identity)?)?;
        // The memnode's queue pair only answers (one-sided operations): its own ACK timeout
        // never fires; the client's sets the pace.
        qp.connect(peer, std::time::Duration::from_millis(250))?;
        let info = qp.info();
        Ok((qp, info))
    }

    /// The address and key of `region`'s memory, registering it in its owner's domain if needed
    /// (which counts the region at its full size from then on: see [`Store::pin`]).
    pub fn region_key(&self, store: &Store, owner: &Owner, region: RegionId) -> Result<RegionKey, FabricError> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let (addr, len) = store.pin(owner, region)?;
        if let Some(mr) = keys.get(&region) {
            return Ok(key(mr));
        }
        let pd = self.domain(&owner.identity)?;
        // SAFETY: the region's mapping stays in place until the region is freed or resized, and
        // both first remove (deregister) this entry under the same lock (`change_region`).
        let mr = unsafe { Mr::register(&pd, addr, len, true)? };
        let k = key(&mr);
        keys.insert(region, mr);
        Ok(k)
    }

    /// Drops `identity`'s protection domain (the caller knows it has no regions and no
    /// connections left); it is deallocated once the last queue pair or registration using it goes.
    pub fn forget_identity(&self, identity: &Identity) {
        self.domains.lock().unwrap_or_else(|e| e.into_inner()).remove(identity);
    }

    /// Protection domains held now (one per identity in use).
    pub fn domains(&self) -> usize {
        self.domains.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Runs a free or resize of `region` with its registration removed first.
    pub fn change_region<T>(&self, region: RegionId, change: impl FnOnce() -> T) -> T {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        drop(keys.remove(&region));
        change()
    }
}

fn key(mr: &Mr) -> RegionKey {
    RegionKey { addr: mr.addr().into(), len: (mr.len() as u64).into(), rkey: mr.rkey().into(), reserved: 0.into() }
}
