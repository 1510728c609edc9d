//! The page store: a pool of regions, each owned by one client session of one identity.
//!
//! A region is an anonymous private mapping sized to the region, so pages that were never written
//! cost nothing and read back as zeros. Capacity and per-identity quotas count what is **stored** —
//! pages written at least once — not what was declared: a module that declares a 4 GiB memory and
//! touches 1 MiB costs 1 MiB here. A region registered for one-sided RDMA is the exception: its
//! clients can write any page without the server seeing it (and registration pins the memory), so
//! from its registration on it counts at its full size.
//!
//! ```text
//!   Store ── Mutex<regions: id → Arc<Region>>           ids are never reused
//!         ── Mutex<accounts: identity → Account>         stored pages, regions, declared bytes
//!              Region { owner: Owner, account, RwLock<RegionMem { map, stored bitset, pinned }> }
//!   Owner = (Identity, session name)                     Identity = tenant name | exact secret bytes
//! ```
//! Lock order: a region's memory lock, then the accounts lock; the regions lock is never held while
//! either of the others is taken.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use memmap2::{MmapMut, RemapOptions};

use crate::proto::{PAGE_SIZE, PAGE_SIZE_U64};

/// Who a region belongs to: the tenant of a token from the token file, or (without a token file) the
/// client's own secret — its exact bytes, so two different secrets are always two identities.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Tenant(String),
    Secret(Vec<u8>),
}

/// A process-local, keyed fingerprint of a secret: stable for the life of this process, useless to
/// anyone who does not hold the secret (no preimage can be searched for outside this process).
fn fingerprint(bytes: &[u8]) -> u32 {
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    let h = KEY.get_or_init(std::collections::hash_map::RandomState::new).hash_one(bytes);
    u32::try_from(h >> 32).expect("32 bits")
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Tenant(name) => write!(f, "tenant {name}"),
            // Never the secret itself.
            Identity::Secret(bytes) => write!(f, "secret #{:08x}", fingerprint(bytes)),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({self})")
    }
}

/// The owner of a region: an identity and the name of one of its sessions (a client's lease; the
/// empty name is the identity's default session).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub identity: Identity,
    pub session: Vec<u8>,
}

impl Owner {
    pub fn new(identity: Identity, session: &[u8]) -> Owner {
        Owner { identity, session: session.to_vec() }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.session.is_empty() {
            write!(f, "{}", self.identity)
        } else {
            write!(f, "{}, session {}", self.identity, String::from_utf8_lossy(&self.session).escape_debug())
        }
    }
}

/// A region id. Ids are handed out in increasing order and never reused, so a stale id can never
/// reach a later region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(pub u64);

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a store operation failed. Messages name only the asking identity's own usage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Region {0} does not exist or belongs to another client")]
    NoSuchRegion(RegionId),
    #[error("The memnode has no room for {pages} more pages: free regions, or ask the operator for a larger --capacity")]
    OutOfCapacity { pages: u64 },
    #[error("Storing {pages} more pages would exceed this identity's quota ({used} of {quota} bytes stored): free regions first")]
    QuotaExceeded { pages: u64, used: u64, quota: u64 },
    #[error("A region of {size} bytes is larger than this memnode's {capacity}-byte capacity")]
    TooLarge { size: u64, capacity: u64 },
    #[error("This identity already declares {declared} bytes in {regions} regions, the most allowed ({limit} bytes, {max_regions} regions): free regions first")]
    TooManyRegions { declared: u64, regions: u64, limit: u64, max_regions: u64 },
    #[error("Region {region} already has {max} tickets (or holders of one) out: revoke some first")]
    TooManyGrants { region: RegionId, max: usize },
    #[error("Size {size:#x} is not a non-zero multiple of the {PAGE_SIZE}-byte page")]
    BadSize { size: u64 },
    #[error("Page {page} is outside region {region} ({pages} pages)")]
    OutOfRange { region: RegionId, page: u64, pages: u64 },
    #[error("Failed to map {size} bytes for a region")]
    Map { size: u64, #[source] source: std::io::Error },
}

impl StoreError {
    /// The wire code a client is told.
    pub fn code(&self) -> crate::proto::ErrorCode {
        use crate::proto::ErrorCode;
        match self {
            StoreError::NoSuchRegion(_) => ErrorCode::NoSuchRegion,
            StoreError::OutOfCapacity { .. } | StoreError::TooLarge { .. } | StoreError::Map { .. } => ErrorCode::OutOfCapacity,
            StoreError::QuotaExceeded { .. } | StoreError::TooManyRegions { .. } | StoreError::TooManyGrants { .. } => {
                ErrorCode::QuotaExceeded
            }
            StoreError::BadSize { .. } | StoreError::OutOfRange { .. } => ErrorCode::OutOfRange,
        }
    }
}

/// How large a store is and how it is shared.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Bytes of pages the store holds at most, over all identities.
    pub capacity: u64,
    /// Bytes of pages one identity may store, unless `quotas` names it. Default: the capacity.
    pub default_quota: u64,
    /// Per-tenant quotas (token-file tenants), in bytes.
    pub quotas: HashMap<String, u64>,
}

impl StoreConfig {
    pub fn new(capacity: u64) -> StoreConfig {
        StoreConfig { capacity, default_quota: capacity, quotas: HashMap::new() }
    }

    /// The quota of `identity`, in bytes.
    pub fn quota(&self, identity: &Identity) -> u64 {
        match identity {
            Identity::Tenant(name) => self.quotas.get(name).copied().unwrap_or(self.default_quota),
            Identity::Secret(_) => self.default_quota,
        }
        .min(self.capacity)
    }
}

/// Tickets one region may have out at once, and holders per ticket.
pub const MAX_GRANTS_PER_REGION: usize = 64;

/// Compares two tickets in time independent of where they differ.
fn tickets_equal(a: &Ticket, b: &Ticket) -> bool {
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Regions one identity may hold at once.
pub const MAX_REGIONS_PER_IDENTITY: u64 = 65536;
/// Declared (virtual) bytes one identity may hold at once, as a multiple of the capacity: regions
/// are sparse, but their address space is not free.
pub const DECLARED_PER_CAPACITY: u64 = 64;

/// One identity's usage. `stored_pages`, `regions` and `declared` change under the accounts lock;
/// the traffic counters are relaxed atomics updated without it.
#[derive(Debug, Default)]
pub struct Account {
    stored_pages: AtomicU64,
    regions: AtomicU64,
    declared: AtomicU64,
    pub pages_read: AtomicU64,
    pub pages_written: AtomicU64,
}

/// A copy of an identity's (or the whole store's) usage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes stored (what capacity and quotas count).
    pub stored: u64,
    /// Bytes declared by region sizes.
    pub declared: u64,
    pub regions: u64,
    pub pages_read: u64,
    pub pages_written: u64,
}

#[derive(Debug)]
struct RegionMem {
    map: MmapMut,
    /// One bit per page written at least once.
    stored: Vec<u64>,
    stored_pages: u64,
    /// Registered for RDMA at some point: counted at its full size from then on.
    pinned: bool,
}

impl RegionMem {
    fn pages(&self) -> u64 {
        (self.map.len() / PAGE_SIZE) as u64
    }
    fn charged(&self) -> u64 {
        if self.pinned { self.pages() } else { self.stored_pages }
    }
    fn is_stored(&self, p: u64) -> bool {
        let p = usize::try_from(p).unwrap_or(usize::MAX);
        self.stored.get(p / 64).is_some_and(|w| w & (1 << (p % 64)) != 0)
    }
    /// Marks page `p` stored; true if it was not.
    fn mark(&mut self, p: u64, on: bool) -> bool {
        let p = usize::try_from(p).expect("checked page index");
        let (w, bit) = (p / 64, 1u64 << (p % 64));
        let was = self.stored[w] & bit != 0;
        if on { self.stored[w] |= bit } else { self.stored[w] &= !bit }
        was != on
    }
}

#[derive(Debug)]
struct Region {
    owner: Owner,
    account: Arc<Account>,
    mem: RwLock<RegionMem>,
    /// Tickets the owner handed out, and who attached with each (see [`Store::grant`]).
    grants: Mutex<Vec<Grant>>,
}

/// A ticket to a region: whoever presents it may attach and then read (and, if `write`, write
/// and grow) the region as if it were theirs, until the owner revokes it or frees the region.
struct Grant {
    ticket: Ticket,
    write: bool,
    holders: Vec<Owner>,
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the ticket.
        f.debug_struct("Grant").field("write", &self.write).field("holders", &self.holders.len()).finish()
    }
}

/// A region's access ticket: 128 random bits.
pub type Ticket = [u8; 16];

/// What an operation needs of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    /// Only the owner: free, shrink, grant, revoke.
    Own,
}

impl Region {
    fn allows(&self, who: &Owner, access: Access) -> bool {
        if &self.owner == who {
            return true;
        }
        access != Access::Own
            && lock(&self.grants).iter().any(|g| (g.write || access == Access::Read) && g.holders.contains(who))
    }
}

/// A ticket from the kernel's random source.
fn random_ticket() -> Ticket {
    let mut t = [0u8; 16];
    // SAFETY: `t` is a valid, writable 16-byte buffer for the duration of the call.
    let n = unsafe { libc::getrandom(t.as_mut_ptr().cast(), t.len(), 0) };
    assert_eq!(n, 16, "getrandom failed: {}", std::io::Error::last_os_error());
    t
}

/// Counters of a store, exported by `Stats`.
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub pages_read: AtomicU64,
    pub pages_written: AtomicU64,
}

#[derive(Debug, Default)]
struct Regions {
    next_id: u64,
    map: HashMap<RegionId, Arc<Region>>,
}

#[derive(Debug, Default)]
struct Accounts {
    stored_pages: u64,
    declared: u64,
    regions: u64,
    by_identity: HashMap<Identity, Arc<Account>>,
}

/// One region as the operator view lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    pub id: RegionId,
    pub owner: Owner,
    pub size: u64,
    pub stored: u64,
}

/// The memory pool of a memnode (or of the embedded, in-process one).
#[derive(Debug)]
pub struct Store {
    config: StoreConfig,
    regions: Mutex<Regions>,
    accounts: Mutex<Accounts>,
    pub counters: StoreCounters,
}

fn check_size(size: u64) -> Result<usize, StoreError> {
    if size == 0 || !size.is_multiple_of(PAGE_SIZE_U64) {
        return Err(StoreError::BadSize { size });
    }
    usize::try_from(size).map_err(|_| StoreError::BadSize { size })
}

fn map_anon(len: usize) -> Result<MmapMut, StoreError> {
    MmapMut::map_anon(len).map_err(|e| StoreError::Map { size: len as u64, source: e })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves only plain bookkeeping behind; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// A store that holds at most `capacity` bytes of pages, every identity up to all of it.
    pub fn new(capacity: u64) -> Store {
        Store::with_config(StoreConfig::new(capacity))
    }

    pub fn with_config(config: StoreConfig) -> Store {
        Store {
            config,
            regions: Mutex::new(Regions { next_id: 1, ..Default::default() }),
            accounts: Mutex::new(Accounts::default()),
            counters: StoreCounters::default(),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.config.capacity
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The whole store's usage.
    pub fn total(&self) -> Usage {
        let a = lock(&self.accounts);
        Usage {
            stored: a.stored_pages * PAGE_SIZE_U64,
            declared: a.declared,
            regions: a.regions,
            pages_read: self.counters.pages_read.load(Ordering::Relaxed),
            pages_written: self.counters.pages_written.load(Ordering::Relaxed),
        }
    }

    /// One identity's usage.
    pub fn usage(&self, identity: &Identity) -> Usage {
        let a = lock(&self.accounts);
        a.by_identity.get(identity).map_or_else(Usage::default, |acc| Usage {
            stored: acc.stored_pages.load(Ordering::Relaxed) * PAGE_SIZE_U64,
            declared: acc.declared.load(Ordering::Relaxed),
            regions: acc.regions.load(Ordering::Relaxed),
            pages_read: acc.pages_read.load(Ordering::Relaxed),
            pages_written: acc.pages_written.load(Ordering::Relaxed),
        })
    }

    /// Identities that hold regions now.
    pub fn identities(&self) -> Vec<Identity> {
        let a = lock(&self.accounts);
        a.by_identity.iter().filter(|(_, acc)| acc.regions.load(Ordering::Relaxed) > 0).map(|(i, _)| i.clone()).collect()
    }

    /// Charges `pages` newly stored pages to `account` of `identity`, or says why not.
    fn charge(&self, identity: &Identity, account: &Account, pages: u64) -> Result<(), StoreError> {
        if pages == 0 {
            return Ok(());
        }
        let mut a = lock(&self.accounts);
        let used = account.stored_pages.load(Ordering::Relaxed);
        let quota_pages = self.config.quota(identity) / PAGE_SIZE_U64;
        if used + pages > quota_pages {
            return Err(StoreError::QuotaExceeded { pages, used: used * PAGE_SIZE_U64, quota: quota_pages * PAGE_SIZE_U64 });
        }
        if a.stored_pages + pages > self.config.capacity / PAGE_SIZE_U64 {
            return Err(StoreError::OutOfCapacity { pages });
        }
        a.stored_pages += pages;
        account.stored_pages.fetch_add(pages, Ordering::Relaxed);
        Ok(())
    }

    fn uncharge(&self, account: &Account, pages: u64) {
        if pages == 0 {
            return;
        }
        let mut a = lock(&self.accounts);
        a.stored_pages -= pages;
        account.stored_pages.fetch_sub(pages, Ordering::Relaxed);
    }

    /// Allocates a zero-filled region of `size` bytes for `owner`. Nothing is charged until pages
    /// are written.
    pub fn alloc(&self, owner: &Owner, size: u64) -> Result<RegionId, StoreError> {
        let len = check_size(size)?;
        if size > self.config.capacity {
            return Err(StoreError::TooLarge { size, capacity: self.config.capacity });
        }
        let account = {
            let mut a = lock(&self.accounts);
            let account = a.by_identity.entry(owner.identity.clone()).or_default().clone();
            let (declared, regions) = (account.declared.load(Ordering::Relaxed), account.regions.load(Ordering::Relaxed));
            let limit = self.config.capacity.saturating_mul(DECLARED_PER_CAPACITY);
            if regions >= MAX_REGIONS_PER_IDENTITY || declared.saturating_add(size) > limit {
                return Err(StoreError::TooManyRegions { declared, regions, limit, max_regions: MAX_REGIONS_PER_IDENTITY });
            }
            account.declared.fetch_add(size, Ordering::Relaxed);
            account.regions.fetch_add(1, Ordering::Relaxed);
            a.declared += size;
            a.regions += 1;
            account
        };
        let map = match map_anon(len) {
            Ok(map) => map,
            Err(e) => {
                self.forget_declared(&account, size);
                return Err(e);
            }
        };
        let pages = len / PAGE_SIZE;
        let mem = RegionMem { map, stored: vec![0; pages.div_ceil(64)], stored_pages: 0, pinned: false };
        let mut r = lock(&self.regions);
        let id = RegionId(r.next_id);
        r.next_id += 1;
        r.map.insert(id, Arc::new(Region { owner: owner.clone(), account, mem: RwLock::new(mem), grants: Mutex::new(Vec::new()) }));
        Ok(id)
    }

    fn forget_declared(&self, account: &Account, size: u64) {
        let mut a = lock(&self.accounts);
        account.declared.fetch_sub(size, Ordering::Relaxed);
        account.regions.fetch_sub(1, Ordering::Relaxed);
        a.declared -= size;
        a.regions -= 1;
    }

    fn region(&self, owner: &Owner, id: RegionId) -> Result<Arc<Region>, StoreError> {
        self.region_for(owner, id, Access::Own)
    }

    /// Region `id` if `who` may use it for `access` (its owner, or a holder of a ticket to it);
    /// any other region is answered as unknown.
    fn region_for(&self, who: &Owner, id: RegionId, access: Access) -> Result<Arc<Region>, StoreError> {
        let region = lock(&self.regions).map.get(&id).cloned();
        match region {
            Some(region) if region.allows(who, access) => Ok(region),
            _ => Err(StoreError::NoSuchRegion(id)),
        }
    }

    /// Hands out a ticket to `owner`'s region `id`: another client (any identity) that presents
    /// it to [`Store::attach`] may read the region — and write and grow it, if `write` — until
    /// [`Store::revoke`] or the region's end. What is stored stays charged to the owner.
    pub fn grant(&self, owner: &Owner, id: RegionId, write: bool) -> Result<Ticket, StoreError> {
        let region = self.region(owner, id)?;
        let ticket = random_ticket();
        let mut grants = lock(&region.grants);
        if grants.len() >= MAX_GRANTS_PER_REGION {
            return Err(StoreError::TooManyGrants { region: id, max: MAX_GRANTS_PER_REGION });
        }
        grants.push(Grant { ticket, write, holders: Vec::new() });
        Ok(ticket)
    }

    /// Gives `who` the access `ticket` grants to region `id`; returns whether it may write. A
    /// wrong ticket, a revoked one and an unknown region are all answered as an unknown region.
    pub fn attach(&self, who: &Owner, id: RegionId, ticket: &Ticket) -> Result<bool, StoreError> {
        let region = lock(&self.regions).map.get(&id).cloned().ok_or(StoreError::NoSuchRegion(id))?;
        let mut grants = lock(&region.grants);
        let grant = grants.iter_mut().find(|g| tickets_equal(&g.ticket, ticket)).ok_or(StoreError::NoSuchRegion(id))?;
        if !grant.holders.contains(who) {
            if grant.holders.len() >= MAX_GRANTS_PER_REGION {
                return Err(StoreError::TooManyGrants { region: id, max: MAX_GRANTS_PER_REGION });
            }
            grant.holders.push(who.clone());
        }
        Ok(grant.write)
    }

    /// Withdraws `ticket` to `owner`'s region `id` and the access of everyone who attached with it.
    pub fn revoke(&self, owner: &Owner, id: RegionId, ticket: &Ticket) -> Result<(), StoreError> {
        let region = self.region(owner, id)?;
        lock(&region.grants).retain(|g| !tickets_equal(&g.ticket, ticket));
        Ok(())
    }

    /// The address and length of `owner`'s region `id`, for registering it with an RDMA device.
    /// From now on the region counts at its full size (charged now, or refused). The mapping stays
    /// where it is until the region is freed or resized.
    pub fn pin(&self, owner: &Owner, id: RegionId) -> Result<(*mut u8, usize), StoreError> {
        // The owner's only: a registration lives in one identity's protection domain, and a
        // ticket's holder must lose its access when the ticket is revoked.
        let region = self.region(owner, id)?;
        let mut mem = region.mem.write().unwrap_or_else(|e| e.into_inner());
        if !mem.pinned {
            self.charge(&region.owner.identity, &region.account, mem.pages() - mem.stored_pages)?;
            mem.pinned = true;
        }
        Ok((mem.map.as_mut_ptr(), mem.map.len()))
    }

    /// Releases a region and its memory.
    pub fn free(&self, owner: &Owner, id: RegionId) -> Result<(), StoreError> {
        let region = {
            let mut r = lock(&self.regions);
            match r.map.get(&id) {
                Some(region) if &region.owner == owner => r.map.remove(&id).expect("present: checked above"),
                _ => return Err(StoreError::NoSuchRegion(id)),
            }
        };
        let mem = region.mem.read().unwrap_or_else(|e| e.into_inner());
        self.uncharge(&region.account, mem.charged());
        self.forget_declared(&region.account, mem.map.len() as u64);
        Ok(())
    }

    /// Frees every region of `owner`; returns how many and the bytes they had stored.
    pub fn free_owner(&self, owner: &Owner) -> (u64, u64) {
        let ids: Vec<RegionId> = lock(&self.regions).map.iter().filter(|(_, r)| &r.owner == owner).map(|(id, _)| *id).collect();
        let (mut n, mut bytes) = (0, 0);
        for id in ids {
            let stored = self.region(owner, id).map(|r| r.mem.read().unwrap_or_else(|e| e.into_inner()).charged()).unwrap_or(0);
            if self.free(owner, id).is_ok() {
                n += 1;
                bytes += stored * PAGE_SIZE_U64;
            }
        }
        (n, bytes)
    }

    /// Every region (the operator view), or only those of `identity`.
    pub fn regions(&self, identity: Option<&Identity>) -> Vec<RegionInfo> {
        let all: Vec<(RegionId, Arc<Region>)> = lock(&self.regions)
            .map
            .iter()
            .filter(|(_, r)| identity.is_none_or(|i| &r.owner.identity == i))
            .map(|(id, r)| (*id, r.clone()))
            .collect();
        let mut out: Vec<RegionInfo> = all
            .into_iter()
            .map(|(id, r)| {
                let mem = r.mem.read().unwrap_or_else(|e| e.into_inner());
                RegionInfo { id, owner: r.owner.clone(), size: mem.map.len() as u64, stored: mem.charged() * PAGE_SIZE_U64 }
            })
            .collect();
        out.sort_by_key(|r| r.id);
        out
    }

    /// Changes a region's size, keeping the contents of the pages both sizes share.
    pub fn resize(&self, owner: &Owner, id: RegionId, size: u64) -> Result<(), StoreError> {
        let new_len = check_size(size)?;
        if size > self.config.capacity {
            return Err(StoreError::TooLarge { size, capacity: self.config.capacity });
        }
        // A writable ticket's holder may grow a region, only its owner shrink it.
        let region = self.region_for(owner, id, Access::Write)?;
        let mut mem = region.mem.write().unwrap_or_else(|e| e.into_inner());
        let old = mem.map.len() as u64;
        if size < old && &region.owner != owner {
            return Err(StoreError::NoSuchRegion(id));
        }
        let (old_pages, new_pages) = (old / PAGE_SIZE_U64, size / PAGE_SIZE_U64);
        let account = &region.account;
        // Declared size first (refusable), then what is charged.
        if size > old {
            let mut a = lock(&self.accounts);
            let declared = account.declared.load(Ordering::Relaxed);
            let limit = self.config.capacity.saturating_mul(DECLARED_PER_CAPACITY);
            if declared.saturating_add(size - old) > limit {
                let regions = account.regions.load(Ordering::Relaxed);
                return Err(StoreError::TooManyRegions { declared, regions, limit, max_regions: MAX_REGIONS_PER_IDENTITY });
            }
            account.declared.fetch_add(size - old, Ordering::Relaxed);
            a.declared += size - old;
        }
        if mem.pinned && new_pages > old_pages
            && let Err(e) = self.charge(&region.owner.identity, account, new_pages - old_pages)
        {
            self.undo_declared(account, size - old);
            return Err(e);
        }
        // SAFETY: the region's write lock is held, so no reference into the old mapping exists
        // while mremap may move it; the mapping is anonymous and private to this store.
        let remapped = unsafe { mem.map.remap(new_len, RemapOptions::new().may_move(true)) };
        if let Err(e) = remapped {
            if mem.pinned && new_pages > old_pages {
                self.uncharge(account, new_pages - old_pages);
            }
            if size > old {
                self.undo_declared(account, size - old);
            }
            return Err(StoreError::Map { size, source: e });
        }
        let mut released = 0;
        if new_pages < old_pages {
            if mem.pinned {
                released = old_pages - new_pages;
            } else {
                for p in new_pages..old_pages {
                    if mem.is_stored(p) {
                        mem.mark(p, false);
                        released += 1;
                    }
                }
                mem.stored_pages -= released;
            }
            self.uncharge(account, released);
            let mut a = lock(&self.accounts);
            account.declared.fetch_sub(old - size, Ordering::Relaxed);
            a.declared -= old - size;
        }
        mem.stored.resize(usize::try_from(new_pages).unwrap_or(0).div_ceil(64), 0);
        Ok(())
    }

    fn undo_declared(&self, account: &Account, bytes: u64) {
        let mut a = lock(&self.accounts);
        account.declared.fetch_sub(bytes, Ordering::Relaxed);
        a.declared -= bytes;
    }

    fn page_range(region: RegionId, len: usize, page: u64) -> Result<std::ops::Range<usize>, StoreError> {
        let pages = (len / PAGE_SIZE) as u64;
        if page >= pages {
            return Err(StoreError::OutOfRange { region, page, pages });
        }
        // In range of `len`, which is a usize.
        let start = usize::try_from(page).expect("page < pages") * PAGE_SIZE;
        Ok(start..start + PAGE_SIZE)
    }

    fn count_read(&self, region: &Region, n: u64) {
        self.counters.pages_read.fetch_add(n, Ordering::Relaxed);
        region.account.pages_read.fetch_add(n, Ordering::Relaxed);
    }

    /// Calls `f(i, page_bytes)` for each requested page, in order, with the region read-locked.
    /// All indexes are checked before the first call.
    pub fn read_pages_with(
        &self,
        owner: &Owner,
        id: RegionId,
        pages: impl Iterator<Item = u64> + Clone,
        mut f: impl FnMut(usize, &[u8]),
    ) -> Result<(), StoreError> {
        let region = self.region_for(owner, id, Access::Read)?;
        let mem = region.mem.read().unwrap_or_else(|e| e.into_inner());
        for page in pages.clone() {
            Self::page_range(id, mem.map.len(), page)?;
        }
        let mut n = 0;
        for (i, page) in pages.enumerate() {
            let range = Self::page_range(id, mem.map.len(), page)?;
            f(i, &mem.map[range]);
            n += 1;
        }
        self.count_read(&region, n);
        Ok(())
    }

    /// Calls `f(range, bytes)` for each run of consecutive page numbers in `pages`, in order, with
    /// `range` the run's positions in `pages` and `bytes` the run's pages, borrowed from the
    /// region (read-locked during the call). All indexes are checked before the first call.
    pub fn read_runs(
        &self,
        owner: &Owner,
        id: RegionId,
        pages: &[u64],
        mut f: impl FnMut(std::ops::Range<usize>, &[u8]),
    ) -> Result<(), StoreError> {
        let region = self.region_for(owner, id, Access::Read)?;
        let mem = region.mem.read().unwrap_or_else(|e| e.into_inner());
        for &page in pages {
            Self::page_range(id, mem.map.len(), page)?;
        }
        let mut at = 0;
        for run in pages.chunk_by(|a, b| *b == *a + 1) {
            let start = Self::page_range(id, mem.map.len(), run[0])?.start;
            f(at..at + run.len(), &mem.map[start..start + run.len() * PAGE_SIZE]);
            at += run.len();
        }
        self.count_read(&region, pages.len() as u64);
        Ok(())
    }

    /// Copies pages out of a region into `out` (`pages.len()` × page size bytes).
    pub fn read_pages(&self, owner: &Owner, id: RegionId, pages: &[u64], out: &mut [u8]) -> Result<(), StoreError> {
        assert_eq!(out.len(), pages.len() * PAGE_SIZE, "output buffer must hold every page");
        self.read_pages_with(owner, id, pages.iter().copied(), |i, page| {
            out[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].copy_from_slice(page);
        })
    }

    /// Stores pages into a region; `data` holds `pages.len()` pages. All indexes, the capacity and
    /// the identity's quota are checked before anything is written, so a refused request changes
    /// nothing.
    pub fn write_pages(&self, owner: &Owner, id: RegionId, pages: &[u64], data: &[u8]) -> Result<(), StoreError> {
        assert_eq!(data.len(), pages.len() * PAGE_SIZE, "data must hold every page");
        let region = self.region_for(owner, id, Access::Write)?;
        let mut mem = region.mem.write().unwrap_or_else(|e| e.into_inner());
        let ranges = pages.iter().map(|&p| Self::page_range(id, mem.map.len(), p)).collect::<Result<Vec<_>, _>>()?;
        if !mem.pinned {
            let fresh: Vec<u64> = pages.iter().copied().filter(|&p| mem.mark(p, true)).collect();
            if let Err(e) = self.charge(&region.owner.identity, &region.account, fresh.len() as u64) {
                for &p in &fresh {
                    mem.mark(p, false);
                }
                return Err(e);
            }
            mem.stored_pages += fresh.len() as u64;
        }
        for (i, range) in ranges.into_iter().enumerate() {
            mem.map[range].copy_from_slice(&data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]);
        }
        self.counters.pages_written.fetch_add(pages.len() as u64, Ordering::Relaxed);
        region.account.pages_written.fetch_add(pages.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Parses a size such as `512M`, `8G`, `4096` or `1T` (binary units; a trailing `iB`/`B` is
/// accepted). Hand-written because the size crates disagree on whether `G` means 10^9 or 2^30, and
/// a memory capacity must mean 2^30.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        Some((i, 'T' | 't')) => (&t[..i], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| format!("`{s}` is not a size: use e.g. 4096, 512M, 8G"))?;
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, reason = "test patterns truncate on purpose")]
mod tests {
    use super::*;

    fn who(s: &str) -> Owner {
        Owner::new(Identity::Tenant(s.to_string()), b"")
    }

    #[test]
    fn alloc_read_write_free() {
        let store = Store::new(1 << 20);
        let a = who("a");
        let id = store.alloc(&a, 8 * 4096).unwrap();
        let data: Vec<u8> = (0..2 * PAGE_SIZE).map(|i| (i % 251) as u8).collect();
        store.write_pages(&a, id, &[3, 7], &data).unwrap();
        let mut out = vec![0xAA; 3 * PAGE_SIZE];
        store.read_pages(&a, id, &[7, 0, 3], &mut out).unwrap();
        assert_eq!(&out[..PAGE_SIZE], &data[PAGE_SIZE..]);
        assert!(out[PAGE_SIZE..2 * PAGE_SIZE].iter().all(|&b| b == 0));
        assert_eq!(&out[2 * PAGE_SIZE..], &data[..PAGE_SIZE]);
        let t = store.total();
        assert_eq!((t.stored, t.declared, t.regions), (2 * 4096, 8 * 4096, 1), "what is stored, not what is declared");
        store.free(&a, id).unwrap();
        let t = store.total();
        assert_eq!((t.stored, t.declared, t.regions), (0, 0, 0));
        assert!(matches!(store.read_pages(&a, id, &[0], &mut out[..PAGE_SIZE]), Err(StoreError::NoSuchRegion(r)) if r == id));
    }

    #[test]
    fn a_ticket_opens_a_region_to_its_holders_until_revoked() {
        let store = Store::new(1 << 20);
        let (a, b, c) = (who("a"), who("b"), who("c"));
        let id = store.alloc(&a, 2 * 4096).unwrap();
        store.write_pages(&a, id, &[0], &[7; PAGE_SIZE]).unwrap();
        let read = store.grant(&a, id, false).unwrap();
        let write = store.grant(&a, id, true).unwrap();
        assert_ne!(read, write);
        assert!(matches!(store.grant(&b, id, true), Err(StoreError::NoSuchRegion(_))), "only the owner grants");
        let mut out = vec![0; PAGE_SIZE];
        // Nothing before attaching; a wrong ticket is an unknown region.
        assert!(matches!(store.read_pages(&b, id, &[0], &mut out), Err(StoreError::NoSuchRegion(_))));
        assert!(matches!(store.attach(&b, id, &[0; 16]), Err(StoreError::NoSuchRegion(_))));
        assert!(!store.attach(&b, id, &read).unwrap());
        store.read_pages(&b, id, &[0], &mut out).unwrap();
        assert_eq!(out, [7; PAGE_SIZE]);
        assert!(matches!(store.write_pages(&b, id, &[1], &[1; PAGE_SIZE]), Err(StoreError::NoSuchRegion(_))), "read-only");
        assert!(matches!(store.read_pages(&c, id, &[0], &mut out), Err(StoreError::NoSuchRegion(_))), "not attached");
        assert!(store.attach(&c, id, &write).unwrap());
        store.write_pages(&c, id, &[1], &[9; PAGE_SIZE]).unwrap();
        // A holder grows, only the owner shrinks or frees; what is stored is the owner's.
        store.resize(&c, id, 4 * 4096).unwrap();
        assert!(matches!(store.resize(&c, id, 4096), Err(StoreError::NoSuchRegion(_))));
        assert!(matches!(store.free(&c, id), Err(StoreError::NoSuchRegion(_))));
        assert!(matches!(store.grant(&c, id, false), Err(StoreError::NoSuchRegion(_))));
        assert_eq!((store.usage(&a.identity).stored, store.usage(&c.identity).stored), (2 * 4096, 0));
        store.read_pages(&a, id, &[1], &mut out).unwrap();
        assert_eq!(out, [9; PAGE_SIZE]);
        store.revoke(&a, id, &write).unwrap();
        assert!(matches!(store.read_pages(&c, id, &[0], &mut out), Err(StoreError::NoSuchRegion(_))), "revoked");
        assert!(matches!(store.attach(&c, id, &write), Err(StoreError::NoSuchRegion(_))));
        store.read_pages(&b, id, &[0], &mut out).unwrap();
        store.free(&a, id).unwrap();
        assert!(matches!(store.attach(&b, id, &read), Err(StoreError::NoSuchRegion(_))));
    }

    #[test]
    fn owners_are_isolated_and_ids_not_reused() {
        let store = Store::new(1 << 20);
        let id = store.alloc(&who("a"), 4096).unwrap();
        let mut out = vec![0; PAGE_SIZE];
        assert!(matches!(store.read_pages(&who("b"), id, &[0], &mut out), Err(StoreError::NoSuchRegion(_))));
        assert!(matches!(store.free(&who("b"), id), Err(StoreError::NoSuchRegion(_))));
        // Another session of the same identity does not reach it either.
        let other_session = Owner::new(Identity::Tenant("a".into()), b"s2");
        assert!(matches!(store.read_pages(&other_session, id, &[0], &mut out), Err(StoreError::NoSuchRegion(_))));
        store.free(&who("a"), id).unwrap();
        let id2 = store.alloc(&who("b"), 4096).unwrap();
        assert_ne!(id, id2);
    }

    #[test]
    fn secrets_are_their_exact_bytes() {
        // Two secrets that are one string under a lossy UTF-8 decoding are two identities.
        let (ff, fe) = (Owner::new(Identity::Secret(vec![0xff]), b""), Owner::new(Identity::Secret(vec![0xfe]), b""));
        assert_ne!(ff, fe);
        let store = Store::new(1 << 20);
        let id = store.alloc(&ff, 4096).unwrap();
        assert!(matches!(store.free(&fe, id), Err(StoreError::NoSuchRegion(_))));
        // Neither Debug nor Display shows the secret.
        let secret = Identity::Secret(b"hunter2-very-secret".to_vec());
        assert!(!format!("{secret:?} {secret}").contains("hunter2"));
    }

    #[test]
    fn capacity_and_quotas_count_stored_pages() {
        let mut config = StoreConfig::new(8 * 4096);
        config.quotas.insert("small".into(), 2 * 4096);
        let store = Store::with_config(config);
        let (big, small) = (who("big"), who("small"));
        // Declaring is cheap: two regions of the whole capacity each.
        let r1 = store.alloc(&big, 8 * 4096).unwrap();
        let r2 = store.alloc(&small, 8 * 4096).unwrap();
        assert!(matches!(store.alloc(&big, 9 * 4096), Err(StoreError::TooLarge { .. })));
        let page = vec![1u8; PAGE_SIZE];
        store.write_pages(&small, r2, &[0], &page).unwrap();
        store.write_pages(&small, r2, &[0], &page).unwrap(); // rewriting a stored page is free
        store.write_pages(&small, r2, &[1], &page).unwrap();
        let err = store.write_pages(&small, r2, &[2], &page).unwrap_err();
        assert!(matches!(err, StoreError::QuotaExceeded { pages: 1, used: 8192, quota: 8192 }), "{err}");
        let pages: Vec<u64> = (0..6).collect();
        store.write_pages(&big, r1, &pages, &vec![2u8; 6 * PAGE_SIZE]).unwrap();
        let err = store.write_pages(&big, r1, &[6], &page).unwrap_err();
        assert!(matches!(err, StoreError::OutOfCapacity { pages: 1 }), "{err}");
        assert!(!err.to_string().contains("8192"), "a capacity error tells nothing of other identities: {err}");
        // A refused write stored nothing; freeing makes room for others.
        let mut out = vec![0u8; PAGE_SIZE];
        store.read_pages(&big, r1, &[6], &mut out).unwrap();
        assert!(out.iter().all(|&b| b == 0));
        assert_eq!(store.usage(&small.identity).stored, 2 * 4096);
        store.free(&small, r2).unwrap();
        store.write_pages(&big, r1, &[6, 7], &vec![3u8; 2 * PAGE_SIZE]).unwrap();
        // Pinned (RDMA-registered) regions count whole.
        let r3 = store.alloc(&small, 4 * 4096).unwrap();
        assert!(matches!(store.pin(&small, r3), Err(StoreError::OutOfCapacity { .. } | StoreError::QuotaExceeded { .. })));
    }

    #[test]
    fn resize_keeps_contents_and_accounts() {
        let store = Store::new(16 * 4096);
        let a = who("a");
        let id = store.alloc(&a, 2 * 4096).unwrap();
        let page = vec![1u8; PAGE_SIZE];
        assert!(matches!(store.write_pages(&a, id, &[2], &page), Err(StoreError::OutOfRange { .. })));
        store.write_pages(&a, id, &[1], &page).unwrap();
        store.resize(&a, id, 4 * 4096).unwrap();
        store.write_pages(&a, id, &[3], &page).unwrap();
        let mut out = vec![0; 2 * PAGE_SIZE];
        store.read_pages(&a, id, &[1, 2], &mut out).unwrap();
        assert_eq!(&out[..PAGE_SIZE], &page[..]);
        assert!(out[PAGE_SIZE..].iter().all(|&b| b == 0));
        assert_eq!(store.total().stored, 2 * 4096);
        store.resize(&a, id, 2 * 4096).unwrap();
        let t = store.total();
        assert_eq!((t.stored, t.declared), (4096, 2 * 4096), "the dropped tail's page is released");
    }

    #[test]
    fn runs_borrow_consecutive_pages() {
        let store = Store::new(1 << 20);
        let a = who("a");
        let id = store.alloc(&a, 8 * 4096).unwrap();
        let data: Vec<u8> = (0..3 * PAGE_SIZE).map(|i| (i / PAGE_SIZE + 1) as u8).collect();
        store.write_pages(&a, id, &[2, 3, 6], &data).unwrap();
        let mut runs = vec![];
        store.read_runs(&a, id, &[2, 3, 6], |r, bytes| runs.push((r, bytes[0], bytes.len()))).unwrap();
        assert_eq!(runs, vec![(0..2, 1, 2 * PAGE_SIZE), (2..3, 3, PAGE_SIZE)]);
        assert!(matches!(store.read_runs(&a, id, &[2, 8], |_, _| panic!("nothing before the check")), Err(StoreError::OutOfRange { .. })));
    }

    #[test]
    fn free_owner_frees_one_session() {
        let store = Store::new(1 << 20);
        let (s1, s2) = (Owner::new(Identity::Tenant("t".into()), b"one"), Owner::new(Identity::Tenant("t".into()), b"two"));
        let page = vec![1u8; PAGE_SIZE];
        for _ in 0..3 {
            let id = store.alloc(&s1, 4 * 4096).unwrap();
            store.write_pages(&s1, id, &[0], &page).unwrap();
        }
        let kept = store.alloc(&s2, 4096).unwrap();
        assert_eq!(store.free_owner(&s1), (3, 3 * 4096));
        assert_eq!(store.regions(None).iter().map(|r| r.id).collect::<Vec<_>>(), vec![kept]);
        assert_eq!(store.usage(&s1.identity).regions, 1);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("8GiB").unwrap(), 8 << 30);
        assert!(parse_size("lots").is_err());
    }
}
