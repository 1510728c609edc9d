//! Helpers shared by the integration tests and benches: real processes, polling, test modules.


use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ebb_runtime::replay::spawn_listening;

pub mod hosts;
pub mod http;

/// The pattern module (see `tests/modules/pattern.wat`).
pub const PATTERN_WAT: &str = include_str!("../modules/pattern.wat");
/// Where the pattern module reads its seed and area size, and where area A starts.
pub const SEED_OFFSET: usize = 8;
pub const LEN_OFFSET: usize = 16;
pub const AREA_A: usize = 65536;

/// The word the pattern module stores at word `w` of an area with `seed`.
pub fn pattern_word(w: u32, seed: u32) -> u32 {
    w.wrapping_mul(0x9E37_79B1) ^ seed
}

/// Index of the first byte of `area` that differs from the pattern, if any.
pub fn first_mismatch(area: &[u8], seed: u32) -> Option<usize> {
    area.chunks_exact(4).enumerate().find_map(|(w, bytes)| {
        let want = pattern_word(u32::try_from(w).expect("area < 4 GiB"), seed).to_le_bytes();
        bytes.iter().zip(want).position(|(a, b)| *a != b).map(|i| w * 4 + i)
    })
}

/// Polls `cond` every millisecond until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}

/// Path of a workspace binary (`memnode`, `runtime`) next to the running test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("deps dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(path.exists(), "{} is not built: run `cargo build --workspace` first", path.display());
    path
}

/// The RDMA device the tests' memnodes serve on and their clients reach them by
/// (`EBB_TEST_RDMA_DEVICE`, e.g. `rxe0` in the soft-RoCE guests), or None: plain TCP.
pub fn test_rdma_device() -> Option<String> {
    std::env::var("EBB_TEST_RDMA_DEVICE").ok().filter(|d| !d.is_empty())
}

/// The bound on one memnode operation that the tests' clients and runtimes use when the run
/// sets one (`EBB_TEST_MEMNODE_TIMEOUT_MS`: emulated RDMA under load is slower than the 1 s
/// default allows), else None: the default.
pub fn test_memnode_timeout_ms() -> Option<u64> {
    std::env::var("EBB_TEST_MEMNODE_TIMEOUT_MS").ok().map(|ms| ms.parse().expect("EBB_TEST_MEMNODE_TIMEOUT_MS is milliseconds"))
}

/// A memnode client's settings for tests that do not test the bound itself: the defaults, with
/// [`test_memnode_timeout_ms`].
pub fn memnode_config() -> ebb_memnode::TcpConfig {
    let mut config = ebb_memnode::TcpConfig::default();
    if let Some(ms) = test_memnode_timeout_ms() {
        config.timeout = Duration::from_millis(ms);
    }
    config
}

/// The memnode every test of the run pages to (`EBB_TEST_MEMNODE=URL`: another guest's, in the
/// two-guest soft-RoCE run), if the run names one.
pub fn shared_memnode() -> Option<String> {
    std::env::var("EBB_TEST_MEMNODE").ok().filter(|m| !m.is_empty())
}

/// A real `memnode` process on a free loopback port, killed on drop. With
/// [`test_rdma_device`] it serves RDMA on that device too, and [`Memnode::url`] says `rdma://`.
#[derive(Debug)]
pub struct Memnode {
    /// The process; None for the run's [`shared_memnode`].
    child: Option<Child>,
    /// HOST:PORT of its control plane (what raw-protocol tests connect a socket to).
    pub addr: String,
    /// What a runtime's `--memnode` and [`Memnode::transport`] take: `rdma://HOST:PORT` when it
    /// serves RDMA, else HOST:PORT.
    pub url: String,
}

impl Memnode {
    /// Starts `memnode --listen 127.0.0.1:0` with extra flags and waits for its listening line —
    /// or, when the run names a [`shared_memnode`] and `extra` asks for nothing but a capacity,
    /// stands for that one.
    pub fn start(extra: &[&str]) -> anyhow::Result<Memnode> {
        if let Some(url) = shared_memnode().filter(|_| extra.chunks(2).all(|flag| flag[0] == "--capacity")) {
            let addr = url.split_once("://").map_or(url.as_str(), |(_, a)| a).to_string();
            return Ok(Memnode { child: None, addr, url });
        }
        let rdma = test_rdma_device();
        let mut cmd = Command::new(binary("memnode"));
        cmd.args(["--listen", "127.0.0.1:0"]).args(extra).stderr(Stdio::null());
        if let Some(device) = &rdma {
            cmd.args(["--rdma-device", device]);
        }
        let (child, addr) = spawn_listening(cmd, "memnode listening on ")?;
        let url = if rdma.is_some() { format!("rdma://{addr}") } else { addr.clone() };
        Ok(Memnode { addr, url, child: Some(child) })
    }

    /// A client of this memnode (by RDMA when it serves it), with `config`'s token and timeouts.
    pub fn transport(&self, config: ebb_memnode::TcpConfig) -> Result<std::sync::Arc<dyn ebb_memnode::Transport>, ebb_memnode::TransportError> {
        let config = ebb_memnode::TcpConfig { rdma_device: test_rdma_device(), ..config };
        ebb_memnode::connect(&self.url, config)
    }

    /// The process. Panics for the run's shared memnode, which is no test's to stop: a test that
    /// needs this cannot run against one.
    pub fn process(&mut self) -> &mut Child {
        self.child.as_mut().expect("the run's shared memnode (EBB_TEST_MEMNODE) is not a test's to stop: skip this test in such a run")
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let child = self.process();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends a signal (e.g. SIGSTOP to make it silent).
    pub fn signal(&mut self, sig: i32) {
        let pid = i32::try_from(self.process().id()).expect("pid fits");
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(pid, sig) };
    }
}

impl Drop for Memnode {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGCONT);
            self.kill();
        }
    }
}

/// A paged memory of `bytes` made through the pager's wasmtime `MemoryCreator`, outside any wasm
/// instance (benches touch it directly), with its handle for offloads.
pub struct PagedBuffer {
    memory: Box<dyn wasmtime::LinearMemory>,
    pub handle: ebb_runtime::pager::MemoryHandle,
}

impl std::fmt::Debug for PagedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagedBuffer").field("handle", &self.handle).finish_non_exhaustive()
    }
}

impl PagedBuffer {
    pub fn new(pager: &std::sync::Arc<ebb_runtime::pager::Pager>, bytes: usize) -> PagedBuffer {
        let pages = u32::try_from(bytes / 65536).expect("fits");
        let ty = wasmtime::MemoryType::new(pages, Some(pages));
        let memory = pager.creator().new_memory(ty, bytes, Some(bytes), Some(bytes), 65536).expect("paged memory");
        let handle = pager.memory_at(memory.as_ptr()).expect("registered");
        PagedBuffer { memory, handle }
    }

    pub fn ptr(&self) -> *mut u8 {
        self.memory.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.memory.byte_size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes one byte derived from `seed` into every page.
    pub fn fill_pages(&self, seed: u8) {
        for p in 0..self.len() / 4096 {
            // SAFETY: the offset is inside the accessible memory, which this value owns; the fault
            // handler fills the page on first touch.
            unsafe { self.ptr().add(p * 4096).write_volatile(seed.wrapping_add(p.to_le_bytes()[0]) | 1) };
        }
    }

    /// Reads one byte of page `p` (faulting it in if needed).
    pub fn touch(&self, p: usize) -> u8 {
        assert!(p < self.len() / 4096);
        // SAFETY: in bounds, see `fill_pages`.
        unsafe { self.ptr().add(p * 4096).read_volatile() }
    }
}

/// A memnode server in this process on a loopback socket (benches), and a `tcp` transport to it.
pub fn loopback_memnode(capacity: u64) -> (ebb_memnode::server::ServerHandle, std::sync::Arc<dyn ebb_memnode::Transport>) {
    use ebb_memnode::server::{Server, ServerConfig};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let store = std::sync::Arc::new(ebb_memnode::Store::new(capacity));
    let server = Server::new(store, ServerConfig::default()).spawn(listener).expect("server");
    let transport = ebb_memnode::connect(&server.local_addr().to_string(), ebb_memnode::TcpConfig::default())
        .expect("connect");
    (server, transport)
}

/// An in-process memnode serving RDMA on this machine's first device (or `EBB_RDMA_DEVICE`) and an
/// `rdma` transport to it — or, with `EBB_BENCH_RDMA_MEMNODE=HOST:PORT`, a transport to that memnode
/// (another host's `memnode --rdma-device`). None, with a message, when there is no RDMA device.
pub fn rdma_memnode(capacity: u64) -> Option<(Option<ebb_memnode::server::ServerHandle>, std::sync::Arc<dyn ebb_memnode::Transport>)> {
    use ebb_memnode::server::{Server, ServerConfig};
    let devices = ebb_memnode::rdma::device_names();
    let Some(device) = std::env::var("EBB_RDMA_DEVICE").ok().or_else(|| devices.first().cloned()) else {
        eprintln!("skipped: the rdma benchmarks (no RDMA device here; scripts/softroce.sh bench runs them in a soft-RoCE guest)");
        return None;
    };
    let config = ebb_memnode::TcpConfig { rdma_device: Some(device.clone()), ..Default::default() };
    if let Ok(remote) = std::env::var("EBB_BENCH_RDMA_MEMNODE") {
        let t = ebb_memnode::connect(&format!("rdma://{remote}"), config).expect("connect to the rdma memnode");
        return Some((None, t));
    }
    let fabric = std::sync::Arc::new(ebb_memnode::rdma::Fabric::open(&device).expect("open the RDMA device"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let store = std::sync::Arc::new(ebb_memnode::Store::new(capacity));
    let server = Server::new(store, ServerConfig { rdma: Some(fabric), ..Default::default() }).spawn(listener).expect("server");
    let t = ebb_memnode::connect(&format!("rdma://{}", server.local_addr()), config).expect("rdma connect");
    Some((Some(server), t))
}

/// Whether only the rdma benchmarks should run (`EBB_BENCH_RDMA_ONLY=1`: inside the soft-RoCE
/// guest, where the functions cannot be built).
pub fn rdma_only() -> bool {
    std::env::var("EBB_BENCH_RDMA_ONLY").is_ok_and(|v| v == "1")
}

/// Builds the demo functions once per test process (the same script users run) and returns the
/// path of `functions/build/DIR/NAME.wasm` — or of `DIR/NAME.wasm` under `EBB_FUNCTIONS_DIR`
/// when set, built already (the kmod guest of `scripts/softroce.sh`, which has no compiler).
pub fn function_wasm(dir: &str, name: &str) -> PathBuf {
    if let Some(built) = std::env::var_os("EBB_FUNCTIONS_DIR") {
        let path = PathBuf::from(built).join(dir).join(format!("{name}.wasm"));
        assert!(path.exists(), "{} is missing from EBB_FUNCTIONS_DIR", path.display());
        return path;
    }
    static BUILD: std::sync::Once = std::sync::Once::new();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    BUILD.call_once(|| {
        let status = Command::new(root.join("scripts/build-functions.sh"))
            .stdout(Stdio::null())
            .status()
            .expect("run scripts/build-functions.sh");
        assert!(status.success(), "building the functions failed");
    });
    root.join("functions/build").join(dir).join(format!("{name}.wasm"))
}

/// What the `ndp/wordcount` sample outputs for `text`: "word\tcount\n" lines, sorted by word.
pub fn wordcount_of(text: &str) -> String {
    let mut counts = std::collections::BTreeMap::<&str, u32>::new();
    for w in text.split_ascii_whitespace() {
        *counts.entry(w).or_default() += 1;
    }
    counts.iter().map(|(w, c)| format!("{w}\t{c}\n")).collect()
}

/// A fresh, empty directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ebb-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real `runtime serve` process on a free loopback port, killed on drop.
#[derive(Debug)]
pub struct Runtime {
    pub child: Child,
    pub url: String,
    /// The memnode this runtime pages to when the test gave it none but the run asks for one.
    _memnode: Option<Memnode>,
}

impl Runtime {
    /// Starts `runtime serve --listen 127.0.0.1:0 --data-dir DIR` plus `extra` and waits for it.
    ///
    /// Without `--memnode` in `extra` the runtime runs its embedded memnode — unless the run
    /// names one for every runtime (`EBB_TEST_MEMNODE=URL`: another guest's, in the two-guest
    /// soft-RoCE run) or serves RDMA ([`test_rdma_device`]: then a memnode process of its own on
    /// that device, reached by `rdma://`), so that the same tests run on a remote memnode.
    /// [`test_memnode_timeout_ms`] sets the runtime's memnode bound unless `extra` does.
    pub fn start(data_dir: &std::path::Path, extra: &[&str]) -> anyhow::Result<Runtime> {
        let mut cmd = Command::new(binary("runtime"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(data_dir).args(extra);
        let mut memnode = None;
        let rdma = test_rdma_device();
        if !extra.contains(&"--memnode") {
            if let Some(url) = shared_memnode() {
                cmd.args(["--memnode", &url]);
            } else if rdma.is_some() {
                let m = Memnode::start(&["--capacity", "2G"])?;
                cmd.args(["--memnode", &m.url]);
                memnode = Some(m);
            }
        }
        if let Some(device) = &rdma {
            cmd.args(["--rdma-device", device]);
        }
        if let Some(ms) = test_memnode_timeout_ms().filter(|_| !extra.contains(&"--memnode-timeout-ms")) {
            cmd.args(["--memnode-timeout-ms", &ms.to_string()]);
        }
        let (child, addr) = spawn_listening(cmd, "runtime listening on ")?;
        Ok(Runtime { url: format!("http://{addr}"), child, _memnode: memnode })
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a test does to a [`Hooked`] transport's operations.
pub trait Hooks: Send + Sync + std::fmt::Debug {
    /// Before every read (plain or streaming): e.g. panic, to play a broken backend.
    fn before_read(&self) {}
    /// Before every write: e.g. block, to play a slow memnode.
    fn before_write(&self) {}
    /// How a streaming read of `pages` pages hands them over: `deliver(range)` for consecutive
    /// ranges covering them. Default: all at once.
    fn stream(&self, pages: usize, deliver: &mut dyn FnMut(std::ops::Range<usize>)) {
        deliver(0..pages);
    }
}

/// An embedded memnode whose operations a test intercepts through `hooks`.
#[derive(Debug)]
pub struct Hooked<H> {
    pub inner: ebb_memnode::LocalTransport,
    pub hooks: H,
}

impl<H: Hooks> Hooked<H> {
    pub fn new(hooks: H) -> Hooked<H> {
        Hooked { inner: ebb_memnode::LocalTransport::embedded(1 << 30), hooks }
    }
}

impl<H: Hooks> ebb_memnode::Transport for Hooked<H> {
    fn kind(&self) -> &'static str {
        "hooked"
    }
    fn alloc(&self, size: u64) -> Result<ebb_memnode::RegionId, ebb_memnode::TransportError> {
        self.inner.alloc(size)
    }
    fn resize(&self, region: ebb_memnode::RegionId, size: u64) -> Result<(), ebb_memnode::TransportError> {
        self.inner.resize(region, size)
    }
    fn free(&self, region: ebb_memnode::RegionId) -> Result<(), ebb_memnode::TransportError> {
        self.inner.free(region)
    }
    fn read_pages(&self, region: ebb_memnode::RegionId, pages: &[u64], out: &mut [u8]) -> Result<(), ebb_memnode::TransportError> {
        self.hooks.before_read();
        self.inner.read_pages(region, pages, out)
    }
    fn read_pages_streaming(
        &self,
        region: ebb_memnode::RegionId,
        pages: &[u64],
        out: &mut [u8],
        ready: &mut dyn FnMut(std::ops::Range<usize>, &[u8]),
    ) -> Result<(), ebb_memnode::TransportError> {
        self.hooks.before_read();
        self.inner.read_pages(region, pages, out)?;
        self.hooks.stream(pages.len(), &mut |range| ready(range.clone(), &out[range.start * 4096..range.end * 4096]));
        Ok(())
    }
    fn write_pages(&self, region: ebb_memnode::RegionId, pages: &[u64], data: &[u8]) -> Result<(), ebb_memnode::TransportError> {
        self.hooks.before_write();
        self.inner.write_pages(region, pages, data)
    }
    fn stats(&self) -> Result<ebb_memnode::proto::StatsReply, ebb_memnode::TransportError> {
        self.inner.stats()
    }
}
