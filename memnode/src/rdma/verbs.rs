//! Owned wrappers over the libibverbs objects the RDMA transport uses (rdma-sys bindings):
//! a device context, protection domains, memory regions, and reliable-connected queue pairs with
//! their completion queue. Each wrapper frees its object on drop, after what depends on it.
//!
//! Hand-written because no maintained crate fits: `ibverbs` vendors and builds rdma-core (cmake)
//! and has no per-identity protection domains; `async-rdma` needs its own runtime and rdma_cm.

use std::ffi::CStr;
use std::sync::Arc;

use rdma_sys::*;

use crate::proto::QpInfo;

/// Why an RDMA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RdmaError {
    #[error(
        "no RDMA device{}: this machine has {}. Use a tcp:// memnode address instead, or create a \
         soft-RoCE device (`rdma link add rxe0 type rxe netdev eth0`, needs the rdma_rxe module)",
        wanted.as_ref().map(|w| format!(" named {w}")).unwrap_or_default(),
        if available.is_empty() { "none".to_string() } else { format!("only {}", available.join(", ")) }
    )]
    NoDevice { wanted: Option<String>, available: Vec<String> },
    #[error("{what} failed: {source}")]
    Verbs { what: &'static str, #[source] source: std::io::Error },
    #[error("RDMA {op} completed with status {status} ({})", status_name(*status))]
    Completion { op: &'static str, status: u32 },
    #[error("RDMA {op} did not complete within {0:?}", timeout)]
    Timeout { op: &'static str, timeout: std::time::Duration },
}

fn verbs(what: &'static str) -> RdmaError {
    RdmaError::Verbs { what, source: std::io::Error::last_os_error() }
}

fn verbs_rc(what: &'static str, rc: i32) -> Result<(), RdmaError> {
    if rc == 0 { Ok(()) } else { Err(RdmaError::Verbs { what, source: std::io::Error::from_raw_os_error(rc.abs()) }) }
}

/// `ibv_wc_status_str` for a completion status.
pub fn status_name(status: u32) -> String {
    // SAFETY: ibv_wc_status_str returns a pointer to a static string for any value.
    unsafe { CStr::from_ptr(ibv_wc_status_str(status)) }.to_string_lossy().into_owned()
}

/// Names of the RDMA devices present (empty without any: no hardware and no soft-RoCE).
pub fn device_names() -> Vec<String> {
    let mut n = 0;
    // SAFETY: ibv_get_device_list writes the count and returns an array we free below, or NULL.
    let list = unsafe { ibv_get_device_list(&mut n) };
    if list.is_null() {
        return Vec::new();
    }
    let count = usize::try_from(n).unwrap_or(0);
    // SAFETY: the list holds `n` valid device pointers until ibv_free_device_list.
    let names = (0..count).map(|i| unsafe { CStr::from_ptr(ibv_get_device_name(*list.add(i))) }.to_string_lossy().into_owned()).collect();
    // SAFETY: `list` came from ibv_get_device_list and is freed once.
    unsafe { ibv_free_device_list(list) };
    names
}

/// An open device, its port 1 and the GID used to reach it.
pub struct Context {
    ctx: *mut ibv_context,
    pub name: String,
    port: u8,
    lid: u16,
    mtu: u32,
    ethernet: bool,
    gid_index: u8,
    gid: [u8; 16],
    max_rd_atomic: u8,
}

// SAFETY: ibv_context is thread-safe per libibverbs' documentation (all verbs may be called from
// any thread); the wrapper holds no thread-local state.
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("name", &self.name).field("gid_index", &self.gid_index).finish_non_exhaustive()
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: opened by ibv_open_device; every object made from it holds an Arc<Context>, so
        // none is left.
        unsafe { ibv_close_device(self.ctx) };
    }
}

const PORT: u8 = 1;
const IBV_LINK_LAYER_ETHERNET: u8 = 2;

/// On RoCE, the GID index to use: a RoCE v2 entry, preferring an IPv4-mapped one (routable
/// between hosts), from sysfs; 0 on InfiniBand (addressed by LID).
fn roce_gid_index(device: &str, table_len: i32) -> u8 {
    let dir = format!("/sys/class/infiniband/{device}/ports/{PORT}");
    let mut best = None;
    for i in 0..table_len.clamp(0, 256) {
        let kind = std::fs::read_to_string(format!("{dir}/gid_attrs/types/{i}")).unwrap_or_default();
        let gid = std::fs::read_to_string(format!("{dir}/gids/{i}")).unwrap_or_default();
        let gid = gid.trim();
        if !kind.trim().eq_ignore_ascii_case("RoCE v2") || gid.is_empty() || gid.chars().all(|c| c == '0' || c == ':') {
            continue;
        }
        let ipv4 = gid.starts_with("0000:0000:0000:0000:0000:ffff:");
        let Ok(i) = u8::try_from(i) else { break };
        if ipv4 {
            return i;
        }
        best.get_or_insert(i);
    }
    best.unwrap_or(0)
}

impl Context {
    /// Opens device `name`, or the first device for `None`.
    pub fn open(name: Option<&str>) -> Result<Arc<Context>, RdmaError> {
        let available = device_names();
        let wanted = match name {
            Some(n) => n.to_string(),
            None => available.first().cloned().ok_or_else(|| RdmaError::NoDevice { wanted: None, available: Vec::new() })?,
        };
        if !available.contains(&wanted) {
            return Err(RdmaError::NoDevice { wanted: Some(wanted), available });
        }
        let mut n = 0;
        // SAFETY: as in device_names; the device pointer is used before the list is freed.
        let list = unsafe { ibv_get_device_list(&mut n) };
        if list.is_null() {
            return Err(RdmaError::NoDevice { wanted: Some(wanted), available });
        }
        let mut ctx = std::ptr::null_mut();
        for i in 0..usize::try_from(n).unwrap_or(0) {
            // SAFETY: `i` < n; the entries are valid until ibv_free_device_list.
            let dev = unsafe { *list.add(i) };
            // SAFETY: `dev` is a valid device of the list.
            let dev_name = unsafe { CStr::from_ptr(ibv_get_device_name(dev)) }.to_string_lossy();
            if dev_name == wanted {
                // SAFETY: `dev` is valid; the context outlives the list (libibverbs keeps the device).
                ctx = unsafe { ibv_open_device(dev) };
                break;
            }
        }
        // SAFETY: freed once, after its last use.
        unsafe { ibv_free_device_list(list) };
        if ctx.is_null() {
            return Err(verbs("ibv_open_device"));
        }
        // SAFETY: zeroed plain-old-data structs filled in by the queries below.
        let mut port: ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: `ctx` is an open context, `port` a writable ibv_port_attr.
        let rc = unsafe { ___ibv_query_port(ctx, PORT, &mut port) };
        // SAFETY: zeroed POD.
        let mut dev: ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: `ctx` is open, `dev` writable.
        let rc2 = unsafe { ibv_query_device(ctx, &mut dev) };
        if rc != 0 || rc2 != 0 {
            // SAFETY: opened above, not shared yet.
            unsafe { ibv_close_device(ctx) };
            return Err(RdmaError::Verbs { what: "querying the RDMA port", source: std::io::Error::from_raw_os_error(rc.max(rc2).abs()) });
        }
        let ethernet = port.link_layer == IBV_LINK_LAYER_ETHERNET;
        let gid_index = if ethernet { roce_gid_index(&wanted, port.gid_tbl_len) } else { 0 };
        // SAFETY: an ibv_gid is 16 plain bytes.
        let mut gid: ibv_gid = unsafe { std::mem::zeroed() };
        // SAFETY: `ctx` open, index within the port's table, `gid` writable.
        if unsafe { ibv_query_gid(ctx, PORT, i32::from(gid_index), &mut gid) } != 0 {
            // SAFETY: as above.
            unsafe { ibv_close_device(ctx) };
            return Err(verbs("ibv_query_gid"));
        }
        Ok(Arc::new(Context {
            ctx,
            name: wanted,
            port: PORT,
            lid: port.lid,
            mtu: port.active_mtu,
            ethernet,
            gid_index,
            // SAFETY: every bit pattern of the union is a valid [u8; 16].
            gid: unsafe { gid.raw },
            max_rd_atomic: u8::try_from(dev.max_qp_rd_atom.clamp(1, 16)).unwrap_or(16),
        }))
    }
}

/// A protection domain: memory regions and queue pairs of one domain cannot reach another's.
pub struct Pd {
    pd: *mut ibv_pd,
    ctx: Arc<Context>,
}

// SAFETY: protection domains may be used from any thread (libibverbs is thread-safe).
unsafe impl Send for Pd {}
// SAFETY: as above.
unsafe impl Sync for Pd {}

impl std::fmt::Debug for Pd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pd").field("device", &self.ctx.name).finish()
    }
}

impl Pd {
    pub fn new(ctx: &Arc<Context>) -> Result<Arc<Pd>, RdmaError> {
        // SAFETY: `ctx.ctx` is an open context.
        let pd = unsafe { ibv_alloc_pd(ctx.ctx) };
        if pd.is_null() {
            return Err(verbs("ibv_alloc_pd"));
        }
        Ok(Arc::new(Pd { pd, ctx: ctx.clone() }))
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: every MR and QP of this domain holds an Arc<Pd>, so none is left.
        unsafe { ibv_dealloc_pd(self.pd) };
    }
}

/// A registered memory region.
pub struct Mr {
    mr: *mut ibv_mr,
    _pd: Arc<Pd>,
}

// SAFETY: an ibv_mr is immutable after registration; deregistration happens once, on drop.
unsafe impl Send for Mr {}
// SAFETY: as above.
unsafe impl Sync for Mr {}

impl std::fmt::Debug for Mr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mr").field("addr", &format_args!("{:#x}", self.addr())).field("len", &self.len()).finish()
    }
}

impl Mr {
    /// Registers `len` bytes at `addr` for local writes and, with `remote`, remote reads and
    /// writes by queue pairs of the same domain.
    ///
    /// # Safety
    /// The memory must stay mapped until the returned `Mr` is dropped.
    pub unsafe fn register(pd: &Arc<Pd>, addr: *mut u8, len: usize, remote: bool) -> Result<Mr, RdmaError> {
        let mut access = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE;
        if remote {
            access = access | ibv_access_flags::IBV_ACCESS_REMOTE_READ | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE;
        }
        let flags = i32::try_from(access.0).unwrap_or(0);
        // SAFETY: the caller keeps `addr..addr+len` mapped for the region's life; `pd` is valid.
        let mr = unsafe { ibv_reg_mr(pd.pd, addr.cast(), len, flags) };
        if mr.is_null() {
            return Err(verbs("ibv_reg_mr"));
        }
        Ok(Mr { mr, _pd: pd.clone() })
    }

    pub fn addr(&self) -> u64 {
        // SAFETY: `mr` is a registered region until drop.
        unsafe { (*self.mr).addr as u64 }
    }
    pub fn len(&self) -> usize {
        // SAFETY: as above.
        unsafe { (*self.mr).length }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn lkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.mr).lkey }
    }
    pub fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.mr).rkey }
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: registered by ibv_reg_mr, deregistered once; its rkey stops working here.
        let rc = unsafe { ibv_dereg_mr(self.mr) };
        if rc != 0 {
            tracing::error!("ibv_dereg_mr failed: {}", std::io::Error::from_raw_os_error(rc));
        }
    }
}

/// A reliable-connected queue pair with its own completion queue.
pub struct Qp {
    qp: *mut ibv_qp,
    cq: *mut ibv_cq,
    pd: Arc<Pd>,
    psn: u32,
}

// SAFETY: a Qp is used by one thread at a time (callers hold it behind a Mutex or own it);
// libibverbs allows that from any thread.
unsafe impl Send for Qp {}

impl std::fmt::Debug for Qp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qp").field("qpn", &self.qpn()).finish_non_exhaustive()
    }
}

impl Drop for Qp {
    fn drop(&mut self) {
        // SAFETY: created below; the QP goes before the CQ it uses.
        unsafe {
            ibv_destroy_qp(self.qp);
            ibv_destroy_cq(self.cq);
        }
    }
}

/// The verbs' local ACK timeout exponent `n` (4.096 µs × 2^n) that is at least `d`, within 12
/// (17 ms) to 24 (69 s).
pub fn ack_timeout_exponent(d: std::time::Duration) -> u8 {
    let mut n = 12u8;
    while n < 24 && 4.096e-6 * f64::from(1u32 << n) < d.as_secs_f64() {
        n += 1;
    }
    n
}

/// Most work requests outstanding on one queue pair.
pub const QP_DEPTH: u32 = 64;

impl Qp {
    /// A new queue pair in `pd`, moved to INIT with remote read/write allowed.
    pub fn new(pd: &Arc<Pd>) -> Result<Qp, RdmaError> {
        let ctx = pd.context();
        // SAFETY: `ctx.ctx` is open; no completion channel, vector 0.
        let cq = unsafe { ibv_create_cq(ctx.ctx, i32::try_from(QP_DEPTH * 2).unwrap_or(128), std::ptr::null_mut(), std::ptr::null_mut(), 0) };
        if cq.is_null() {
            return Err(verbs("ibv_create_cq"));
        }
        // SAFETY: zeroed POD, filled below.
        let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = cq;
        init.recv_cq = cq;
        init.qp_type = ibv_qp_type::IBV_QPT_RC;
        init.cap.max_send_wr = QP_DEPTH;
        init.cap.max_recv_wr = 1;
        init.cap.max_send_sge = 1;
        init.cap.max_recv_sge = 1;
        // SAFETY: `pd` valid, `init` filled.
        let qp = unsafe { ibv_create_qp(pd.pd, &mut init) };
        if qp.is_null() {
            let e = verbs("ibv_create_qp");
            // SAFETY: created above, unused.
            unsafe { ibv_destroy_cq(cq) };
            return Err(e);
        }
        let mut psn = [0u8; 4];
        // SAFETY: a 4-byte writable buffer.
        unsafe { libc::getrandom(psn.as_mut_ptr().cast(), 4, 0) };
        let qp = Qp { qp, cq, pd: pd.clone(), psn: u32::from_le_bytes(psn) & 0x00ff_ffff };
        // SAFETY: zeroed POD.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_INIT;
        attr.pkey_index = 0;
        attr.port_num = ctx.port;
        let access = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE | ibv_access_flags::IBV_ACCESS_REMOTE_READ | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE;
        attr.qp_access_flags = access.0;
        let mask = ibv_qp_attr_mask::IBV_QP_STATE | ibv_qp_attr_mask::IBV_QP_PKEY_INDEX | ibv_qp_attr_mask::IBV_QP_PORT | ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS;
        qp.modify(&mut attr, mask, "moving a queue pair to INIT")?;
        Ok(qp)
    }

    fn modify(&self, attr: &mut ibv_qp_attr, mask: ibv_qp_attr_mask, what: &'static str) -> Result<(), RdmaError> {
        // SAFETY: `qp` valid, `attr` filled for the fields in `mask`.
        let rc = unsafe { ibv_modify_qp(self.qp, attr, i32::try_from(mask.0).unwrap_or(0)) };
        verbs_rc(what, rc)
    }

    pub fn qpn(&self) -> u32 {
        // SAFETY: `qp` valid until drop.
        unsafe { (*self.qp).qp_num }
    }

    /// This end, for the peer.
    pub fn info(&self) -> QpInfo {
        let ctx = self.pd.context();
        QpInfo {
            qpn: self.qpn().into(),
            psn: self.psn.into(),
            lid: ctx.lid.into(),
            mtu: u16::try_from(ctx.mtu).unwrap_or(1).into(),
            gid: ctx.gid,
            reserved: 0.into(),
        }
    }

    /// Connects to `peer` (INIT → RTR → RTS). `ack_timeout` is how long a request waits for its
    /// acknowledgement before it is sent again (rounded up to the verbs' 4.096 µs × 2^n steps;
    /// 7 tries).
    pub fn connect(&self, peer: &QpInfo, ack_timeout: std::time::Duration) -> Result<(), RdmaError> {
        let ctx = self.pd.context();
        // SAFETY: zeroed POD.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_RTR;
        attr.path_mtu = ctx.mtu.min(u32::from(peer.mtu.get())).max(1);
        attr.dest_qp_num = peer.qpn.get();
        attr.rq_psn = peer.psn.get();
        attr.max_dest_rd_atomic = ctx.max_rd_atomic;
        attr.min_rnr_timer = 12;
        attr.ah_attr.dlid = peer.lid.get();
        attr.ah_attr.sl = 0;
        attr.ah_attr.src_path_bits = 0;
        attr.ah_attr.port_num = ctx.port;
        if ctx.ethernet {
            attr.ah_attr.is_global = 1;
            attr.ah_attr.grh.dgid.raw = peer.gid;
            attr.ah_attr.grh.sgid_index = ctx.gid_index;
            attr.ah_attr.grh.hop_limit = 64;
        }
        let mask = ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_AV
            | ibv_qp_attr_mask::IBV_QP_PATH_MTU
            | ibv_qp_attr_mask::IBV_QP_DEST_QPN
            | ibv_qp_attr_mask::IBV_QP_RQ_PSN
            | ibv_qp_attr_mask::IBV_QP_MAX_DEST_RD_ATOMIC
            | ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER;
        self.modify(&mut attr, mask, "moving a queue pair to RTR")?;
        // SAFETY: zeroed POD.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_RTS;
        attr.timeout = ack_timeout_exponent(ack_timeout);
        attr.retry_cnt = 7;
        attr.rnr_retry = 7;
        attr.sq_psn = self.psn;
        attr.max_rd_atomic = ctx.max_rd_atomic;
        let mask = ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_TIMEOUT
            | ibv_qp_attr_mask::IBV_QP_RETRY_CNT
            | ibv_qp_attr_mask::IBV_QP_RNR_RETRY
            | ibv_qp_attr_mask::IBV_QP_SQ_PSN
            | ibv_qp_attr_mask::IBV_QP_MAX_QP_RD_ATOMIC;
        self.modify(&mut attr, mask, "moving a queue pair to RTS")
    }

    /// Posts one signalled RDMA READ (`write == false`) or WRITE of `len` bytes between local
    /// `local` (inside `mr`) and remote `remote` (under `rkey`), tagged `id`.
    ///
    /// # Safety
    /// `local..local+len` must lie inside `mr` and stay valid (and, for a READ, unaliased) until
    /// the completion tagged `id` has been polled.
    #[expect(clippy::too_many_arguments, reason = "the fields of one work request")]
    pub unsafe fn post(&self, write: bool, id: u64, mr: &Mr, local: *mut u8, len: u32, remote: u64, rkey: u32) -> Result<(), RdmaError> {
        let mut sge = ibv_sge { addr: local as u64, length: len, lkey: mr.lkey() };
        // SAFETY: zeroed POD, filled below.
        let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = id;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = if write { ibv_wr_opcode::IBV_WR_RDMA_WRITE } else { ibv_wr_opcode::IBV_WR_RDMA_READ };
        wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
        wr.wr.rdma = rdma_t { remote_addr: remote, rkey };
        let mut bad = std::ptr::null_mut();
        // SAFETY: `qp` is connected; `wr` and `sge` live across the call (the provider copies
        // them); the buffer contract is the caller's.
        let rc = unsafe { ibv_post_send(self.qp, &mut wr, &mut bad) };
        verbs_rc(if write { "posting an RDMA WRITE" } else { "posting an RDMA READ" }, rc)
    }

    /// Polls up to `out.len()` completions; returns how many were written.
    pub fn poll(&self, out: &mut [ibv_wc]) -> Result<usize, RdmaError> {
        // SAFETY: `cq` valid; `out` has room for the count passed.
        let n = unsafe { ibv_poll_cq(self.cq, i32::try_from(out.len()).unwrap_or(i32::MAX), out.as_mut_ptr()) };
        usize::try_from(n).map_err(|_| RdmaError::Verbs { what: "ibv_poll_cq", source: std::io::Error::other("polling the completion queue failed") })
    }
}

/// A zeroed completion entry, for poll buffers.
pub fn empty_wc() -> ibv_wc {
    // SAFETY: ibv_wc is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// A successful completion status.
pub const WC_SUCCESS: u32 = ibv_wc_status::IBV_WC_SUCCESS;
