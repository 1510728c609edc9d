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
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zerocopy::{FromBytes, IntoBytes};

use crate::net::spin_until_readable;
use crate::proto::{
    self, ErrorCode, Header, Op, PageDesc, StatsReply, HEADER_LEN, MAX_PAGES_PER_FRAME, PAGE_SIZE, REPLY_BIT,
};
use crate::store::{Identity, RegionId, Store, StoreError};

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
}

fn refused(op: &'static str, e: StoreError) -> TransportError {
    let code = match e {
        StoreError::NoSuchRegion(_) => ErrorCode::NoSuchRegion,
        StoreError::OutOfCapacity { .. } | StoreError::Map { .. } => ErrorCode::OutOfCapacity,
        StoreError::BadSize { .. } | StoreError::OutOfRange { .. } => ErrorCode::OutOfRange,
    };
    TransportError::Refused { op, code: Some(code), message: e.to_string() }
}

/// The in-process backend: a [`Store`] in this process (the embedded memnode and the test double).
#[derive(Debug)]
pub struct LocalTransport {
    store: Arc<Store>,
    identity: Identity,
}

impl LocalTransport {
    pub fn new(store: Arc<Store>, identity: &str) -> LocalTransport {
        LocalTransport { store, identity: Identity(identity.to_string()) }
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
        let (allocated, regions) = self.store.usage();
        Ok(StatsReply {
            capacity: self.store.capacity().into(),
            allocated: allocated.into(),
            regions: regions.into(),
            pages_read: self.store.counters.pages_read.load(Ordering::Relaxed).into(),
            pages_written: self.store.counters.pages_written.load(Ordering::Relaxed).into(),
            connections: 0.into(),
        })
    }
}

/// Settings of the `tcp` backend.
#[derive(Clone)]
pub struct TcpConfig {
    /// Secret sent at `Auth`. Default: a random per-process token, which isolates this client's
    /// regions from every other client of a memnode started without a token file.
    pub token: String,
    /// How long the memnode may stay silent (no byte moving either way) before an operation
    /// fails with [`TransportError::Timeout`]. Default 1 s.
    pub timeout: Duration,
    /// How long to busy-poll for a reply before blocking. Spinning burns the waiting thread's CPU
    /// but saves a wake-up per round trip. Default 50 µs.
    pub spin: Duration,
    /// Frames of one batch in flight at once on a connection. Default 8.
    pub window: usize,
    /// Pages per read frame (at most 256). Smaller frames let a caller use the first pages of a
    /// batch sooner ([`Transport::read_pages_streaming`]) at a few more headers. Default 64.
    pub read_frame_pages: usize,
    /// `rdma://` addresses: the local RDMA device to use. Default: the first one.
    pub rdma_device: Option<String>,
}

impl fmt::Debug for TcpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConfig")
            .field("timeout", &self.timeout)
            .field("spin", &self.spin)
            .field("window", &self.window)
            .field("read_frame_pages", &self.read_frame_pages)
            .finish_non_exhaustive()
    }
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            token: random_token(),
            timeout: Duration::from_secs(1),
            spin: Duration::from_micros(50),
            window: 8,
            read_frame_pages: 64,
            rdma_device: None,
        }
    }
}

/// A hard-to-guess token from the kernel's random source.
pub fn random_token() -> String {
    let mut bytes = [0u8; 16];
    // getrandom never returns short for 16 bytes from the urandom pool once initialised.
    // SAFETY: `bytes` is a valid, writable 16-byte buffer for the duration of the call.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    assert_eq!(n, 16, "getrandom failed: {}", io::Error::last_os_error());
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `tcp` backend: a pool of authenticated connections to one memnode. Each operation takes a
/// connection (or opens one), pipelines its frames on it, and gives it back only if the exchange
/// completed cleanly; a connection that saw any error is dropped.
pub struct TcpTransport {
    addr: SocketAddr,
    name: String,
    config: TcpConfig,
    pool: Mutex<Vec<Conn>>,
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport").field("addr", &self.name).field("config", &self.config).finish_non_exhaustive()
    }
}

pub(crate) struct Conn {
    stream: TcpStream,
    next_tag: u64,
    buf: Vec<u8>,
}

/// An operation in progress: its name, for errors.
struct Call<'a> {
    t: &'a TcpTransport,
    op: &'static str,
}

impl Call<'_> {
    fn io(&self, e: io::Error) -> TransportError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.timeout(),
            _ => TransportError::Io { addr: self.t.name.clone(), op: self.op, source: e },
        }
    }
    fn timeout(&self) -> TransportError {
        TransportError::Timeout { addr: self.t.name.clone(), op: self.op, timeout: self.t.config.timeout }
    }
    fn protocol(&self, detail: String) -> TransportError {
        TransportError::Protocol { addr: self.t.name.clone(), op: self.op, detail }
    }

    fn read_exact(&self, stream: &mut TcpStream, mut buf: &mut [u8]) -> Result<(), TransportError> {
        // The socket's receive timeout is the bound: a memnode that sends nothing for that long
        // is declared silent, while a long transfer that keeps moving is not cut off.
        while !buf.is_empty() {
            match stream.read(buf) {
                Ok(0) => return Err(self.io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => buf = &mut buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        Ok(())
    }

    fn write_all(&self, stream: &mut TcpStream, buf: &[u8]) -> Result<(), TransportError> {
        stream.write_all(buf).map_err(|e| self.io(e))
    }

    /// Reads one reply header for `tag`, turning an error reply into [`TransportError::Refused`].
    fn reply_header(&self, conn: &mut Conn, op: Op, tag: u64) -> Result<Header, TransportError> {
        spin_until_readable(&conn.stream, self.t.config.spin);
        let mut head = [0u8; HEADER_LEN];
        self.read_exact(&mut conn.stream, &mut head)?;
        let h = Header::decode(&head).map_err(|e| self.protocol(e.to_string()))?;
        if h.tag.get() != tag {
            return Err(self.protocol(format!("reply tag {} for request {tag}", h.tag.get())));
        }
        if h.op.get() == proto::OP_ERROR {
            let mut msg = vec![0u8; h.payload_len()];
            self.read_exact(&mut conn.stream, &mut msg)?;
            return Err(TransportError::Refused {
                op: self.op,
                code: ErrorCode::from_u32(h.arg.get()),
                message: String::from_utf8_lossy(&msg).into_owned(),
            });
        }
        if h.op.get() != op as u16 | REPLY_BIT {
            return Err(self.protocol(format!("reply op {:#06x} to op {:?}", h.op.get(), op)));
        }
        Ok(h)
    }

    /// Sends one request frame and reads a reply without page data.
    fn simple(&self, conn: &mut Conn, op: Op, region: u64, payload: &[u8]) -> Result<Header, TransportError> {
        let tag = conn.tag();
        let h = Header::new(op as u16, tag, region, 0, payload.len());
        conn.buf.clear();
        conn.buf.extend_from_slice(h.as_bytes());
        conn.buf.extend_from_slice(payload);
        let buf = std::mem::take(&mut conn.buf);
        let sent = self.write_all(&mut conn.stream, &buf);
        conn.buf = buf;
        sent?;
        let reply = self.reply_header(conn, op, tag)?;
        let mut rest = vec![0u8; reply.payload_len()];
        self.read_exact(&mut conn.stream, &mut rest)?;
        conn.buf = rest;
        Ok(reply)
    }
}

impl Conn {
    fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }
}

impl TcpTransport {
    /// Connects to a memnode at `addr` (`HOST:PORT` or `tcp://HOST:PORT`) and authenticates, so a
    /// wrong address or token fails here with a clear error rather than on the first fault.
    pub fn connect(addr: &str, config: TcpConfig) -> Result<TcpTransport, TransportError> {
        let hostport = addr.strip_prefix("tcp://").unwrap_or(addr);
        if hostport.contains("://") {
            return Err(TransportError::BadAddress(addr.to_string()));
        }
        let resolved = hostport
            .to_socket_addrs()
            .map_err(|source| TransportError::Connect { addr: hostport.to_string(), source })?
            .next()
            .ok_or_else(|| TransportError::BadAddress(addr.to_string()))?;
        let t = TcpTransport { addr: resolved, name: hostport.to_string(), config, pool: Mutex::new(Vec::new()) };
        let conn = t.open()?;
        t.put(conn);
        Ok(t)
    }

    fn call(&self, op: &'static str) -> Call<'_> {
        Call { t: self, op }
    }

    fn open(&self) -> Result<Conn, TransportError> {
        let stream = TcpStream::connect_timeout(&self.addr, self.config.timeout)
            .map_err(|source| TransportError::Connect { addr: self.name.clone(), source })?;
        let setup = |source| TransportError::Connect { addr: self.name.clone(), source };
        stream.set_nodelay(true).map_err(setup)?;
        stream.set_read_timeout(Some(self.config.timeout)).map_err(setup)?;
        stream.set_write_timeout(Some(self.config.timeout)).map_err(setup)?;
        let mut conn = Conn { stream, next_tag: 0, buf: Vec::new() };
        let hello = self.call("hello");
        hello.simple(&mut conn, Op::Hello, 0, &[])?;
        let auth = self.call("authenticate");
        auth.simple(&mut conn, Op::Auth, 0, self.config.token.as_bytes())?;
        Ok(conn)
    }

    fn take(&self) -> Result<Conn, TransportError> {
        let pooled = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match pooled {
            Some(c) => Ok(c),
            None => self.open(),
        }
    }

    fn put(&self, conn: Conn) {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
    }

    /// Runs `f` on a pooled connection. The connection goes back to the pool on success, or on a
    /// refusal of a single-frame exchange (the stream is still in step); after any other error, or
    /// a refusal with further pipelined replies pending, it is dropped.
    fn with_conn<T>(
        &self,
        single_frame: bool,
        f: impl FnOnce(&mut Conn) -> Result<T, TransportError>,
    ) -> Result<T, TransportError> {
        let mut conn = self.take()?;
        let result = f(&mut conn);
        match &result {
            Ok(_) => self.put(conn),
            Err(TransportError::Refused { .. }) if single_frame => self.put(conn),
            Err(_) => {}
        }
        result
    }

    /// A new authenticated connection outside the pool (the RDMA transport keeps one for its
    /// queue pairs, which the memnode destroys when it closes).
    pub(crate) fn open_conn(&self) -> Result<Conn, TransportError> {
        self.open()
    }

    /// One single-frame request and its reply payload, on `conn` or a pooled connection.
    pub(crate) fn request(
        &self,
        conn: Option<&mut Conn>,
        name: &'static str,
        op: Op,
        region: u64,
        payload: &[u8],
    ) -> Result<(Header, Vec<u8>), TransportError> {
        let run = |conn: &mut Conn| {
            let h = self.call(name).simple(conn, op, region, payload)?;
            Ok((h, std::mem::take(&mut conn.buf)))
        };
        match conn {
            Some(conn) => run(conn),
            None => self.with_conn(true, run),
        }
    }

    fn simple_op(&self, name: &'static str, op: Op, region: u64, payload: &[u8]) -> Result<Header, TransportError> {
        self.with_conn(true, |conn| {
            let r = self.call(name).simple(conn, op, region, payload);
            conn.buf.clear();
            r
        })
    }
}

impl Transport for TcpTransport {
    fn kind(&self) -> &'static str {
        "tcp"
    }

    fn alloc(&self, size: u64) -> Result<RegionId, TransportError> {
        let h = self.simple_op("alloc", Op::Alloc, 0, &size.to_le_bytes())?;
        Ok(RegionId(h.region.get()))
    }

    fn resize(&self, region: RegionId, size: u64) -> Result<(), TransportError> {
        self.simple_op("resize", Op::Resize, region.0, &size.to_le_bytes()).map(drop)
    }

    fn free(&self, region: RegionId) -> Result<(), TransportError> {
        self.simple_op("free", Op::Free, region.0, &[]).map(drop)
    }

    fn stats(&self) -> Result<StatsReply, TransportError> {
        self.with_conn(true, |conn| {
            let call = self.call("stats");
            call.simple(conn, Op::Stats, 0, &[])?;
            let stats = StatsReply::read_from_bytes(&conn.buf).map_err(|_| call.protocol("short stats reply".into()));
            conn.buf.clear();
            stats
        })
    }

    fn read_pages(&self, region: RegionId, pages: &[u64], out: &mut [u8]) -> Result<(), TransportError> {
        self.read_pages_streaming(region, pages, out, &mut |_, _| {})
    }

    fn read_pages_streaming(
        &self,
        region: RegionId,
        pages: &[u64],
        out: &mut [u8],
        ready: &mut dyn FnMut(std::ops::Range<usize>, &[u8]),
    ) -> Result<(), TransportError> {
        assert_eq!(out.len(), pages.len() * PAGE_SIZE, "output buffer must hold every page");
        if pages.is_empty() {
            return Ok(());
        }
        let frame_pages = self.config.read_frame_pages.clamp(1, MAX_PAGES_PER_FRAME);
        self.with_conn(pages.len() <= frame_pages, |conn| {
            let call = self.call("read");
            let chunks: Vec<&[u64]> = pages.chunks(frame_pages).collect();
            let first_tag = conn.next_tag + 1;
            let window = self.config.window.max(1);
            let send = |conn: &mut Conn, i: usize| -> Result<(), TransportError> {
                let chunk = chunks[i];
                let tag = conn.tag();
                let count = u32::try_from(chunk.len()).expect("chunk ≤ MAX_PAGES_PER_FRAME");
                let h = Header::new(Op::Read as u16, tag, region.0, count, chunk.len() * 8);
                let mut frame = Vec::with_capacity(HEADER_LEN + chunk.len() * 8);
                frame.extend_from_slice(h.as_bytes());
                for p in chunk {
                    frame.extend_from_slice(&p.to_le_bytes());
                }
                call.write_all(&mut conn.stream, &frame)
            };
            // Keep up to `window` frames in flight: requests are tiny, replies up to 1 MiB each.
            for i in 0..chunks.len().min(window) {
                send(conn, i)?;
            }
            let mut descs = vec![PageDesc { page: 0.into(), crc: 0.into(), reserved: 0.into() }; MAX_PAGES_PER_FRAME];
            let mut offset = 0;
            for (i, chunk) in chunks.iter().enumerate() {
                let h = call.reply_header(conn, Op::Read, first_tag + i as u64)?;
                if h.arg.get() as usize != chunk.len() || h.payload_len() != chunk.len() * (16 + PAGE_SIZE) {
                    return Err(call.protocol(format!("{} pages for a request of {}", h.arg.get(), chunk.len())));
                }
                let descs = &mut descs[..chunk.len()];
                call.read_exact(&mut conn.stream, descs.as_mut_bytes())?;
                let data = &mut out[offset..offset + chunk.len() * PAGE_SIZE];
                call.read_exact(&mut conn.stream, data)?;
                if i + window < chunks.len() {
                    send(conn, i + window)?;
                }
                for (j, d) in descs.iter().enumerate() {
                    if d.page.get() != chunk[j] {
                        return Err(call.protocol(format!("page {} where {} was asked", d.page.get(), chunk[j])));
                    }
                    if proto::page_crc(&data[j * PAGE_SIZE..(j + 1) * PAGE_SIZE]) != d.crc.get() {
                        return Err(TransportError::Checksum { region, page: chunk[j] });
                    }
                }
                let first = offset / PAGE_SIZE;
                ready(first..first + chunk.len(), data);
                offset += chunk.len() * PAGE_SIZE;
            }
            Ok(())
        })
    }

    fn write_pages(&self, region: RegionId, pages: &[u64], data: &[u8]) -> Result<(), TransportError> {
        assert_eq!(data.len(), pages.len() * PAGE_SIZE, "data must hold every page");
        if pages.is_empty() {
            return Ok(());
        }
        self.with_conn(pages.len() <= MAX_PAGES_PER_FRAME, |conn| {
            let call = self.call("write");
            let first_tag = conn.next_tag + 1;
            let mut frame = Vec::with_capacity(HEADER_LEN + MAX_PAGES_PER_FRAME * (16 + PAGE_SIZE));
            let n_chunks = pages.len().div_ceil(MAX_PAGES_PER_FRAME);
            // Replies are 32 bytes each, so every frame can be sent before the first reply is read.
            for (i, chunk) in pages.chunks(MAX_PAGES_PER_FRAME).enumerate() {
                let base = i * MAX_PAGES_PER_FRAME * PAGE_SIZE;
                let bytes = &data[base..base + chunk.len() * PAGE_SIZE];
                let tag = conn.tag();
                let count = u32::try_from(chunk.len()).expect("chunk ≤ MAX_PAGES_PER_FRAME");
                frame.clear();
                frame.extend_from_slice(Header::new(Op::Write as u16, tag, region.0, count, chunk.len() * (16 + PAGE_SIZE)).as_bytes());
                for (j, p) in chunk.iter().enumerate() {
                    let crc = proto::page_crc(&bytes[j * PAGE_SIZE..(j + 1) * PAGE_SIZE]);
                    frame.extend_from_slice(PageDesc { page: (*p).into(), crc: crc.into(), reserved: 0.into() }.as_bytes());
                }
                frame.extend_from_slice(bytes);
                call.write_all(&mut conn.stream, &frame)?;
            }
            for i in 0..n_chunks {
                call.reply_header(conn, Op::Write, first_tag + i as u64)?;
            }
            Ok(())
        })
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
        assert_eq!(stats.allocated.get(), 2048 * 4096);
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
