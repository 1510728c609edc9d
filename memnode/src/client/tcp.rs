//! The `tcp` backend: a pool of authenticated connections to one memnode, all bound to one leased
//! session, renewed by a heartbeat thread while the transport lives.
//!
//! ```text
//!   TcpTransport ── Arc<Inner> { pool of Conn, session: name + nonce }
//!        │              ▲  every Conn: Hello, Auth, Session(name, nonce[, claim on the first])
//!        └─ heartbeat thread ("ebb-memnode-lease"): Renew every lease/3 while idle
//!   drop: stop the heartbeat, EndSession (the memnode frees what is left)
//! ```
//! A pooled connection idle for more than half the memnode's idle timeout is not reused (the
//! memnode may be closing it). A session taken over by another client ("lost") turns every later
//! operation into [`TransportError::SessionLost`].

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use zerocopy::{FromBytes, IntoBytes};

use super::{Transport, TransportError};
use crate::net::spin_until_readable;
use crate::proto::{
    self, ErrorCode, Header, Op, PageDesc, SessionReply, SessionRequest, StatsReply, UsageEntry, HEADER_LEN,
    MAX_PAGES_PER_FRAME, PAGE_SIZE, REPLY_BIT,
};
use crate::store::{RegionId, Ticket};

/// What a client does with regions a previous holder of its session left (a restarted client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leftovers {
    /// Free them at once (the client cannot use them: the default).
    Free,
    /// Keep them for this client (it knows their ids).
    Keep,
}

/// Settings of the `tcp` backend.
#[derive(Clone)]
pub struct TcpConfig {
    /// Secret sent at `Auth`. Default: a random per-process token, which isolates this client's
    /// regions from every other client of a memnode started without a token file.
    pub token: String,
    /// The session this client's regions belong to. A stable name (with a stable token) lets a
    /// restarted client claim what its previous run left; two live clients may not share one.
    /// Default: a random name, new for every transport.
    pub session: Option<String>,
    /// What to do with a previous holder's regions. Default [`Leftovers::Free`].
    pub leftovers: Leftovers,
    /// How long to keep trying to claim a session another client still holds (a crashed previous
    /// run of this client, whose lease has not lapsed yet). Default 15 s.
    pub claim_wait: Duration,
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
        // Never the token.
        f.debug_struct("TcpConfig")
            .field("session", &self.session)
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
            session: None,
            leftovers: Leftovers::Free,
            claim_wait: Duration::from_secs(15),
            timeout: Duration::from_secs(1),
            spin: Duration::from_micros(50),
            window: 8,
            read_frame_pages: 64,
            rdma_device: None,
        }
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // getrandom never returns short for up to 256 bytes from the urandom pool once initialised.
    // SAFETY: `bytes` is a valid, writable N-byte buffer for the duration of the call.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), N, 0) };
    assert_eq!(usize::try_from(n).ok(), Some(N), "getrandom failed: {}", io::Error::last_os_error());
    bytes
}

/// A hard-to-guess token from the kernel's random source.
pub fn random_token() -> String {
    random_bytes::<16>().iter().map(|b| format!("{b:02x}")).collect()
}

/// A random non-zero u64 (session nonces).
fn random_nonce() -> u64 {
    u64::from_le_bytes(random_bytes::<8>()).max(1)
}

/// The session this transport's connections are bound to.
struct Session {
    name: Vec<u8>,
    nonce: u64,
    lease: Duration,
    idle_timeout: Duration,
    /// Regions and bytes a previous holder left (freed or kept, as configured).
    leftovers: (u64, u64),
    /// Set when the memnode says this client no longer holds the session.
    lost: Mutex<Option<String>>,
}

pub(crate) struct Inner {
    addr: SocketAddr,
    name: String,
    config: TcpConfig,
    pool: Mutex<Vec<Conn>>,
    session: Session,
}

/// The `tcp` backend: a pool of authenticated connections to one memnode. Each operation takes a
/// connection (or opens one), pipelines its frames on it, and gives it back only if the exchange
/// completed cleanly; a connection that saw any error is dropped.
pub struct TcpTransport {
    inner: Arc<Inner>,
    heartbeat: Option<Heartbeat>,
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport")
            .field("addr", &self.inner.name)
            .field("session", &String::from_utf8_lossy(&self.inner.session.name))
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The heartbeat thread and how to stop it.
struct Heartbeat {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

pub(crate) struct Conn {
    stream: TcpStream,
    next_tag: u64,
    buf: Vec<u8>,
    last_used: Instant,
}

/// An operation in progress: its name, for errors.
struct Call<'a> {
    t: &'a Inner,
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

    /// Reads one reply header for `tag`, turning an error reply into [`TransportError::Refused`]
    /// (or, for a session the memnode refuses, [`TransportError::SessionLost`], noted for good).
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
            let message = String::from_utf8_lossy(&msg).into_owned();
            let code = ErrorCode::from_u32(h.arg.get());
            return Err(TransportError::Refused { op: self.op, code, message });
        }
        if h.op.get() != op as u16 | REPLY_BIT {
            return Err(self.protocol(format!("reply op {:#06x} to op {:?}", h.op.get(), op)));
        }
        Ok(h)
    }

    /// Sends one request frame and reads a reply without page data.
    fn simple(&self, conn: &mut Conn, op: Op, region: u64, payload: &[u8]) -> Result<Header, TransportError> {
        self.simple_arg(conn, op, region, 0, payload)
    }

    /// [`Self::simple`] with the header's `arg`.
    fn simple_arg(&self, conn: &mut Conn, op: Op, region: u64, arg: u32, payload: &[u8]) -> Result<Header, TransportError> {
        let tag = conn.tag();
        let h = Header::new(op as u16, tag, region, arg, payload.len());
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

fn session_payload(name: &[u8], nonce: u64, flags: u32) -> Vec<u8> {
    let req = SessionRequest { nonce: nonce.into(), flags: flags.into(), name_len: u32::try_from(name.len()).unwrap_or(0).into() };
    let mut p = req.as_bytes().to_vec();
    p.extend_from_slice(name);
    p
}

impl Inner {
    fn call(&self, op: &'static str) -> Call<'_> {
        Call { t: self, op }
    }

    /// A new connection: Hello, Auth, and (unless `session` is None) Session.
    fn open_with(&self, session: Option<(&[u8], u64, u32)>) -> Result<(Conn, Option<SessionReply>), TransportError> {
        let stream = TcpStream::connect_timeout(&self.addr, self.config.timeout)
            .map_err(|source| TransportError::Connect { addr: self.name.clone(), source })?;
        let setup = |source| TransportError::Connect { addr: self.name.clone(), source };
        stream.set_nodelay(true).map_err(setup)?;
        stream.set_read_timeout(Some(self.config.timeout)).map_err(setup)?;
        stream.set_write_timeout(Some(self.config.timeout)).map_err(setup)?;
        let mut conn = Conn { stream, next_tag: 0, buf: Vec::new(), last_used: Instant::now() };
        self.call("hello").simple(&mut conn, Op::Hello, 0, &[])?;
        self.call("authenticate").simple(&mut conn, Op::Auth, 0, self.config.token.as_bytes())?;
        let Some((name, nonce, flags)) = session else { return Ok((conn, None)) };
        let call = self.call("session");
        call.simple(&mut conn, Op::Session, 0, &session_payload(name, nonce, flags))?;
        let reply = SessionReply::read_from_bytes(&conn.buf).map_err(|_| call.protocol("a short session reply".into()))?;
        Ok((conn, Some(reply)))
    }

    fn lost(&self) -> Option<TransportError> {
        let lost = self.session.lost.lock().unwrap_or_else(|e| e.into_inner());
        lost.as_ref().map(|why| TransportError::SessionLost { addr: self.name.clone(), message: why.clone() })
    }

    /// Notes a refusal of the session: from now on every operation fails with it.
    fn check_lost(&self, e: TransportError) -> TransportError {
        if let TransportError::Refused { code: Some(ErrorCode::SessionRefused), message, .. } = &e {
            let mut lost = self.session.lost.lock().unwrap_or_else(|e| e.into_inner());
            lost.get_or_insert_with(|| message.clone());
            drop(lost);
            return self.lost().unwrap_or(e);
        }
        e
    }

    /// A new connection bound to this transport's session.
    fn open(&self) -> Result<Conn, TransportError> {
        if let Some(e) = self.lost() {
            return Err(e);
        }
        let s = &self.session;
        self.open_with(Some((&s.name, s.nonce, 0))).map(|(c, _)| c).map_err(|e| self.check_lost(e))
    }

    fn take(&self) -> Result<Conn, TransportError> {
        if let Some(e) = self.lost() {
            return Err(e);
        }
        // A connection idle for half the memnode's idle timeout may be closing under us: let it go.
        let stale = self.session.idle_timeout / 2;
        loop {
            let pooled = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match pooled {
                Some(c) if c.last_used.elapsed() < stale => return Ok(c),
                Some(_) => continue,
                None => return self.open(),
            }
        }
    }

    fn put(&self, mut conn: Conn) {
        conn.last_used = Instant::now();
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
    }

    /// Runs `f` on a pooled connection. The connection goes back to the pool on success, or on a
    /// refusal of a single-frame exchange (the stream is still in step); after any other error, or
    /// a refusal with further pipelined replies pending, it is dropped.
    fn with_conn<T>(&self, single_frame: bool, f: impl FnOnce(&mut Conn) -> Result<T, TransportError>) -> Result<T, TransportError> {
        let mut conn = self.take()?;
        let result = f(&mut conn);
        match &result {
            Ok(_) => self.put(conn),
            Err(TransportError::Refused { code, .. }) if single_frame && *code != Some(ErrorCode::SessionRefused) => self.put(conn),
            Err(_) => {}
        }
        result.map_err(|e| self.check_lost(e))
    }

    fn simple_op(&self, name: &'static str, op: Op, region: u64, payload: &[u8]) -> Result<Header, TransportError> {
        self.with_conn(true, |conn| {
            let r = self.call(name).simple(conn, op, region, payload);
            conn.buf.clear();
            r
        })
    }
}

impl TcpTransport {
    /// Connects to a memnode at `addr` (`HOST:PORT` or `tcp://HOST:PORT`), authenticates and
    /// claims the session, so a wrong address, token or a session held by another live client
    /// fails here with a clear error rather than on the first fault. Starts the heartbeat.
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
        let name = config.session.clone().map(String::into_bytes).unwrap_or_else(|| format!("anon-{}", random_token()).into_bytes());
        if name.is_empty() || name.len() > proto::MAX_SESSION_NAME {
            return Err(TransportError::BadSession(format!(
                "session name of {} bytes: use 1 to {} bytes",
                name.len(),
                proto::MAX_SESSION_NAME
            )));
        }
        let nonce = random_nonce();
        let mut inner = Inner {
            addr: resolved,
            name: hostport.to_string(),
            config,
            pool: Mutex::new(Vec::new()),
            session: Session {
                name,
                nonce,
                lease: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(120),
                leftovers: (0, 0),
                lost: Mutex::new(None),
            },
        };
        let flags = proto::SESSION_CLAIM
            | match inner.config.leftovers {
                Leftovers::Free => proto::SESSION_FREE_LEFTOVERS,
                Leftovers::Keep => 0,
            };
        // A crashed previous run of this client may still hold the session until its lease lapses.
        let deadline = Instant::now() + inner.config.claim_wait;
        let (conn, reply) = loop {
            match inner.open_with(Some((&inner.session.name.clone(), nonce, flags))) {
                Ok((conn, reply)) => break (conn, reply.expect("asked for a session")),
                Err(TransportError::Refused { code: Some(ErrorCode::SessionRefused), message, .. }) => {
                    if Instant::now() >= deadline {
                        return Err(TransportError::BadSession(message));
                    }
                    tracing::info!("waiting for the memnode session to be free: {message}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        };
        let ms = |v: u32| Duration::from_millis(u64::from(v));
        inner.session.lease = ms(reply.lease_ms.get()).max(Duration::from_millis(30));
        inner.session.idle_timeout = ms(reply.idle_timeout_ms.get()).max(Duration::from_secs(1));
        inner.session.leftovers = (reply.leftover_regions.get(), reply.leftover_bytes.get());
        if reply.leftover_regions.get() > 0 {
            let what = if flags & proto::SESSION_FREE_LEFTOVERS != 0 { "freed" } else { "kept" };
            tracing::info!(
                "memnode session {}: {what} {} regions ({} bytes) a previous run left",
                String::from_utf8_lossy(&inner.session.name),
                reply.leftover_regions.get(),
                reply.leftover_bytes.get()
            );
        }
        let inner = Arc::new(inner);
        inner.put(conn);
        let heartbeat = Heartbeat::start(&inner).map_err(|source| TransportError::Io { addr: inner.name.clone(), op: "start the lease heartbeat", source })?;
        Ok(TcpTransport { inner, heartbeat: Some(heartbeat) })
    }

    /// Regions (and their stored bytes) a previous holder of this session had left at connect.
    pub fn leftovers(&self) -> (u64, u64) {
        self.inner.session.leftovers
    }

    /// How long the memnode may stay silent before an operation fails.
    pub fn timeout(&self) -> Duration {
        self.inner.config.timeout
    }

    /// The session's lease, as the memnode gave it.
    pub fn lease(&self) -> Duration {
        self.inner.session.lease
    }

    /// A new authenticated connection outside the pool, bound to the session (the RDMA
    /// transport keeps one per queue pair, which the memnode destroys when it closes).
    pub(crate) fn open_conn(&self) -> Result<Conn, TransportError> {
        self.inner.open()
    }

    /// One single-frame request and its reply payload, on `conn` or a pooled connection. The reply
    /// is bound by `timeout` when given, else by the transport's timeout: setup operations (creating
    /// a queue pair, registering a region's memory) cost the memnode far more than a page and are
    /// not on any fault's path, so they get a longer bound.
    pub(crate) fn request(
        &self,
        conn: Option<&mut Conn>,
        name: &'static str,
        op: Op,
        region: u64,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<(Header, Vec<u8>), TransportError> {
        let run = |conn: &mut Conn| {
            let io = |source| TransportError::Io { addr: self.inner.name.clone(), op: name, source };
            if let Some(t) = timeout {
                conn.stream.set_read_timeout(Some(t)).map_err(io)?;
            }
            let result = self.inner.call(name).simple(conn, op, region, payload).map(|h| (h, std::mem::take(&mut conn.buf)));
            if timeout.is_some() {
                conn.stream.set_read_timeout(Some(self.inner.config.timeout)).map_err(io)?;
            }
            result
        };
        match conn {
            Some(conn) => run(conn).map_err(|e| self.inner.check_lost(e)),
            None => self.inner.with_conn(true, run),
        }
    }

    /// The sessions and usage this client's token may see: its identity's, or (an operator token)
    /// every identity's.
    pub fn usage(&self) -> Result<Vec<UsageEntry>, TransportError> {
        let (h, payload) = self.request(None, "usage", Op::Usage, 0, &[], None)?;
        let n = h.arg.get() as usize;
        let entries = <[UsageEntry]>::ref_from_bytes(&payload)
            .ok()
            .filter(|e| e.len() == n)
            .ok_or_else(|| TransportError::Protocol { addr: self.inner.name.clone(), op: "usage", detail: format!("{} bytes for {n} entries", payload.len()) })?;
        Ok(entries.to_vec())
    }
}

impl Heartbeat {
    fn start(inner: &Arc<Inner>) -> io::Result<Heartbeat> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let weak: Weak<Inner> = Arc::downgrade(inner);
        let every = inner.session.lease / 3;
        let s = stop.clone();
        let thread = std::thread::Builder::new().name("ebb-memnode-lease".into()).spawn(move || {
            loop {
                {
                    let (lock, cv) = &*s;
                    let stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                    let (stopped, _) = cv.wait_timeout_while(stopped, every, |stopped| !*stopped).unwrap_or_else(|e| e.into_inner());
                    if *stopped {
                        return;
                    }
                }
                let Some(inner) = weak.upgrade() else { return };
                match inner.simple_op("renew", Op::Renew, 0, &[]) {
                    Ok(_) => {}
                    Err(e @ TransportError::SessionLost { .. }) => {
                        tracing::error!("{e}");
                        return;
                    }
                    // The memnode is down or slow: its own clients notice; keep trying.
                    Err(e) => tracing::debug!("renewing the memnode session failed: {e}"),
                }
            }
        })?;
        Ok(Heartbeat { stop, thread })
    }

    fn stop(self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        let _ = self.thread.join();
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.stop();
        }
        // Ends the session: the memnode frees what is left at once instead of after the lease.
        if self.inner.lost().is_none()
            && let Err(e) = self.inner.simple_op("end session", Op::EndSession, 0, &[])
        {
            tracing::debug!("could not end the memnode session (its lease will): {e}");
        }
    }
}

impl Transport for TcpTransport {
    fn kind(&self) -> &'static str {
        "tcp"
    }

    fn alloc(&self, size: u64) -> Result<RegionId, TransportError> {
        let h = self.inner.simple_op("alloc", Op::Alloc, 0, &size.to_le_bytes())?;
        Ok(RegionId(h.region.get()))
    }

    fn resize(&self, region: RegionId, size: u64) -> Result<(), TransportError> {
        self.inner.simple_op("resize", Op::Resize, region.0, &size.to_le_bytes()).map(drop)
    }

    fn free(&self, region: RegionId) -> Result<(), TransportError> {
        self.inner.simple_op("free", Op::Free, region.0, &[]).map(drop)
    }

    fn grant(&self, region: RegionId, write: bool) -> Result<Ticket, TransportError> {
        let inner = &self.inner;
        inner.with_conn(true, |conn| {
            let call = inner.call("grant");
            call.simple_arg(conn, Op::Grant, region.0, u32::from(write), &[])?;
            let ticket = Ticket::try_from(conn.buf.as_slice()).map_err(|_| call.protocol("a grant reply must be a 16-byte ticket".into()));
            conn.buf.clear();
            ticket
        })
    }

    fn attach(&self, region: RegionId, ticket: &Ticket) -> Result<bool, TransportError> {
        self.inner.simple_op("attach", Op::Attach, region.0, ticket).map(|h| h.arg.get() == 1)
    }

    fn revoke(&self, region: RegionId, ticket: &Ticket) -> Result<(), TransportError> {
        self.inner.simple_op("revoke", Op::Revoke, region.0, ticket).map(drop)
    }

    fn stats(&self) -> Result<StatsReply, TransportError> {
        let inner = &self.inner;
        inner.with_conn(true, |conn| {
            let call = inner.call("stats");
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
        let inner = &self.inner;
        let frame_pages = inner.config.read_frame_pages.clamp(1, MAX_PAGES_PER_FRAME);
        // Allocation-free on its success path (fixed buffers on the stack): the pager's in-thread
        // fault path reads pages from inside a SIGBUS handler.
        inner.with_conn(pages.len() <= frame_pages, |conn| {
            let call = inner.call("read");
            let n_chunks = pages.len().div_ceil(frame_pages);
            let chunk_of = |i: usize| &pages[i * frame_pages..((i + 1) * frame_pages).min(pages.len())];
            let first_tag = conn.next_tag + 1;
            let window = inner.config.window.max(1);
            let send = |conn: &mut Conn, i: usize| -> Result<(), TransportError> {
                let chunk = chunk_of(i);
                let tag = conn.tag();
                let count = u32::try_from(chunk.len()).expect("chunk ≤ MAX_PAGES_PER_FRAME");
                let h = Header::new(Op::Read as u16, tag, region.0, count, chunk.len() * 8);
                let mut frame = [0u8; HEADER_LEN + MAX_PAGES_PER_FRAME * 8];
                frame[..HEADER_LEN].copy_from_slice(h.as_bytes());
                for (slot, p) in frame[HEADER_LEN..].chunks_exact_mut(8).zip(chunk) {
                    slot.copy_from_slice(&p.to_le_bytes());
                }
                call.write_all(&mut conn.stream, &frame[..HEADER_LEN + chunk.len() * 8])
            };
            // Keep up to `window` frames in flight: requests are tiny, replies up to 1 MiB each.
            for i in 0..n_chunks.min(window) {
                send(conn, i)?;
            }
            let mut descs = [PageDesc { page: 0.into(), crc: 0.into(), reserved: 0.into() }; MAX_PAGES_PER_FRAME];
            let mut offset = 0;
            for i in 0..n_chunks {
                let chunk = chunk_of(i);
                let h = call.reply_header(conn, Op::Read, first_tag + i as u64)?;
                if h.arg.get() as usize != chunk.len() || h.payload_len() != chunk.len() * (16 + PAGE_SIZE) {
                    return Err(call.protocol(format!("{} pages for a request of {}", h.arg.get(), chunk.len())));
                }
                let descs = &mut descs[..chunk.len()];
                call.read_exact(&mut conn.stream, descs.as_mut_bytes())?;
                let data = &mut out[offset..offset + chunk.len() * PAGE_SIZE];
                call.read_exact(&mut conn.stream, data)?;
                if i + window < n_chunks {
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
        let inner = &self.inner;
        inner.with_conn(pages.len() <= MAX_PAGES_PER_FRAME, |conn| {
            let call = inner.call("write");
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
