//! Client transports: how a runtime reads and writes batches of pages of its memnode regions.
//!
//! ```text
//!            ┌──────────────── dyn Transport ────────────────┐
//!            │ alloc / resize / free / read_pages / write_pages │
//!            └───────┬──────────────────────┬─────────────────┘
//!        LocalTransport                TcpTransport                (rdma: a later backend)
//!        in-process Store              pooled connections, pipelined frames,
//!        (embedded memnode, tests)     per-page checksums, deadlines
//! ```
//!
//! A batch call returns only when every page is in the caller's buffer (or stored), verified; any
//! failure — a refused request, a bad checksum, a peer that does not answer before the deadline —
//! is an error for the whole batch, and nothing unverified is ever handed back.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::proto::{ErrorCode, StatsReply};
use crate::store::{Identity, Owner, RegionId, Store, StoreError, Ticket};

mod tcp;

pub(crate) use tcp::Conn;
pub use tcp::{Leftovers, TcpConfig, TcpTransport, random_token};

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("Cannot connect to the memnode at {addr}: is `memnode --listen {addr}` running?")]
    Connect { addr: String, #[source] source: io::Error },
    #[error("The memnode at {addr} did not answer {op} within {timeout:?}")]
    Timeout { addr: String, op: &'static str, timeout: Duration },
    #[error("The connection to the memnode at {addr} failed during {op}")]
    Io { addr: String, op: &'static str, #[source] source: io::Error },
    #[error("The memnode refused {op}: {message}")]
    Refused { op: &'static str, code: Option<ErrorCode>, message: String },
    #[error("Page {page} of region {region} arrived with a bad checksum; it was not used")]
    Checksum { region: RegionId, page: u64 },
    #[error("The memnode at {addr} sent an unexpected reply to {op}: {detail}")]
    Protocol { addr: String, op: &'static str, detail: String },
    #[error("Unsupported memnode address `{0}`: use HOST:PORT, tcp://HOST:PORT or rdma://HOST:PORT")]
    BadAddress(String),
    #[error("RDMA with the memnode at {addr} failed: {source}")]
    Rdma { addr: String, #[source] source: crate::rdma::RdmaError },
    #[error("The memnode at {addr} no longer counts this client as the holder of its session ({message}); its regions may be gone: restart the client")]
    SessionLost { addr: String, message: String },
    #[error("Cannot open the memnode session: {0}")]
    BadSession(String),
}

impl TransportError {
    /// The memnode refused because of the request itself (wrong region, capacity): the memnode is
    /// healthy, retrying will not help.
    pub fn is_refusal(&self) -> bool {
        matches!(self, TransportError::Refused { .. } | TransportError::BadAddress(_))
    }
}

/// Reads and writes batches of pages of regions on a memnode. Implementations are shared by many
/// fault-handler threads at once.
pub trait Transport: Send + Sync + fmt::Debug {
    /// A short name for logs and stats: `local`, `tcp`.
    fn kind(&self) -> &'static str;
    /// The `rdma` transport behind this one, if it is one: for a party that moves this client's
    /// pages by RDMA itself (Ebb's kernel module) and needs its queue pairs and region keys.
    fn as_rdma(&self) -> Option<&crate::rdma::RdmaTransport> {
        None
    }
    /// Allocates a zero-filled region of `size` bytes (a multiple of the page size).
    fn alloc(&self, size: u64) -> Result<RegionId, TransportError>;
    /// Grows or shrinks a region, keeping the shared prefix.
    fn resize(&self, region: RegionId, size: u64) -> Result<(), TransportError>;
    /// Releases a region.
    fn free(&self, region: RegionId) -> Result<(), TransportError>;
    /// Reads `pages` of `region` into `out`, which holds `pages.len()` pages, in order.
    fn read_pages(&self, region: RegionId, pages: &[u64], out: &mut [u8]) -> Result<(), TransportError>;
    /// Like [`Transport::read_pages`], but calls `ready(range, bytes)` as soon as the pages of
    /// `range` (indexes into `pages`) are available and verified, so a caller can use the first
    /// pages of a large batch while the rest are still arriving. Ranges come in order and cover
    /// every page. `bytes` are those pages, in `out` — or, for a backend that holds them in this
    /// process, borrowed from it directly (then `out` is left untouched: use `bytes`).
    fn read_pages_streaming(
        &self,
        region: RegionId,
        pages: &[u64],
        out: &mut [u8],
        ready: &mut dyn FnMut(std::ops::Range<usize>, &[u8]),
    ) -> Result<(), TransportError> {
        self.read_pages(region, pages, out)?;
        ready(0..pages.len(), out);
        Ok(())
    }
    /// Writes `data` (`pages.len()` pages, in order) to `pages` of `region`.
    fn write_pages(&self, region: RegionId, pages: &[u64], data: &[u8]) -> Result<(), TransportError>;
    /// The memnode's statistics.
    fn stats(&self) -> Result<StatsReply, TransportError>;
    /// A ticket to one of this client's regions that lets another client (of any identity)
    /// [`Transport::attach`] it: to read it, and to write and grow it if `write`. Until
    /// [`Transport::revoke`] or the region is freed.
    fn grant(&self, region: RegionId, write: bool) -> Result<Ticket, TransportError> {
        let _ = (region, write);
        Err(unsupported(self.kind(), "grant"))
    }
    /// Uses another client's ticket: from now on this client reads (and writes, if granted) that
    /// region by its id like one of its own — but cannot free it. Returns whether it may write.
    fn attach(&self, region: RegionId, ticket: &Ticket) -> Result<bool, TransportError> {
        let _ = (region, ticket);
        Err(unsupported(self.kind(), "attach"))
    }
    /// Withdraws a ticket this client granted, and the access of whoever attached with it.
    fn revoke(&self, region: RegionId, ticket: &Ticket) -> Result<(), TransportError> {
        let _ = (region, ticket);
        Err(unsupported(self.kind(), "revoke"))
    }
}

fn unsupported(kind: &str, op: &'static str) -> TransportError {
    TransportError::Refused { op, code: Some(ErrorCode::BadRequest), message: format!("the {kind} transport cannot share regions") }
}

fn refused(op: &'static str, e: StoreError) -> TransportError {
    TransportError::Refused { op, code: Some(e.code()), message: e.to_string() }
}

/// The in-process backend: a [`Store`] in this process (the embedded memnode and the test double).
#[derive(Debug)]
pub struct LocalTransport {
    store: Arc<Store>,
    identity: Owner,
}

impl LocalTransport {
    /// A client of `store` as tenant `identity`'s default session.
    pub fn new(store: Arc<Store>, identity: &str) -> LocalTransport {
        LocalTransport { store, identity: Owner::new(Identity::Tenant(identity.to_string()), b"") }
    }

    /// An embedded memnode of `capacity` bytes with a single client.
    pub fn embedded(capacity: u64) -> LocalTransport {
        LocalTransport::new(Arc::new(Store::new(capacity)), "embedded")
    }
}

impl Transport for LocalTransport {
    fn kind(&self) -> &'static str {
        "local"
    }
    fn alloc(&self, size: u64) -> Result<RegionId, TransportError> {
        self.store.alloc(&self.identity, size).map_err(|e| refused("alloc", e))
    }
    fn resize(&self, region: RegionId, size: u64) -> Result<(), TransportError> {
        self.store.resize(&self.identity, region, size).map_err(|e| refused("resize", e))
    }
    fn free(&self, region: RegionId) -> Result<(), TransportError> {
        self.store.free(&self.identity, region).map_err(|e| refused("free", e))
    }
    fn read_pages(&self, region: RegionId, pages: &[u64], out: &mut [u8]) -> Result<(), TransportError> {
        self.store.read_pages(&self.identity, region, pages, out).map_err(|e| refused("read", e))
    }
    fn read_pages_streaming(
        &self,
        region: RegionId,
        pages: &[u64],
        _out: &mut [u8],
        ready: &mut dyn FnMut(std::ops::Range<usize>, &[u8]),
    ) -> Result<(), TransportError> {
        // The pages are in this process: hand out runs of the store's own memory, saving a copy.
        self.store.read_runs(&self.identity, region, pages, |range, bytes| ready(range, bytes)).map_err(|e| refused("read", e))
    }
    fn write_pages(&self, region: RegionId, pages: &[u64], data: &[u8]) -> Result<(), TransportError> {
        self.store.write_pages(&self.identity, region, pages, data).map_err(|e| refused("write", e))
    }
    fn stats(&self) -> Result<StatsReply, TransportError> {
        let u = self.store.usage(&self.identity.identity);
        Ok(StatsReply {
            capacity: self.store.config().quota(&self.identity.identity).into(),
            allocated: u.stored.into(),
            regions: u.regions.into(),
            pages_read: u.pages_read.into(),
            pages_written: u.pages_written.into(),
            connections: 0.into(),
        })
    }
    fn grant(&self, region: RegionId, write: bool) -> Result<Ticket, TransportError> {
        self.store.grant(&self.identity, region, write).map_err(|e| refused("grant", e))
    }
    fn attach(&self, region: RegionId, ticket: &Ticket) -> Result<bool, TransportError> {
        self.store.attach(&self.identity, region, ticket).map_err(|e| refused("attach", e))
    }
    fn revoke(&self, region: RegionId, ticket: &Ticket) -> Result<(), TransportError> {
        self.store.revoke(&self.identity, region, ticket).map_err(|e| refused("revoke", e))
    }
}

/// Counts operations for tests that want to see traffic (e.g. that zero pages are never sent).
#[derive(Debug)]
pub struct CountingTransport<T> {
    pub inner: T,
    pub pages_read: AtomicU64,
    pub pages_written: AtomicU64,
}

impl<T> CountingTransport<T> {
    pub fn new(inner: T) -> Self {
        CountingTransport { inner, pages_read: AtomicU64::new(0), pages_written: AtomicU64::new(0) }
    }
}

impl<T: Transport> Transport for CountingTransport<T> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn as_rdma(&self) -> Option<&crate::rdma::RdmaTransport> {
        self.inner.as_rdma()
    }
    fn alloc(&self, size: u64) -> Result<RegionId, TransportError> {
        self.inner.alloc(size)
    }
    fn resize(&self, region: RegionId, size: u64) -> Result<(), TransportError> {
        self.inner.resize(region, size)
    }
    fn free(&self, region: RegionId) -> Result<(), TransportError> {
        self.inner.free(region)
    }
    fn read_pages(&self, region: RegionId, pages: &[u64], out: &mut [u8]) -> Result<(), TransportError> {
        self.pages_read.fetch_add(pages.len() as u64, Ordering::Relaxed);
        self.inner.read_pages(region, pages, out)
    }
    fn read_pages_streaming(
        &self,
        region: RegionId,
        pages: &[u64],
        out: &mut [u8],
        ready: &mut dyn FnMut(std::ops::Range<usize>, &[u8]),
    ) -> Result<(), TransportError> {
        self.pages_read.fetch_add(pages.len() as u64, Ordering::Relaxed);
        self.inner.read_pages_streaming(region, pages, out, ready)
    }
    fn write_pages(&self, region: RegionId, pages: &[u64], data: &[u8]) -> Result<(), TransportError> {
        self.pages_written.fetch_add(pages.len() as u64, Ordering::Relaxed);
        self.inner.write_pages(region, pages, data)
    }
    fn stats(&self) -> Result<StatsReply, TransportError> {
        self.inner.stats()
    }
    fn grant(&self, region: RegionId, write: bool) -> Result<Ticket, TransportError> {
        self.inner.grant(region, write)
    }
    fn attach(&self, region: RegionId, ticket: &Ticket) -> Result<bool, TransportError> {
        self.inner.attach(region, ticket)
    }
    fn revoke(&self, region: RegionId, ticket: &Ticket) -> Result<(), TransportError> {
        self.inner.revoke(region, ticket)
    }
}

/// Connects to the memnode named by `addr`, choosing the backend from its form: `rdma://HOST:PORT`
/// (control plane over TCP at HOST:PORT, pages by one-sided RDMA), else `tcp://HOST:PORT` or
/// `HOST:PORT`.
pub fn connect(addr: &str, config: TcpConfig) -> Result<Arc<dyn Transport>, TransportError> {
    if let Some(hostport) = addr.strip_prefix("rdma://") {
        return Ok(Arc::new(crate::rdma::RdmaTransport::connect(hostport, config)?));
    }
    Ok(Arc::new(TcpTransport::connect(addr, config)?))
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, reason = "test patterns truncate on purpose")]
mod tests {
    use super::*;
    use crate::proto::PAGE_SIZE;
    use crate::server::{Server, ServerConfig, Tokens};
    use std::net::TcpListener;

    fn server(config: ServerConfig) -> crate::server::ServerHandle {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Server::new(Arc::new(Store::new(64 << 20)), config).spawn(listener).unwrap()
    }

    fn pattern(pages: usize, seed: u8) -> Vec<u8> {
        (0..pages * PAGE_SIZE).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn tcp_roundtrip_many_frames() {
        let s = server(ServerConfig::default());
        let t = TcpTransport::connect(&s.local_addr().to_string(), TcpConfig::default()).unwrap();
        let region = t.alloc(2048 * 4096).unwrap();
        let pages: Vec<u64> = (0..2000).map(|i| (i * 7) % 2048).collect();
        let data = pattern(pages.len(), 3);
        t.write_pages(region, &pages, &data).unwrap();
        let mut out = vec![0u8; data.len()];
        t.read_pages(region, &pages, &mut out).unwrap();
        assert!(out == data, "pages read back differ from those written");
        let stats = t.stats().unwrap();
        assert_eq!(stats.pages_written.get(), 2000);
        // What is stored (2000 distinct pages), not what the region declares.
        assert_eq!(stats.allocated.get(), 2000 * 4096);
        assert!(matches!(
            t.read_pages(region, &[5000], &mut out[..PAGE_SIZE]),
            Err(TransportError::Refused { code: Some(ErrorCode::OutOfRange), .. })
        ));
        // The connection survives a refusal.
        t.read_pages(region, &pages[..1], &mut out[..PAGE_SIZE]).unwrap();
        t.free(region).unwrap();
    }

    #[test]
    fn clients_are_isolated_and_tokens_checked() {
        let s = server(ServerConfig { tokens: Some(Tokens::from_pairs([("alice", "a-secret"), ("bob", "b-secret")])), ..Default::default() });
        let addr = s.local_addr().to_string();
        let cfg = |token: &str| TcpConfig { token: token.into(), ..Default::default() };
        let alice = TcpTransport::connect(&addr, cfg("a-secret")).unwrap();
        let bob = TcpTransport::connect(&addr, cfg("b-secret")).unwrap();
        let region = alice.alloc(4096).unwrap();
        let mut out = vec![0u8; PAGE_SIZE];
        let err = bob.read_pages(region, &[0], &mut out).unwrap_err();
        assert!(matches!(err, TransportError::Refused { code: Some(ErrorCode::NoSuchRegion), .. }), "{err}");
        assert!(bob.free(region).is_err());
        alice.read_pages(region, &[0], &mut out).unwrap();
        let wrong = TcpTransport::connect(&addr, cfg("guess")).unwrap_err();
        assert!(matches!(wrong, TransportError::Refused { code: Some(ErrorCode::BadToken), .. }), "{wrong}");
    }

    #[test]
    fn a_granted_region_is_shared_over_tcp_across_identities() {
        let s = server(ServerConfig { tokens: Some(Tokens::from_pairs([("alice", "a-secret"), ("bob", "b-secret")])), ..Default::default() });
        let addr = s.local_addr().to_string();
        let cfg = |token: &str| TcpConfig { token: token.into(), ..Default::default() };
        let alice = TcpTransport::connect(&addr, cfg("a-secret")).unwrap();
        let bob = TcpTransport::connect(&addr, cfg("b-secret")).unwrap();
        let region = alice.alloc(4 * 4096).unwrap();
        alice.write_pages(region, &[0, 1], &pattern(2, 5)).unwrap();
        let ticket = alice.grant(region, true).unwrap();
        let mut out = vec![0u8; 2 * PAGE_SIZE];
        assert!(bob.read_pages(region, &[0, 1], &mut out).is_err(), "not before attaching");
        let mut wrong = ticket;
        wrong[0] ^= 1;
        let err = bob.attach(region, &wrong).unwrap_err();
        assert!(matches!(err, TransportError::Refused { code: Some(ErrorCode::NoSuchRegion), .. }), "{err}");
        assert!(bob.attach(region, &ticket).unwrap());
        bob.read_pages(region, &[0, 1], &mut out).unwrap();
        assert!(out == pattern(2, 5));
        bob.write_pages(region, &[3], &pattern(1, 9)).unwrap();
        assert!(bob.free(region).is_err());
        alice.read_pages(region, &[3], &mut out[..PAGE_SIZE]).unwrap();
        assert!(out[..PAGE_SIZE] == pattern(1, 9));
        alice.revoke(region, &ticket).unwrap();
        assert!(bob.read_pages(region, &[0], &mut out[..PAGE_SIZE]).is_err(), "revoked");
        alice.free(region).unwrap();
    }

    #[test]
    fn local_matches_store() {
        let t = LocalTransport::embedded(1 << 20);
        let r = t.alloc(4 * 4096).unwrap();
        let data = pattern(2, 9);
        t.write_pages(r, &[1, 3], &data).unwrap();
        let mut out = vec![0u8; 2 * PAGE_SIZE];
        t.read_pages(r, &[1, 3], &mut out).unwrap();
        assert_eq!(out, data);
        assert!(t.alloc(1 << 30).is_err());
    }
}
