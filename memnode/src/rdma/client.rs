//! The `rdma` transport: the control plane (connect, authenticate, allocate, free, stats) over
//! the memnode's TCP protocol, pages by one-sided RDMA READ and WRITE on reliable connections.
//!
//! ```text
//!   RdmaTransport ── TcpTransport (control) ── RdmaConnect ×LANES on one dedicated connection
//!     lanes: [ queue pair + 256 KiB registered bounce buffer (4 slots of 16 pages) ] × LANES
//!   read:  runs of neighbouring pages → READ work requests of up to 16 pages, 4 in flight,
//!          completions polled; each completed run is copied out and handed to `ready`
//!   write: pages copied into slots → WRITE work requests, completions polled
//! ```
//! A failed or unknown completion, a poll error or a timeout marks the lane broken: nothing is read
//! from its buffer again until the lane is rebuilt. The next user of a broken lane destroys its
//! queue pair (after which the device can no longer write into the buffer, whatever was in
//! flight), closes its control connection (the memnode destroys its end) and connects a new one.
//! Pages carry no checksum here: RoCE's ICRC and InfiniBand's link CRCs cover every packet.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use memmap2::MmapMut;
use zerocopy::{FromBytes, IntoBytes};

use super::verbs::{self, Context, Mr, Pd, Qp, RdmaError};
use crate::client::{Conn, TcpConfig, TcpTransport, Transport, TransportError};
use crate::proto::{ErrorCode, Op, QpInfo, RegionKey, StatsReply, PAGE_SIZE};
use crate::store::{RegionId, Ticket};

/// Queue pairs per transport: fault-handler threads transfer in parallel on different lanes.
const LANES: usize = 2;
/// Pages per work request (neighbouring pages are batched up to this). 64 KiB per request and 4
/// requests in flight per lane (256 KiB) is far above the bandwidth-delay product of an FDR link
/// (~14 KB at 2 µs), while bursts stay small enough for a link that drops what it cannot take:
/// RC over soft-RoCE has no congestion control, and between two qemu guests a burst larger than
/// the receiving emulator's socket buffer is lost and resent (go-back-N). With 64-page requests and
/// 16 in flight (8 MiB per two lanes) transfers stalled past the memnode timeout (docs/rdma.md).
const CHUNK_PAGES: usize = 16;
const CHUNK_BYTES: usize = CHUNK_PAGES * PAGE_SIZE;
/// Work requests in flight per lane.
const SLOTS: usize = 4;
/// How long the memnode may take to create and connect a queue pair.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

struct Lane {
    // Field order is drop order: the queue pair, then the registration, then the memory, then the
    // control connection whose closing makes the memnode destroy its end.
    qp: Qp,
    mr: Mr,
    buf: MmapMut,
    /// Set after a failed completion: the queue pair is in the error state for good.
    broken: Option<String>,
    _conn: Conn,
}

/// The caller's side of a transfer.
enum Data<'a> {
    /// Pages to write, in request order.
    Write(&'a [u8]),
    /// Where read pages go, and who is told as runs arrive.
    Read(&'a mut [u8], &'a mut dyn FnMut(std::ops::Range<usize>, &[u8])),
}

/// One run of neighbouring pages: `count` pages from position `first` of the request, at page
/// `remote` of the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chunk {
    first: usize,
    count: usize,
    remote: u64,
}

fn chunks(pages: &[u64]) -> Vec<Chunk> {
    let mut out: Vec<Chunk> = Vec::new();
    for (i, &p) in pages.iter().enumerate() {
        match out.last_mut() {
            Some(c) if c.count < CHUNK_PAGES && c.remote + c.count as u64 == p => c.count += 1,
            _ => out.push(Chunk { first: i, count: 1, remote: p }),
        }
    }
    out
}

/// The `rdma` backend.
pub struct RdmaTransport {
    control: TcpTransport,
    pd: Arc<Pd>,
    name: String,
    timeout: Duration,
    device: String,
    lanes: Vec<Mutex<Lane>>,
    next_lane: AtomicUsize,
    keys: Mutex<HashMap<RegionId, RegionKey>>,
    /// Other clients' regions this one attached (reached over the control connection).
    attached: Mutex<std::collections::HashSet<RegionId>>,
}

impl fmt::Debug for RdmaTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RdmaTransport").field("addr", &self.name).field("device", &self.device).finish_non_exhaustive()
    }
}

impl RdmaTransport {
    /// Opens the local RDMA device (`config.rdma_device`, or the first), connects the control
    /// plane to the memnode at `hostport` and one queue pair per lane.
    pub fn connect(hostport: &str, config: TcpConfig) -> Result<RdmaTransport, TransportError> {
        let rdma = |source| TransportError::Rdma { addr: hostport.to_string(), source };
        let ctx = Context::open(config.rdma_device.as_deref()).map_err(rdma)?;
        let timeout = config.timeout;
        let control = TcpTransport::connect(hostport, config)?;
        let pd = Pd::new(&ctx).map_err(rdma)?;
        let mut lanes = Vec::with_capacity(LANES);
        for _ in 0..LANES {
            let (qp, conn) = connect_qp(&control, &pd, hostport)?;
            let mut buf = MmapMut::map_anon(SLOTS * CHUNK_BYTES)
                .map_err(|source| TransportError::Io { addr: hostport.to_string(), op: "rdma connect", source })?;
            // SAFETY: `buf` is owned by the lane next to the registration and dropped after it.
            let mr = unsafe { Mr::register(&pd, buf.as_mut_ptr(), buf.len(), false) }.map_err(rdma)?;
            lanes.push(Mutex::new(Lane { qp, mr, buf, broken: None, _conn: conn }));
        }
        Ok(RdmaTransport {
            control,
            pd,
            name: hostport.to_string(),
            timeout,
            device: ctx.name.clone(),
            lanes,
            next_lane: AtomicUsize::new(0),
            keys: Mutex::new(HashMap::new()),
            attached: Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// The local RDMA device in use.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The control plane: the same session over the memnode's TCP protocol (its data path too).
    pub fn control(&self) -> &TcpTransport {
        &self.control
    }

    /// A usable lane: a free one, or the next in turn; a broken one is rebuilt first.
    fn lane(&self) -> Result<MutexGuard<'_, Lane>, TransportError> {
        let mut lane = self.any_lane();
        if let Some(why) = lane.broken.take() {
            tracing::info!("rebuilding an RDMA lane to {} that failed ({why})", self.name);
            // Replacing the queue pair destroys the old one first: from then on the device
            // writes nothing more into the lane's buffer.
            match connect_qp(&self.control, &self.pd, &self.name) {
                Ok((qp, conn)) => {
                    lane.qp = qp;
                    lane._conn = conn;
                }
                Err(e) => {
                    lane.broken = Some(why);
                    return Err(e);
                }
            }
        }
        Ok(lane)
    }

    /// Where region `region` is on the memnode, for one-sided access (cached).
    pub fn region_key(&self, region: RegionId) -> Result<RegionKey, TransportError> {
        if let Some(k) = self.keys.lock().unwrap_or_else(|e| e.into_inner()).get(&region) {
            return Ok(*k);
        }
        // Registering pins the region's memory: slow for a large region, so allowed longer (and
        // done right after alloc and resize, off the fault path).
        let (_, reply) = self.control.request(None, "rdma region", Op::RdmaRegion, region.0, &[], Some(SETUP_TIMEOUT))?;
        let key = RegionKey::read_from_bytes(&reply).map_err(|_| TransportError::Protocol {
            addr: self.name.clone(),
            op: "rdma region",
            detail: format!("a {}-byte region key", reply.len()),
        })?;
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).insert(region, key);
        Ok(key)
    }

    /// Reads `len` bytes (at most one slot, 64 KiB) at remote address `addr` under remote key `rkey`,
    /// whatever region they belong to. For diagnostics and the isolation tests: the memnode's
    /// protection domains must make this fail for anything but this client's own regions.
    pub fn read_raw(&self, addr: u64, rkey: u32, len: usize) -> Result<Vec<u8>, TransportError> {
        let mut lane = self.lane()?;
        let len = len.min(CHUNK_BYTES);
        let mut out = vec![0u8; len];
        let Lane { qp, mr, buf, broken, .. } = &mut *lane;
        // SAFETY: the first `len` bytes of the lane's registered buffer; we wait for the
        // completion (or break the lane) before the buffer is reused.
        unsafe { qp.post(false, 0, mr, buf.as_mut_ptr(), u32::try_from(len).unwrap_or(0), addr, rkey) }.map_err(|e| self.rdma(e))?;
        let deadline = Instant::now() + self.timeout;
        let mut wc = [verbs::empty_wc()];
        loop {
            match qp.poll(&mut wc) {
                Ok(0) if Instant::now() < deadline => std::hint::spin_loop(),
                Ok(0) => {
                    *broken = Some("a read timed out".into());
                    return Err(TransportError::Timeout { addr: self.name.clone(), op: "rdma read", timeout: self.timeout });
                }
                Ok(_) if wc[0].status == verbs::WC_SUCCESS => break,
                Ok(_) => {
                    let e = RdmaError::Completion { op: "READ", status: wc[0].status };
                    *broken = Some(e.to_string());
                    return Err(self.rdma(e));
                }
                Err(e) => {
                    *broken = Some(e.to_string());
                    return Err(self.rdma(e));
                }
            }
        }
        out.copy_from_slice(&buf[..len]);
        Ok(out)
    }

    fn rdma(&self, source: RdmaError) -> TransportError {
        TransportError::Rdma { addr: self.name.clone(), source }
    }

    /// A free lane, or the next one in turn.
    fn any_lane(&self) -> MutexGuard<'_, Lane> {
        let start = self.next_lane.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.lanes.len() {
            if let Ok(l) = self.lanes[(start + i) % self.lanes.len()].try_lock() {
                return l;
            }
        }
        self.lanes[start % self.lanes.len()].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves `pages` of `region` by one-sided RDMA: READs into the caller's buffer (calling
    /// `ready` per completed run) or WRITEs from it.
    fn transfer(&self, region: RegionId, pages: &[u64], mut data: Data<'_>) -> Result<(), TransportError> {
        let write = matches!(data, Data::Write(_));
        let op = if write { "rdma write" } else { "rdma read" };
        let len = match &data {
            Data::Write(d) => d.len(),
            Data::Read(d, _) => d.len(),
        };
        if len != pages.len() * PAGE_SIZE {
            return Err(TransportError::Protocol { addr: self.name.clone(), op, detail: "buffer size does not match the page count".into() });
        }
        if pages.is_empty() {
            return Ok(());
        }
        let key = self.region_key(region)?;
        let region_pages = key.len.get() / PAGE_SIZE as u64;
        if let Some(&bad) = pages.iter().find(|&&p| p >= region_pages) {
            return Err(TransportError::Refused {
                op,
                code: Some(ErrorCode::OutOfRange),
                message: format!("page {bad} is outside region {region} ({region_pages} pages)"),
            });
        }
        let chunks = chunks(pages);
        let mut lane = self.lane()?;
        let Lane { qp, mr, buf, broken, .. } = &mut *lane;
        let mut free: Vec<usize> = (0..SLOTS).rev().collect();
        let mut slot_of = vec![0usize; chunks.len()];
        let (mut next, mut in_flight) = (0, 0);
        let mut wcs: [_; SLOTS] = std::array::from_fn(|_| verbs::empty_wc());
        let mut last_progress = Instant::now();
        let base = buf.as_mut_ptr();
        while next < chunks.len() || in_flight > 0 {
            while next < chunks.len()
                && let Some(slot) = free.pop()
            {
                let c = chunks[next];
                let bytes = c.count * PAGE_SIZE;
                let range = c.first * PAGE_SIZE..c.first * PAGE_SIZE + bytes;
                if let Data::Write(d) = &data {
                    buf[slot * CHUNK_BYTES..slot * CHUNK_BYTES + bytes].copy_from_slice(&d[range]);
                }
                let remote = key.addr.get() + c.remote * PAGE_SIZE as u64;
                // SAFETY: slot `slot` of the lane's registered buffer, owned by this chunk until
                // its completion is polled below (or the lane is marked broken and never reused).
                let local = unsafe { base.add(slot * CHUNK_BYTES) };
                // SAFETY: as above; `bytes` ≤ one slot.
                unsafe { qp.post(write, next as u64, mr, local, u32::try_from(bytes).unwrap_or(0), remote, key.rkey.get()) }
                    .map_err(|e| {
                        *broken = Some(e.to_string());
                        self.rdma(e)
                    })?;
                slot_of[next] = slot;
                next += 1;
                in_flight += 1;
            }
            let n = qp.poll(&mut wcs).map_err(|e| {
                *broken = Some(e.to_string());
                self.rdma(e)
            })?;
            if n == 0 {
                if last_progress.elapsed() > self.timeout {
                    *broken = Some(format!("{op} timed out"));
                    return Err(TransportError::Timeout { addr: self.name.clone(), op, timeout: self.timeout });
                }
                std::hint::spin_loop();
                continue;
            }
            last_progress = Instant::now();
            for wc in &wcs[..n] {
                if wc.status != verbs::WC_SUCCESS {
                    let e = RdmaError::Completion { op: if write { "WRITE" } else { "READ" }, status: wc.status };
                    *broken = Some(e.to_string());
                    return Err(self.rdma(e));
                }
                let k = usize::try_from(wc.wr_id).unwrap_or(usize::MAX);
                let (Some(c), Some(&slot)) = (chunks.get(k).filter(|_| k < next), slot_of.get(k)) else {
                    // Something else completed on this queue pair: nothing in its buffer can be
                    // trusted any more.
                    *broken = Some(format!("a completion for unknown request {k}"));
                    return Err(TransportError::Protocol { addr: self.name.clone(), op, detail: format!("completion for unknown request {k}") });
                };
                if let Data::Read(out, ready) = &mut data {
                    let range = c.first * PAGE_SIZE..(c.first + c.count) * PAGE_SIZE;
                    out[range.clone()].copy_from_slice(&buf[slot * CHUNK_BYTES..slot * CHUNK_BYTES + range.len()]);
                    ready(c.first..c.first + c.count, &out[range]);
                }
                free.push(slot);
                in_flight -= 1;
            }
        }
        Ok(())
    }

    fn is_attached(&self, region: RegionId) -> bool {
        self.attached.lock().unwrap_or_else(|e| e.into_inner()).contains(&region)
    }

    fn forget(&self, region: RegionId) {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).remove(&region);
    }
}

impl Transport for RdmaTransport {
    fn kind(&self) -> &'static str {
        "rdma"
    }

    fn as_rdma(&self) -> Option<&RdmaTransport> {
        Some(self)
    }

    fn alloc(&self, size: u64) -> Result<RegionId, TransportError> {
        let region = self.control.alloc(size)?;
        // Registered now, so that no fault waits for it.
        if let Err(e) = self.region_key(region) {
            let _ = self.control.free(region);
            return Err(e);
        }
        Ok(region)
    }

    fn resize(&self, region: RegionId, size: u64) -> Result<(), TransportError> {
        if self.is_attached(region) {
            // Another client's region (growing it is all a ticket allows): no key of ours.
            return self.control.resize(region, size);
        }
        // The memnode re-registers a resized region under a new key.
        self.forget(region);
        self.control.resize(region, size)?;
        self.region_key(region).map(drop)
    }

    fn free(&self, region: RegionId) -> Result<(), TransportError> {
        self.forget(region);
        self.control.free(region)
    }

    fn read_pages(&self, region: RegionId, pages: &[u64], out: &mut [u8]) -> Result<(), TransportError> {
        if self.is_attached(region) {
            return self.control.read_pages(region, pages, out);
        }
        self.transfer(region, pages, Data::Read(out, &mut |_, _| {}))
    }

    fn read_pages_streaming(
        &self,
        region: RegionId,
        pages: &[u64],
        out: &mut [u8],
        ready: &mut dyn FnMut(std::ops::Range<usize>, &[u8]),
    ) -> Result<(), TransportError> {
        if self.is_attached(region) {
            return self.control.read_pages_streaming(region, pages, out, ready);
        }
        self.transfer(region, pages, Data::Read(out, ready))
    }

    fn write_pages(&self, region: RegionId, pages: &[u64], data: &[u8]) -> Result<(), TransportError> {
        if self.is_attached(region) {
            return self.control.write_pages(region, pages, data);
        }
        self.transfer(region, pages, Data::Write(data))
    }

    fn stats(&self) -> Result<StatsReply, TransportError> {
        self.control.stats()
    }

    fn grant(&self, region: RegionId, write: bool) -> Result<Ticket, TransportError> {
        self.control.grant(region, write)
    }

    /// Another client's region is reached over the control connection: a registration belongs
    /// to its owner's protection domain, which a ticket does not open.
    fn attach(&self, region: RegionId, ticket: &Ticket) -> Result<bool, TransportError> {
        let write = self.control.attach(region, ticket)?;
        self.attached.lock().unwrap_or_else(|e| e.into_inner()).insert(region);
        Ok(write)
    }

    fn revoke(&self, region: RegionId, ticket: &Ticket) -> Result<(), TransportError> {
        self.control.revoke(region, ticket)
    }
}

/// The memnode's end of a queue pair that someone else owns — Ebb's kernel module, whose RDMA
/// backend reads and writes this client's regions on it. The memnode keeps its end for as long
/// as this value (its control connection) lives.
pub struct RemoteQp {
    /// The memnode's queue pair, to connect the local one to.
    pub info: QpInfo,
    _conn: Conn,
}

impl fmt::Debug for RemoteQp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteQp").field("qpn", &self.info.qpn.get()).finish_non_exhaustive()
    }
}

impl RdmaTransport {
    /// Asks the memnode for a queue pair connected to `local` (one this process does not own:
    /// the kernel module's), in this client's protection domain: it reaches this client's regions
    /// and no other's.
    pub fn connect_remote_qp(&self, local: &QpInfo) -> Result<RemoteQp, TransportError> {
        let (info, conn) = memnode_qp(&self.control, local, &self.name)?;
        Ok(RemoteQp { info, _conn: conn })
    }
}

/// The memnode's description of a new queue pair of its own connected to `local`, over a new
/// control connection of `control`'s session (one per queue pair: the memnode refuses a second).
fn memnode_qp(control: &TcpTransport, local: &QpInfo, addr: &str) -> Result<(QpInfo, Conn), TransportError> {
    let mut conn = control.open_conn()?;
    // Creating and connecting the memnode's queue pair takes the memnode's kernel far longer
    // than serving a page (seconds on an emulated device): not bound by the page timeout.
    let (_, reply) = control.request(Some(&mut conn), "rdma connect", Op::RdmaConnect, 0, local.as_bytes(), Some(SETUP_TIMEOUT))?;
    let peer = QpInfo::read_from_bytes(&reply).map_err(|_| TransportError::Protocol {
        addr: addr.to_string(),
        op: "rdma connect",
        detail: format!("a {}-byte queue pair description", reply.len()),
    })?;
    Ok((peer, conn))
}

/// A new queue pair in `pd` connected to a new one of the memnode's.
fn connect_qp(control: &TcpTransport, pd: &Arc<Pd>, addr: &str) -> Result<(Qp, Conn), TransportError> {
    let rdma = |source| TransportError::Rdma { addr: addr.to_string(), source };
    let qp = Qp::new(pd).map_err(rdma)?;
    let (peer, conn) = memnode_qp(control, &qp.info(), addr)?;
    // A request is resent after a quarter of the memnode timeout without an acknowledgement: a
    // lost packet is recovered well within the bound, and a slow peer (an emulated one on a busy
    // host) is not flooded with spurious retransmissions — rxe's requester sometimes never
    // resumed after those (docs/rdma.md).
    qp.connect(&peer, control.timeout() / 4).map_err(rdma)?;
    Ok((qp, conn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_timeouts_round_up_to_the_verbs_steps() {
        assert_eq!(verbs::ack_timeout_exponent(Duration::from_millis(250)), 16); // 268 ms
        assert_eq!(verbs::ack_timeout_exponent(Duration::from_millis(3750)), 20); // 4.3 s
        assert_eq!(verbs::ack_timeout_exponent(Duration::ZERO), 12);
        assert_eq!(verbs::ack_timeout_exponent(Duration::from_secs(3600)), 24);
    }

    #[test]
    fn neighbouring_pages_share_a_work_request() {
        let pages: Vec<u64> = (10..32).chain([5, 6, 100]).collect();
        let c = chunks(&pages);
        assert_eq!(
            c,
            vec![
                Chunk { first: 0, count: 16, remote: 10 },
                Chunk { first: 16, count: 6, remote: 26 },
                Chunk { first: 22, count: 2, remote: 5 },
                Chunk { first: 24, count: 1, remote: 100 },
            ]
        );
    }
}
