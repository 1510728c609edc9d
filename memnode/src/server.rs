//! The memnode server: a TCP listener and one thread per connection speaking [`crate::proto`].
//!
//! Each connection thread reads a frame, serves it from the [`Store`] and writes the reply into a
//! buffered writer that is flushed only when no further request is already buffered, so a client's
//! pipelined requests are answered with few syscalls. Any frame that cannot be decoded is answered
//! with an error reply and the connection is closed; other connections are unaffected. Nothing a
//! peer sends can panic the server.
//!
//! The memnode is shared by every runtime, so no peer may hold its resources for ever:
//! - the connection limit is checked *before* a thread is spawned (over it, the accept thread
//!   answers with an error and closes);
//! - a connection must finish `Hello` + `Auth` within the handshake deadline, measured from accept;
//! - an authenticated connection idle past the idle timeout is closed (one that carries an RDMA
//!   queue pair is silent by design: TCP keepalive watches it instead), and every write has a
//!   timeout, so a peer that stops reading cannot block its thread;
//! - each identity may hold a bounded number of connections;
//! - regions belong to leased sessions (see [`crate::lease`]): a reaper thread frees the regions of
//!   sessions whose lease and grace period have passed, and deregisters them from the RDMA device;
//!   an identity left with no regions and no connections also loses its protection domain.

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use zerocopy::{FromBytes, IntoBytes};

use crate::lease::{Binding, LeaseConfig, LeaseError, Leases};
use crate::net::spin_until_readable;
use crate::proto::{self, ErrorCode, FrameError, Header, Op, PageDesc, HEADER_LEN, PAGE_SIZE, REPLY_BIT, VERSION};
use crate::rdma::{Fabric, FabricError, Qp};
use crate::store::{Identity, Owner, RegionId, Store, StoreError};
pub use crate::tokens::{TokenFileError, Tokens};

/// TCP keepalive on a connection that carries a queue pair: first probe after this many seconds
/// of silence, then one every interval, and the peer is gone after this many unanswered probes.
const QP_KEEPALIVE_IDLE_S: u32 = 10;
const QP_KEEPALIVE_INTERVAL_S: u32 = 5;
const QP_KEEPALIVE_PROBES: u32 = 3;

/// How a memnode server behaves.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Without tokens any non-empty token is accepted and the token itself (its exact bytes) is the
    /// identity (a client's secret), so clients are still isolated from each other.
    pub tokens: Option<Tokens>,
    /// Connections served at once; further ones get an error reply from the accept thread and are
    /// closed, without a thread. Default 1024.
    pub max_connections: u64,
    /// Connections one identity may hold at once. Default 256.
    pub max_connections_per_identity: u64,
    /// Time from accept to a completed `Hello` + `Auth`; a connection that takes longer is closed.
    /// Default 2 s.
    pub handshake_timeout: Duration,
    /// An authenticated connection that sends nothing for this long is closed. Default 120 s.
    pub idle_timeout: Duration,
    /// Longest a reply may wait for the peer to read. Default 10 s.
    pub write_timeout: Duration,
    /// How long a connection thread busy-polls for the next request before blocking. Spinning
    /// costs a CPU while a client is active; it saves a wake-up per request. Default 50 µs.
    pub spin: Duration,
    /// Session leases (see [`crate::lease`]).
    pub leases: LeaseConfig,
    /// The RDMA device clients may read and write regions through (`--rdma-device`). Without
    /// it `RdmaConnect` and `RdmaRegion` are refused and only the TCP data path serves.
    pub rdma: Option<Arc<Fabric>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            tokens: None,
            max_connections: 1024,
            max_connections_per_identity: 256,
            handshake_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(10),
            spin: Duration::from_micros(50),
            leases: LeaseConfig::default(),
            rdma: None,
        }
    }
}

/// A running memnode server.
#[derive(Debug)]
pub struct Server {
    store: Arc<Store>,
    config: ServerConfig,
    leases: Leases,
    connections: AtomicU64,
    /// Open authenticated connections per identity.
    per_identity: Mutex<HashMap<Identity, u64>>,
    stop: AtomicBool,
    /// Wakes the reaper when the server stops.
    reaper_wake: (Mutex<()>, Condvar),
}

/// A server running on background threads (tests, benches and the `memnode` binary).
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    server: Arc<Server>,
    threads: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.server.store
    }

    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Blocks until the accept loop ends (it never does unless stopped).
    pub fn join(mut self) {
        if let Some(t) = self.threads.drain(..).next() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.server.stop.store(true, Ordering::SeqCst);
        self.server.reaper_wake.1.notify_all();
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Decrements the connection count when a connection (or a failed spawn) is done with its slot.
struct Slot<'a>(&'a AtomicU64);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Server {
    pub fn new(store: Arc<Store>, config: ServerConfig) -> Arc<Server> {
        Arc::new(Server {
            store,
            leases: Leases::new(config.leases),
            config,
            connections: AtomicU64::new(0),
            per_identity: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            reaper_wake: (Mutex::new(()), Condvar::new()),
        })
    }

    /// Starts accepting on `listener` and reaping expired sessions, in named background threads.
    pub fn spawn(self: &Arc<Self>, listener: TcpListener) -> io::Result<ServerHandle> {
        let addr = listener.local_addr()?;
        let server = self.clone();
        let accept = std::thread::Builder::new().name("memnode-accept".into()).spawn(move || server.accept_loop(listener))?;
        let server = self.clone();
        let reaper = std::thread::Builder::new().name("memnode-reaper".into()).spawn(move || server.reaper_loop())?;
        Ok(ServerHandle { addr, server: self.clone(), threads: vec![accept, reaper] })
    }

    fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        for stream in listener.incoming() {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let accepted = Instant::now();
            // The limit is enforced here, before any thread exists for the connection.
            if self.connections.fetch_add(1, Ordering::Relaxed) >= self.config.max_connections {
                let slot = Slot(&self.connections);
                refuse_at_accept(stream, "memnode is at its connection limit; retry later");
                drop(slot);
                continue;
            }
            let server = self.clone();
            let peer = stream.peer_addr().ok();
            let spawned = std::thread::Builder::new().name("memnode-conn".into()).spawn(move || {
                let _slot = Slot(&server.connections);
                let result = Connection::new(&server, stream, accepted).and_then(|mut c| c.serve());
                match result {
                    Ok(()) => tracing::debug!(?peer, "connection closed"),
                    Err(e) => tracing::debug!(?peer, "connection ended: {e}"),
                }
            });
            if let Err(e) = spawned {
                // The closure (and its slot) was never run: give the slot back.
                self.connections.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!("cannot spawn a connection thread: {e}");
            }
        }
    }

    /// Frees the regions of sessions whose lease and grace have passed, and regions left without a
    /// session, until the server stops.
    fn reaper_loop(self: Arc<Self>) {
        let lease = self.config.leases;
        let tick = (lease.lease.min(lease.grace) / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        loop {
            {
                let guard = self.reaper_wake.0.lock().unwrap_or_else(|e| e.into_inner());
                let _ = self.reaper_wake.1.wait_timeout(guard, tick);
            }
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            self.reap();
        }
    }

    /// One reaper pass (also called by tests).
    pub fn reap(&self) {
        for owner in self.leases.expired() {
            let (n, bytes) = self.free_owner(&owner);
            if n > 0 {
                tracing::info!("{owner}: lease and grace expired, freed {n} regions ({bytes} bytes stored)");
            }
            self.forget_identity_if_unused(&owner.identity);
        }
        // A region allocated on a connection whose session expired under it has no session: free it.
        for r in self.store.regions(None) {
            if !self.leases.has(&r.owner) {
                self.free_region(&r.owner, r.id).ok();
                self.forget_identity_if_unused(&r.owner.identity);
            }
        }
    }

    /// Frees one region, deregistering it from the RDMA device first.
    fn free_region(&self, owner: &Owner, id: RegionId) -> Result<(), StoreError> {
        match &self.config.rdma {
            Some(fabric) => fabric.change_region(id, || self.store.free(owner, id)),
            None => self.store.free(owner, id),
        }
    }

    fn free_owner(&self, owner: &Owner) -> (u64, u64) {
        let (mut n, mut bytes) = (0, 0);
        for r in self.store.regions(Some(&owner.identity)).into_iter().filter(|r| &r.owner == owner) {
            if self.free_region(owner, r.id).is_ok() {
                n += 1;
                bytes += r.stored;
            }
        }
        (n, bytes)
    }

    /// Drops the identity's RDMA protection domain once it has neither regions nor connections.
    fn forget_identity_if_unused(&self, identity: &Identity) {
        let Some(fabric) = &self.config.rdma else { return };
        let per = self.per_identity.lock().unwrap_or_else(|e| e.into_inner());
        if per.get(identity).copied().unwrap_or(0) == 0 && self.store.usage(identity).regions == 0 {
            fabric.forget_identity(identity);
        }
    }

    /// Sessions and their usage: every identity's (`None`), or one identity's.
    pub fn usage(&self, identity: Option<&Identity>) -> Vec<proto::UsageEntry> {
        let mut by_owner: HashMap<Owner, (u64, u64, u64)> = HashMap::new();
        for r in self.store.regions(identity) {
            let e = by_owner.entry(r.owner).or_default();
            e.0 += r.stored;
            e.1 += r.size;
            e.2 += 1;
        }
        let mut entries: Vec<(String, proto::UsageEntry)> = self
            .leases
            .list(|o| identity.is_none_or(|i| &o.identity == i))
            .into_iter()
            .filter(|s| by_owner.contains_key(&s.owner) || s.connections > 0)
            .map(|s| {
                let (stored, declared, regions) = by_owner.get(&s.owner).copied().unwrap_or_default();
                let label = s.owner.to_string();
                let mut name = [0u8; 96];
                let mut cut = label.len().min(name.len());
                while !label.is_char_boundary(cut) {
                    cut -= 1;
                }
                name[..cut].copy_from_slice(&label.as_bytes()[..cut]);
                let entry = proto::UsageEntry {
                    stored: stored.into(),
                    declared: declared.into(),
                    regions: regions.into(),
                    renewed_ms_ago: u64::try_from(s.renewed_ago.as_millis()).unwrap_or(u64::MAX).into(),
                    quota: self.store.config().quota(&s.owner.identity).into(),
                    state: if s.live { proto::USAGE_LIVE } else { proto::USAGE_GRACE }.into(),
                    connections: s.connections.into(),
                    name,
                };
                (label, entry)
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.into_iter().map(|(_, e)| e).collect()
    }

    fn stats(&self, identity: &Identity, operator: bool) -> proto::StatsReply {
        if operator {
            let t = self.store.total();
            return proto::StatsReply {
                capacity: self.store.capacity().into(),
                allocated: t.stored.into(),
                regions: t.regions.into(),
                pages_read: t.pages_read.into(),
                pages_written: t.pages_written.into(),
                connections: self.connections.load(Ordering::Relaxed).into(),
            };
        }
        // Everything here is the identity's own.
        let u = self.store.usage(identity);
        let conns = self.per_identity.lock().unwrap_or_else(|e| e.into_inner()).get(identity).copied().unwrap_or(0);
        proto::StatsReply {
            capacity: self.store.config().quota(identity).into(),
            allocated: u.stored.into(),
            regions: u.regions.into(),
            pages_read: u.pages_read.into(),
            pages_written: u.pages_written.into(),
            connections: conns.into(),
        }
    }
}

/// Answers a connection over the limit from the accept thread: one error frame, written without
/// blocking (it fits any socket buffer), then closed.
fn refuse_at_accept(stream: TcpStream, msg: &str) {
    let _ = stream.set_nonblocking(true);
    let h = Header::new(proto::OP_ERROR, 0, 0, ErrorCode::BadRequest as u32, msg.len());
    let mut frame = h.as_bytes().to_vec();
    frame.extend_from_slice(msg.as_bytes());
    let _ = (&stream).write_all(&frame);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// An authenticated connection: who it is and which session its regions belong to.
struct Authenticated {
    identity: Identity,
    operator: bool,
    owner: Owner,
    binding: Binding,
    /// A `Session` was sent (a connection binds once).
    named: bool,
}

enum State {
    New,
    Greeted,
    Authenticated(Box<Authenticated>),
}

/// What to do after a request has been answered.
enum Next {
    Continue,
    Close,
}

struct Connection<'s> {
    server: &'s Server,
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    state: State,
    /// When the handshake must be complete.
    handshake_deadline: Instant,
    payload: Vec<u8>,
    scratch: Vec<u8>,
    /// The queue pair this client connected over this connection (at most one); destroyed with it.
    qp: Option<Qp>,
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        if let State::Authenticated(a) = &self.state {
            {
                let mut per = self.server.per_identity.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(n) = per.get_mut(&a.identity) {
                    *n -= 1;
                    if *n == 0 {
                        per.remove(&a.identity);
                    }
                }
            }
            drop(self.qp.take());
            self.server.forget_identity_if_unused(&a.identity);
        }
    }
}

impl<'s> Connection<'s> {
    fn new(server: &'s Server, stream: TcpStream, accepted: Instant) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(server.config.write_timeout))?;
        Ok(Connection {
            server,
            reader: BufReader::with_capacity(1 << 18, stream.try_clone()?),
            writer: BufWriter::with_capacity(1 << 18, stream.try_clone()?),
            stream,
            state: State::New,
            handshake_deadline: accepted + server.config.handshake_timeout,
            payload: Vec::new(),
            scratch: Vec::new(),
            qp: None,
        })
    }

    fn authenticated(&self) -> bool {
        matches!(self.state, State::Authenticated(_))
    }

    /// Reads exactly `buf.len()` bytes. Before authentication every read is bounded by what is
    /// left of the handshake deadline (so a peer trickling bytes cannot stretch it); after, by the
    /// idle timeout. `Ok(false)`: a clean end of stream before the first byte (when `eof_ok`).
    fn read_exact(&mut self, buf: &mut [u8], eof_ok: bool) -> io::Result<bool> {
        let mut done = 0;
        while done < buf.len() {
            if !self.authenticated() {
                let left = self.handshake_deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "the handshake took too long"));
                }
                self.stream.set_read_timeout(Some(left))?;
            }
            match self.reader.read(&mut buf[done..]) {
                Ok(0) if done == 0 && eof_ok => return Ok(false),
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a frame")),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn serve(&mut self) -> io::Result<()> {
        let mut head = [0u8; HEADER_LEN];
        loop {
            if self.reader.buffer().is_empty() {
                self.writer.flush()?;
                if self.authenticated() {
                    spin_until_readable(&self.stream, self.server.config.spin);
                }
            }
            if !self.read_exact(&mut head, true)? {
                return self.writer.flush();
            }
            let header = match Header::decode(&head).and_then(|h| proto::check_request(&h).map(|op| (h, op))) {
                Ok(h) => h,
                Err(e) => return self.bad_frame(&head, &e),
            };
            let (header, op) = header;
            if header.version.get() != VERSION {
                let msg = format!(
                    "memnode speaks protocol version {VERSION}, the client {}: use matching Ebb builds",
                    header.version.get()
                );
                return self.error(header.tag.get(), header.region.get(), ErrorCode::UnsupportedVersion, &msg);
            }
            let mut payload = std::mem::take(&mut self.payload);
            payload.resize(header.payload_len(), 0);
            let read = self.read_exact(&mut payload, false);
            self.payload = payload;
            read?;
            if let Next::Close = self.dispatch(&header, op)? {
                return self.writer.flush();
            }
        }
    }

    fn bad_frame(&mut self, head: &[u8; HEADER_LEN], e: &FrameError) -> io::Result<()> {
        // Echo the tag when the bytes are long enough to have one, so a client can match it.
        let tag = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        self.error(tag, 0, ErrorCode::BadFrame, &e.to_string())
    }

    fn reply(&mut self, op: Op, tag: u64, region: u64, arg: u32, payload: &[u8]) -> io::Result<()> {
        let h = Header::new(op as u16 | REPLY_BIT, tag, region, arg, payload.len());
        self.writer.write_all(h.as_bytes())?;
        self.writer.write_all(payload)
    }

    fn error(&mut self, tag: u64, region: u64, code: ErrorCode, msg: &str) -> io::Result<()> {
        let h = Header::new(proto::OP_ERROR, tag, region, code as u32, msg.len());
        self.writer.write_all(h.as_bytes())?;
        self.writer.write_all(msg.as_bytes())?;
        self.writer.flush()
    }

    /// `Auth`: the identity is the token-file tenant, or (without a token file) the token's exact
    /// bytes. Returns the error to send when refused.
    fn authenticate(&self) -> Result<(Identity, bool), (ErrorCode, String)> {
        let token = &self.payload;
        let (identity, operator) = match &self.server.config.tokens {
            Some(tokens) => match tokens.entry(token) {
                Some(entry) => (Identity::Tenant(entry.name.clone()), entry.operator),
                None => return Err((ErrorCode::BadToken, "token refused: use a token from the memnode's token file".into())),
            },
            None if !token.is_empty() => (Identity::Secret(token.clone()), false),
            None => return Err((ErrorCode::BadToken, "an empty token is refused: send a secret".into())),
        };
        let mut per = self.server.per_identity.lock().unwrap_or_else(|e| e.into_inner());
        let n = per.entry(identity.clone()).or_default();
        if *n >= self.server.config.max_connections_per_identity {
            let max = self.server.config.max_connections_per_identity;
            return Err((ErrorCode::BadRequest, format!("this identity already has {max} connections open, the most allowed: close some")));
        }
        *n += 1;
        Ok((identity, operator))
    }

    fn dispatch(&mut self, h: &Header, op: Op) -> io::Result<Next> {
        let tag = h.tag.get();
        let region = RegionId(h.region.get());
        match (&self.state, op) {
            (State::New, Op::Hello) => {
                self.state = State::Greeted;
                self.reply(op, tag, 0, 0, &[])?;
                return Ok(Next::Continue);
            }
            (State::Greeted, Op::Auth) => {
                let (identity, operator) = match self.authenticate() {
                    Ok(who) => who,
                    Err((code, msg)) => {
                        self.error(tag, 0, code, &msg)?;
                        return Ok(Next::Close);
                    }
                };
                let owner = Owner::new(identity.clone(), b"");
                // The default session has no holder (nonce 0): binding to it cannot be refused.
                let (binding, _) = self.server.leases.bind_session(&owner, 0, true).expect("the default session has no holder");
                self.state = State::Authenticated(Box::new(Authenticated { identity, operator, owner, binding, named: false }));
                self.stream.set_read_timeout(Some(self.server.config.idle_timeout))?;
                self.reply(op, tag, 0, 0, &[])?;
                return Ok(Next::Continue);
            }
            (State::Authenticated(_), Op::Hello | Op::Auth) => {
                self.error(tag, 0, ErrorCode::BadRequest, "already greeted and authenticated")?;
                return Ok(Next::Close);
            }
            (State::Authenticated(_), _) => {}
            (State::New, _) => {
                self.error(tag, 0, ErrorCode::NotAuthenticated, "send Hello first")?;
                return Ok(Next::Close);
            }
            (State::Greeted, _) => {
                self.error(tag, 0, ErrorCode::NotAuthenticated, "authenticate with a token first")?;
                return Ok(Next::Close);
            }
        }
        let State::Authenticated(auth) = &self.state else { unreachable!("checked above") };
        let renewed = auth.binding.renew();
        let (owner, identity, operator) = (auth.owner.clone(), auth.identity.clone(), auth.operator);
        if let Err(e) = renewed {
            self.error(tag, 0, ErrorCode::SessionRefused, &format!("{owner}: {e}"))?;
            return Ok(Next::Close);
        }
        let store = self.server.store.clone();
        let fabric = self.server.config.rdma.clone();
        // A free or resize first deregisters the region's RDMA memory region, if any.
        let change = |f: &dyn Fn() -> Result<u64, StoreError>| match &fabric {
            Some(fabric) => fabric.change_region(region, f),
            None => f(),
        };
        let result = match op {
            Op::Alloc => store.alloc(&owner, proto::decode_u64(&self.payload).unwrap_or(0)).map(|id| id.0),
            Op::Resize => {
                let size = proto::decode_u64(&self.payload).unwrap_or(0);
                change(&|| store.resize(&owner, region, size).map(|()| region.0))
            }
            Op::Free => change(&|| store.free(&owner, region).map(|()| region.0)),
            Op::RdmaConnect | Op::RdmaRegion => return self.rdma(fabric.as_deref(), &store, &owner, h, op),
            Op::Stats => {
                let stats = self.server.stats(&identity, operator);
                self.reply(op, tag, 0, 0, stats.as_bytes())?;
                return Ok(Next::Continue);
            }
            Op::Usage => {
                let entries = self.server.usage((!operator).then_some(&identity));
                let fit = proto::MAX_PAYLOAD / size_of::<proto::UsageEntry>();
                let entries = &entries[..entries.len().min(fit)];
                self.reply(op, tag, 0, u32::try_from(entries.len()).unwrap_or(0), entries.as_bytes())?;
                return Ok(Next::Continue);
            }
            Op::Session => return self.session(h),
            Op::Renew => {
                self.reply(op, tag, 0, 0, &[])?;
                return Ok(Next::Continue);
            }
            Op::EndSession => {
                let (n, _) = self.server.free_owner(&owner);
                self.server.leases.end(&owner);
                self.reply(op, tag, 0, u32::try_from(n).unwrap_or(u32::MAX), &[])?;
                return Ok(Next::Close);
            }
            Op::Grant => {
                let ticket = match store.grant(&owner, region, h.arg.get() == 1) {
                    Ok(t) => t,
                    Err(e) => {
                        self.error(tag, region.0, e.code(), &e.to_string())?;
                        return Ok(Next::Continue);
                    }
                };
                self.reply(op, tag, region.0, 0, &ticket)?;
                return Ok(Next::Continue);
            }
            Op::Attach => {
                let ticket: crate::store::Ticket = self.payload.as_slice().try_into().unwrap_or_default();
                match store.attach(&owner, region, &ticket) {
                    Ok(write) => self.reply(op, tag, region.0, u32::from(write), &[])?,
                    Err(e) => self.error(tag, region.0, e.code(), &e.to_string())?,
                }
                return Ok(Next::Continue);
            }
            Op::Revoke => {
                let ticket: crate::store::Ticket = self.payload.as_slice().try_into().unwrap_or_default();
                store.revoke(&owner, region, &ticket).map(|()| region.0)
            }
            Op::Read => return self.read(&store, &owner, h, region),
            Op::Write => return self.write(&store, &owner, h, region),
            Op::Hello | Op::Auth => unreachable!("handled above"),
        };
        match result {
            Ok(region) => self.reply(op, tag, region, 0, &[])?,
            Err(e) => self.error(tag, region.0, e.code(), &e.to_string())?,
        }
        Ok(Next::Continue)
    }

    /// `Session`: binds this connection to a named session of its identity (once).
    fn session(&mut self, h: &Header) -> io::Result<Next> {
        let tag = h.tag.get();
        let State::Authenticated(auth) = &self.state else { unreachable!("authenticated") };
        let (identity, named) = (auth.identity.clone(), auth.named);
        let Some((req, name)) = proto::session_request(&self.payload) else {
            self.error(tag, 0, ErrorCode::BadFrame, "the session request's name length does not match its payload")?;
            return Ok(Next::Close);
        };
        if name.is_empty() || req.nonce.get() == 0 || named {
            let msg = "a session needs a name and a non-zero nonce, and a connection binds to one session once";
            self.error(tag, 0, ErrorCode::BadRequest, msg)?;
            return Ok(Next::Close);
        }
        let owner = Owner::new(identity, name);
        let flags = req.flags.get();
        let claim = flags & proto::SESSION_CLAIM != 0;
        let (binding, claimed) = match self.server.leases.bind_session(&owner, req.nonce.get(), claim) {
            Ok(b) => b,
            Err(e @ (LeaseError::Held { .. } | LeaseError::Lost)) => {
                self.error(tag, 0, ErrorCode::SessionRefused, &format!("{owner}: {e}"))?;
                return Ok(Next::Close);
            }
        };
        let (mut leftover_regions, mut leftover_bytes) = (0, 0);
        if claimed.taken_over || claim {
            let left: Vec<_> = self.server.store.regions(Some(&owner.identity)).into_iter().filter(|r| r.owner == owner).collect();
            leftover_regions = left.len() as u64;
            leftover_bytes = left.iter().map(|r| r.stored).sum();
            if flags & proto::SESSION_FREE_LEFTOVERS != 0 && !left.is_empty() {
                self.server.free_owner(&owner);
                tracing::info!("{owner}: claimed again; freed the {leftover_regions} regions ({leftover_bytes} bytes) a previous holder left");
            }
        }
        if let State::Authenticated(auth) = &mut self.state {
            auth.owner = owner;
            auth.binding = binding;
            auth.named = true;
        }
        let cfg = self.server.config.leases;
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let reply = proto::SessionReply {
            lease_ms: ms(cfg.lease).into(),
            grace_ms: ms(cfg.grace).into(),
            idle_timeout_ms: ms(self.server.config.idle_timeout).into(),
            reserved: 0.into(),
            leftover_regions: leftover_regions.into(),
            leftover_bytes: leftover_bytes.into(),
        };
        self.reply(Op::Session, tag, 0, 0, reply.as_bytes())?;
        Ok(Next::Continue)
    }

    fn rdma(&mut self, fabric: Option<&Fabric>, store: &Store, owner: &Owner, h: &Header, op: Op) -> io::Result<Next> {
        let (tag, region) = (h.tag.get(), RegionId(h.region.get()));
        let Some(fabric) = fabric else {
            let msg = "this memnode has no RDMA device: start it with --rdma-device DEV, or use a tcp:// address";
            self.error(tag, region.0, ErrorCode::BadRequest, msg)?;
            return Ok(Next::Continue);
        };
        let reply = if op == Op::RdmaConnect {
            if self.qp.is_some() {
                self.error(tag, 0, ErrorCode::BadRequest, "this connection already has a queue pair: open one connection per queue pair")?;
                return Ok(Next::Close);
            }
            let peer = proto::QpInfo::read_from_bytes(&self.payload).unwrap_or_default();
            let connected = fabric.connect(&owner.identity, &peer).map_err(FabricError::from);
            match connected {
                Ok((qp, info)) => {
                    self.qp = Some(qp);
                    self.carry_queue_pair()?;
                    Ok(info.as_bytes().to_vec())
                }
                Err(e) => Err(e),
            }
        } else {
            fabric.region_key(store, owner, region).map(|k| k.as_bytes().to_vec())
        };
        match reply {
            Ok(payload) => self.reply(op, tag, region.0, 0, &payload)?,
            Err(FabricError::Store(e)) => self.error(tag, region.0, e.code(), &e.to_string())?,
            Err(FabricError::Rdma(e)) => self.error(tag, region.0, ErrorCode::BadRequest, &format!("RDMA on {}: {e}", fabric.device()))?,
        }
        Ok(Next::Continue)
    }

    /// From here on this connection is the lifeline of its queue pair, whose traffic bypasses the
    /// socket: the socket stays silent for as long as the queue pair is used, so silence is not
    /// idleness and the idle timeout no longer applies (it closed every RDMA lane after two
    /// minutes). TCP keepalive notices a peer that vanished instead, within about 25 s, and the
    /// queue pair goes with the connection.
    fn carry_queue_pair(&mut self) -> io::Result<()> {
        use nix::sys::socket::{setsockopt, sockopt};
        self.stream.set_read_timeout(None)?;
        setsockopt(&self.stream, sockopt::KeepAlive, &true)?;
        setsockopt(&self.stream, sockopt::TcpKeepIdle, &QP_KEEPALIVE_IDLE_S)?;
        setsockopt(&self.stream, sockopt::TcpKeepInterval, &QP_KEEPALIVE_INTERVAL_S)?;
        setsockopt(&self.stream, sockopt::TcpKeepCount, &QP_KEEPALIVE_PROBES)?;
        Ok(())
    }

    fn read(&mut self, store: &Store, owner: &Owner, h: &Header, region: RegionId) -> io::Result<Next> {
        let tag = h.tag.get();
        let count = h.arg.get() as usize;
        let pages: Vec<u64> = proto::page_list(&self.payload).unwrap_or(&[]).iter().map(|p| p.get()).collect();
        let mut descs = vec![PageDesc { page: 0.into(), crc: 0.into(), reserved: 0.into() }; count];
        self.scratch.resize(count * PAGE_SIZE, 0);
        let scratch = &mut self.scratch;
        let result = store.read_pages_with(owner, region, pages.iter().copied(), |i, page| {
            descs[i] = PageDesc { page: pages[i].into(), crc: proto::page_crc(page).into(), reserved: 0.into() };
            scratch[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].copy_from_slice(page);
        });
        match result {
            Ok(()) => {
                let rh = Header::new(Op::Read as u16 | REPLY_BIT, tag, region.0, h.arg.get(), count * (16 + PAGE_SIZE));
                self.writer.write_all(rh.as_bytes())?;
                self.writer.write_all(descs.as_bytes())?;
                self.writer.write_all(&self.scratch)?;
            }
            Err(e) => self.error(tag, region.0, e.code(), &e.to_string())?,
        }
        Ok(Next::Continue)
    }

    fn write(&mut self, store: &Store, owner: &Owner, h: &Header, region: RegionId) -> io::Result<Next> {
        let tag = h.tag.get();
        let count = h.arg.get() as usize;
        let Some((descs, data)) = proto::split_pages(&self.payload, count) else {
            // check_request guarantees the shape; this is unreachable in practice.
            self.error(tag, region.0, ErrorCode::BadFrame, "write payload does not match its page count")?;
            return Ok(Next::Close);
        };
        let mut pages = Vec::with_capacity(count);
        for (i, d) in descs.iter().enumerate() {
            let page = &data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
            if proto::page_crc(page) != d.crc.get() {
                let msg = format!("page {} arrived with a bad checksum; nothing of this write was stored", d.page.get());
                self.error(tag, region.0, ErrorCode::BadChecksum, &msg)?;
                return Ok(Next::Continue);
            }
            pages.push(d.page.get());
        }
        match store.write_pages(owner, region, &pages, data) {
            Ok(()) => self.reply(Op::Write, tag, region.0, h.arg.get(), &[])?,
            Err(e) => self.error(tag, region.0, e.code(), &e.to_string())?,
        }
        Ok(Next::Continue)
    }
}
