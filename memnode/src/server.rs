//! The memnode server: a TCP listener and one thread per connection speaking [`crate::proto`].
//!
//! Each connection thread reads a frame, serves it from the [`Store`] and writes the reply into a
//! buffered writer that is flushed only when no further request is already buffered, so a client's
//! pipelined requests are answered with few syscalls. Any frame that cannot be decoded is answered
//! with an error reply and the connection is closed; other connections are unaffected. Nothing a
//! peer sends can panic the server.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use zerocopy::{FromBytes, IntoBytes};

use crate::net::{read_frame_start, spin_until_readable};
use crate::proto::{self, ErrorCode, FrameError, Header, Op, PageDesc, HEADER_LEN, PAGE_SIZE, REPLY_BIT, VERSION};
use crate::rdma::{Fabric, FabricError, Qp};
use crate::store::{Identity, RegionId, Store, StoreError};
pub use crate::tokens::{TokenFileError, Tokens};

/// How a memnode server behaves.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Without tokens any non-empty token is accepted and the token itself is the identity (a
    /// client's secret), so clients are still isolated from each other.
    pub tokens: Option<Tokens>,
    /// Connections served at once; further ones get an error reply and are closed. Default 1024.
    pub max_connections: u64,
    /// How long a connection thread busy-polls for the next request before blocking. Spinning
    /// costs a CPU while a client is active; it saves a wake-up per request. Default 50 µs.
    pub spin: Duration,
    /// The RDMA device clients may read and write regions through (`--rdma-device`). Without
    /// it `RdmaConnect` and `RdmaRegion` are refused and only the TCP data path serves.
    pub rdma: Option<Arc<Fabric>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { tokens: None, max_connections: 1024, spin: Duration::from_micros(50), rdma: None }
    }
}

/// A running memnode server.
#[derive(Debug)]
pub struct Server {
    store: Arc<Store>,
    config: ServerConfig,
    connections: AtomicU64,
    stop: AtomicBool,
}

/// A server running on a background thread (tests, benches and the `memnode` binary).
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.server.store
    }

    /// Blocks until the accept loop ends (it never does unless stopped).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.server.stop.store(true, Ordering::SeqCst);
            // Wake the accept loop so it sees the flag.
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
            let _ = t.join();
        }
    }
}

impl Server {
    pub fn new(store: Arc<Store>, config: ServerConfig) -> Arc<Server> {
        Arc::new(Server { store, config, connections: AtomicU64::new(0), stop: AtomicBool::new(false) })
    }

    /// Starts accepting on `listener` in a named background thread.
    pub fn spawn(self: &Arc<Self>, listener: TcpListener) -> io::Result<ServerHandle> {
        let addr = listener.local_addr()?;
        let server = self.clone();
        let thread = std::thread::Builder::new()
            .name("memnode-accept".into())
            .spawn(move || server.accept_loop(listener))?;
        Ok(ServerHandle { addr, server: self.clone(), thread: Some(thread) })
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
            let server = self.clone();
            let peer = stream.peer_addr().ok();
            let spawned = std::thread::Builder::new().name("memnode-conn".into()).spawn(move || {
                let active = server.connections.fetch_add(1, Ordering::Relaxed) + 1;
                let result = if active > server.config.max_connections {
                    Connection::new(&server, stream).and_then(|mut c| {
                        c.error(0, 0, ErrorCode::BadRequest, "memnode is at its connection limit; retry later")
                    })
                } else {
                    Connection::new(&server, stream).and_then(|mut c| c.serve())
                };
                server.connections.fetch_sub(1, Ordering::Relaxed);
                match result {
                    Ok(()) => tracing::debug!(?peer, "connection closed"),
                    Err(e) => tracing::debug!(?peer, "connection ended: {e}"),
                }
            });
            if let Err(e) = spawned {
                tracing::warn!("cannot spawn a connection thread: {e}");
            }
        }
    }

    fn stats(&self) -> proto::StatsReply {
        let (allocated, regions) = self.store.usage();
        proto::StatsReply {
            capacity: self.store.capacity().into(),
            allocated: allocated.into(),
            regions: regions.into(),
            pages_read: self.store.counters.pages_read.load(Ordering::Relaxed).into(),
            pages_written: self.store.counters.pages_written.load(Ordering::Relaxed).into(),
            connections: self.connections.load(Ordering::Relaxed).into(),
        }
    }
}

fn store_error_code(e: &StoreError) -> ErrorCode {
    match e {
        StoreError::NoSuchRegion(_) => ErrorCode::NoSuchRegion,
        StoreError::OutOfCapacity { .. } => ErrorCode::OutOfCapacity,
        StoreError::Map { .. } => ErrorCode::OutOfCapacity,
        StoreError::BadSize { .. } | StoreError::OutOfRange { .. } => ErrorCode::OutOfRange,
    }
}

enum State {
    New,
    Greeted,
    Authenticated(Identity),
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
    payload: Vec<u8>,
    scratch: Vec<u8>,
    /// Queue pairs this client connected over this connection; destroyed with it.
    qps: Vec<Qp>,
}

impl<'s> Connection<'s> {
    fn new(server: &'s Server, stream: TcpStream) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        Ok(Connection {
            server,
            reader: BufReader::with_capacity(1 << 18, stream.try_clone()?),
            writer: BufWriter::with_capacity(1 << 18, stream.try_clone()?),
            stream,
            state: State::New,
            payload: Vec::new(),
            scratch: Vec::new(),
            qps: Vec::new(),
        })
    }

    fn serve(&mut self) -> io::Result<()> {
        let mut head = [0u8; HEADER_LEN];
        loop {
            if self.reader.buffer().is_empty() {
                self.writer.flush()?;
                spin_until_readable(&self.stream, self.server.config.spin);
            }
            if !read_frame_start(&mut self.reader, &mut head)? {
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
            self.payload.resize(header.payload_len(), 0);
            self.reader.read_exact(&mut self.payload)?;
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

    fn dispatch(&mut self, h: &Header, op: Op) -> io::Result<Next> {
        let tag = h.tag.get();
        let region = RegionId(h.region.get());
        let identity = match (&self.state, op) {
            (State::New, Op::Hello) => {
                self.state = State::Greeted;
                self.reply(op, tag, 0, 0, &[])?;
                return Ok(Next::Continue);
            }
            (State::Greeted, Op::Auth) => {
                let token = String::from_utf8_lossy(&self.payload).into_owned();
                let identity = match &self.server.config.tokens {
                    Some(tokens) => tokens.name(&token).map(|name| Identity(format!("tenant:{name}"))),
                    None if !token.is_empty() => Some(Identity(format!("secret:{token}"))),
                    None => None,
                };
                let Some(identity) = identity else {
                    self.error(tag, 0, ErrorCode::BadToken, "token refused: use a token from the memnode's token file")?;
                    return Ok(Next::Close);
                };
                self.state = State::Authenticated(identity);
                self.reply(op, tag, 0, 0, &[])?;
                return Ok(Next::Continue);
            }
            (State::Authenticated(id), op) if !matches!(op, Op::Hello | Op::Auth) => id.clone(),
            (State::New, _) => {
                self.error(tag, 0, ErrorCode::NotAuthenticated, "send Hello first")?;
                return Ok(Next::Close);
            }
            (State::Greeted, _) => {
                self.error(tag, 0, ErrorCode::NotAuthenticated, "authenticate with a token first")?;
                return Ok(Next::Close);
            }
            (State::Authenticated(_), _) => {
                self.error(tag, 0, ErrorCode::BadRequest, "already greeted and authenticated")?;
                return Ok(Next::Close);
            }
        };
        let store = self.server.store.clone();
        let fabric = self.server.config.rdma.clone();
        // A free or resize first deregisters the region's RDMA memory region, if any.
        let change = |f: &dyn Fn() -> Result<u64, StoreError>| match &fabric {
            Some(fabric) => fabric.change_region(region, f),
            None => f(),
        };
        let result = match op {
            Op::Alloc => store.alloc(&identity, proto::decode_u64(&self.payload).unwrap_or(0)).map(|id| id.0),
            Op::Resize => {
                let size = proto::decode_u64(&self.payload).unwrap_or(0);
                change(&|| store.resize(&identity, region, size).map(|()| region.0))
            }
            Op::Free => change(&|| store.free(&identity, region).map(|()| region.0)),
            Op::RdmaConnect | Op::RdmaRegion => return self.rdma(fabric.as_deref(), &store, &identity, h, op),
            Op::Stats => {
                let stats = self.server.stats();
                self.reply(op, tag, 0, 0, stats.as_bytes())?;
                return Ok(Next::Continue);
            }
            Op::Read => return self.read(&store, &identity, h, region),
            Op::Write => return self.write(&store, &identity, h, region),
            Op::Hello | Op::Auth => unreachable!("handled above"),
        };
        match result {
            Ok(region) => self.reply(op, tag, region, 0, &[])?,
            Err(e) => self.error(tag, region.0, store_error_code(&e), &e.to_string())?,
        }
        Ok(Next::Continue)
    }

    fn rdma(&mut self, fabric: Option<&Fabric>, store: &Store, identity: &Identity, h: &Header, op: Op) -> io::Result<Next> {
        let (tag, region) = (h.tag.get(), RegionId(h.region.get()));
        let Some(fabric) = fabric else {
            let msg = "this memnode has no RDMA device: start it with --rdma-device DEV, or use a tcp:// address";
            self.error(tag, region.0, ErrorCode::BadRequest, msg)?;
            return Ok(Next::Continue);
        };
        let reply = if op == Op::RdmaConnect {
            let peer = proto::QpInfo::read_from_bytes(&self.payload).unwrap_or_default();
            fabric.connect(identity, &peer).map_err(FabricError::from).map(|(qp, info)| {
                self.qps.push(qp);
                info.as_bytes().to_vec()
            })
        } else {
            fabric.region_key(store, identity, region).map(|k| k.as_bytes().to_vec())
        };
        match reply {
            Ok(payload) => self.reply(op, tag, region.0, 0, &payload)?,
            Err(FabricError::Store(e)) => self.error(tag, region.0, store_error_code(&e), &e.to_string())?,
            Err(FabricError::Rdma(e)) => self.error(tag, region.0, ErrorCode::BadRequest, &format!("RDMA on {}: {e}", fabric.device()))?,
        }
        Ok(Next::Continue)
    }

    fn read(&mut self, store: &Store, identity: &Identity, h: &Header, region: RegionId) -> io::Result<Next> {
        let tag = h.tag.get();
        let count = h.arg.get() as usize;
        let pages: Vec<u64> = proto::page_list(&self.payload).unwrap_or(&[]).iter().map(|p| p.get()).collect();
        let mut descs = vec![PageDesc { page: 0.into(), crc: 0.into(), reserved: 0.into() }; count];
        self.scratch.resize(count * PAGE_SIZE, 0);
        let scratch = &mut self.scratch;
        let result = store.read_pages_with(identity, region, pages.iter().copied(), |i, page| {
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
            Err(e) => self.error(tag, region.0, store_error_code(&e), &e.to_string())?,
        }
        Ok(Next::Continue)
    }

    fn write(&mut self, store: &Store, identity: &Identity, h: &Header, region: RegionId) -> io::Result<Next> {
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
        match store.write_pages(identity, region, &pages, data) {
            Ok(()) => self.reply(Op::Write, tag, region.0, h.arg.get(), &[])?,
            Err(e) => self.error(tag, region.0, store_error_code(&e), &e.to_string())?,
        }
        Ok(Next::Continue)
    }
}
