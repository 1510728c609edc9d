//! The wasmtime executor: an engine whose linear memories come from the pager, WASI preview1, and
//! instances that run a command module's `_start` one or more times.
//!
//! An instance is created once: instantiate, then run `_faasm_zygote` if the module exports it (the
//! init phase). Each run calls `_start`. The executor never asks which fault path or transport the
//! memory uses; it sees a [`MemoryHandle`] only to offload and to learn whether a page was lost.

use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use wasmtime::{Config, Engine, Linker, Module, Store, UpdateDeadline, Val};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::pager::{MemoryHandle, Pager};

mod host;
mod lent;
pub mod rewrite;
mod fsquota;
mod wasi;

pub use fsquota::{FileQuota, Room};
pub use lent::{LentOutcome, global_names};
pub use wasi::{ARGV0, FunctionFiles, Preopen, host_path};
use wasi::{MAX_WASI_RESOURCES, WasiOriginals, WasiSpec};

/// Where a guest's stdout goes.
#[derive(Clone, Debug)]
pub enum Stdout {
    /// The runtime's own stdout.
    Inherit,
    /// The runtime's log (its stderr): the platform's functions, whose output is what they pass to
    /// `__faasm_write_output`.
    Log,
    /// Collected in memory (tests, the HTTP platform).
    Capture(MemoryOutputPipe),
}

/// What a store holds: WASI, and the Faasm call context.
pub struct Host {
    wasi: WasiP1Ctx,
    input: Vec<u8>,
    output: Vec<u8>,
    /// The platform's services (chaining, state) and who calls; absent for `runtime run`.
    ctx: Option<CallContext>,
    /// When the current call must stop (checked at every epoch tick).
    deadline: Option<std::time::Instant>,
    /// The instance's paged memory, once instantiated (checked at every epoch tick).
    memory: Option<MemoryHandle>,
    /// The state values the running call maps (see `host::state`); none outlives its call.
    views: host::Views,
    /// How `wasi` was made, to make it anew (see [`Instance::call`]).
    wasi_spec: WasiSpec,
    /// Entries of `wasi`'s resource table when it was made (stdio, preopens).
    wasi_baseline: usize,
    /// Memory the host grew for what it hands the running call: (next free, end).
    host_heap: (usize, usize),
    /// wasmtime-wasi's own implementations of the calls the disk bound wraps (see `wasi`).
    wasi_originals: Option<WasiOriginals>,
    /// The running call took disk: its user's usage is measured again when it ends.
    files_written: bool,
    /// The guest renumbered a file onto stdin, stdout or stderr: writes there take disk too.
    stdio_renumbered: bool,
    /// A workflow block's inputs and posts, for the running call only.
    flow: Option<host::FlowData>,
}

/// The platform side of a function's calls, as its guest sees it.
#[derive(Clone)]
pub struct CallContext {
    pub services: Arc<dyn host::Services>,
    pub user: String,
    pub function: Arc<Function>,
    /// The call running now: its record's id (0 for a call without one), which it may not await.
    pub call: u32,
    /// What holds the running call's state locks (unique per call run).
    pub holder: u64,
    /// The call asked to run everything here (`"forbid_ndp": true`): no offloading.
    pub forbid_ndp: bool,
}

impl std::fmt::Debug for CallContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallContext").field("user", &self.user).field("function", &self.function.name).finish()
    }
}

pub use host::{AwaitError, FlowData, FlowReturn, Services};

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("input", &self.input.len()).field("output", &self.output.len()).finish_non_exhaustive()
    }
}

/// A wasmtime engine on paged memory, with WASI preview1 and Faasm's `env` host interface linked.
pub struct Executor {
    engine: Engine,
    linker: Linker<Host>,
    /// WASI alone, whose calls the disk bound's wrappers in `linker` call on, through an instance
    /// of `trampoline` in each store (see `wasi`).
    wasi: Linker<Host>,
    trampoline: Module,
    pager: Arc<Pager>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").field("pager", &self.pager).finish_non_exhaustive()
    }
}

/// What an import Ebb does not link belongs to, for the upload's error.
fn unsupported_family(module: &str, name: &str, ty: &wasmtime::ExternType) -> &'static str {
    if matches!(ty, wasmtime::ExternType::Memory(_)) {
        return "an imported memory: wasm threads and shared memories are not supported";
    }
    match (module, name) {
        (_, n) if n.starts_with("MPI_") => "MPI is not supported",
        (_, n) if n.starts_with("__kmpc_") || n.starts_with("omp_") || n.starts_with("__faasm_sm_") => "OpenMP is not supported",
        ("env", "__faasm_get_py_user" | "__faasm_get_py_func" | "__faasm_get_py_entry" | "__faasm_chain_py") => {
            "Python functions are not supported"
        }
        (_, n) if n.starts_with("__faasm_s3_") => "Faasm's S3 calls are not supported",
        ("env", "__faasm_migrate_point") => "migrating a running call is not supported",
        ("env", "__faasm_host_interface_test") => "Faasm's own host-interface tests are not supported",
        ("wasi", _) | (_, "thread-spawn" | "thread_spawn") => "wasm threads are not supported",
        ("env", n) if n.starts_with("__faasm") => "not in Ebb's host interface",
        ("wasi_snapshot_preview1", _) => "a WASI preview1 call this runtime does not provide",
        _ => "not in Ebb's host interface",
    }
}

/// The engine settings every compile and every run share (a compile in another process must
/// use exactly these for its code to load here).
fn engine_config() -> Config {
    let mut config = Config::new();
    config
        // Copy-on-write images need wasmtime's own mmap memories; with a custom creator the
        // data segments are copied in (and fault through the pager like any write).
        .memory_init_cow(false)
        // Lets the pager stop a guest whose memory lost a page (see `pager`), and calls stop at
        // their deadline.
        .epoch_interruption(true);
    config
}

fn compile(engine: &Engine, bytes: &[u8]) -> anyhow::Result<Module> {
    let wasm = wat::parse_bytes(bytes).context("the module is neither wasm nor valid WAT")?;
    let wasm = rewrite::export_mutable_globals(&wasm)?;
    Module::new(engine, &wasm).map_err(|e| anyhow!("{e:?}")).context("the module does not compile")
}

/// Compiles `bytes` with the executor's engine settings but without a pager, into loadable code
/// (what `runtime compile` does in a child process with bounded time and memory).
pub fn compile_to_bytes(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let engine = Engine::new(&engine_config()).map_err(|e| anyhow!("{e}"))?;
    let module = compile(&engine, bytes)?;
    module.serialize().map_err(|e| anyhow!("{e}"))
}

impl Executor {
    pub fn new(pager: Arc<Pager>) -> anyhow::Result<Executor> {
        let mut config = engine_config();
        config.with_host_memory(pager.creator());
        let engine = Engine::new(&config).map_err(|e| anyhow!("{e}"))?;
        let weak = engine.weak();
        pager.set_interrupt(move || {
            if let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
            }
        });
        let mut wasi = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut wasi, |h: &mut Host| &mut h.wasi).map_err(|e| anyhow!("{e}"))?;
        let mut linker = wasi.clone();
        wasi::add_disk_bound(&mut linker)?;
        host::add_to_linker(&mut linker)?;
        let trampoline = Module::new(&engine, wasi::trampoline_wat()).map_err(|e| anyhow!("the WASI trampoline: {e:?}"))?;
        Ok(Executor { engine, linker, wasi, trampoline, pager })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn pager(&self) -> &Arc<Pager> {
        &self.pager
    }

    /// Compiles a module from wasm or WAT bytes, exporting its mutable globals first (see
    /// [`rewrite`]) so that calls can restore them.
    pub fn compile(&self, bytes: &[u8]) -> anyhow::Result<Module> {
        compile(&self.engine, bytes)
    }

    /// Checks that everything `module` imports is linked here, with the right types. The error
    /// names each missing import and what it belongs to (docs/platform.md lists what Ebb does not
    /// support, and why).
    pub fn check_imports(&self, module: &Module) -> Result<(), String> {
        let mut store = self.store(Stdout::Log, &[], None).map_err(|e| format!("{e:#}"))?;
        let missing: Vec<String> = module
            .imports()
            .filter(|i| self.linker.get(&mut store, i.module(), i.name()).is_err())
            .map(|i| format!("{}.{} ({})", i.module(), i.name(), unsupported_family(i.module(), i.name(), &i.ty())))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the module imports what Ebb does not provide: {}; rebuild it without these (see docs/platform.md, \"Not supported\")",
                missing.join(", ")
            ));
        }
        self.linker.instantiate_pre(module).map(drop).map_err(|e| format!("the module's imports do not match Ebb's host interface: {e}"))
    }

    /// Loads code compiled by [`compile_to_bytes`] with a compatible engine (another process of
    /// this build: see `registry`'s compiler). Wasmtime refuses code from an incompatible engine.
    pub fn load_compiled(&self, code: &[u8]) -> anyhow::Result<Module> {
        // SAFETY: the bytes are `Module::serialize` output of this same build's engine config,
        // produced by this runtime (in process or by its own `runtime compile` child); wasmtime
        // checks the engine's compatibility before using them.
        unsafe { Module::deserialize(&self.engine, code) }.map_err(|e| anyhow!("{e:?}")).context("the compiled code is not usable")
    }

    fn store(&self, stdout: Stdout, args: &[String], ctx: Option<CallContext>) -> anyhow::Result<Store<Host>> {
        let files = match &ctx {
            Some(c) => c.services.files(&c.user, &c.function.name)?,
            None => FunctionFiles::default(),
        };
        let spec = WasiSpec { stdout, args: args.to_vec(), files };
        let (wasi, wasi_baseline) = spec.build()?;
        let host = Host {
            wasi,
            wasi_spec: spec,
            wasi_baseline,
            input: Vec::new(),
            output: Vec::new(),
            ctx,
            deadline: None,
            memory: None,
            views: Default::default(),
            host_heap: (0, 0),
            wasi_originals: None,
            files_written: false,
            stdio_renumbered: false,
            flow: None,
        };
        let mut store = Store::new(&self.engine, host);
        store.set_epoch_deadline(1);
        // Set before anything runs: an epoch tick may come during instantiation already.
        store.epoch_deadline_callback(|ctx| {
            // An epoch tick reaches every store; only a store whose memory lost a page, or whose
            // call ran past its deadline, stops.
            let host = ctx.data();
            if let Some(why) = host.memory.as_ref().and_then(|m| m.poisoned()) {
                return Err(wasmtime::Error::new(LostMemory(why)));
            }
            if host.deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Err(wasmtime::Error::new(Timeout));
            }
            Ok(UpdateDeadline::Continue(1))
        });
        Ok(store)
    }

    /// An instance of `function` that starts from the function's initial state: the first one
    /// runs the init phase (`_faasm_zygote`) and captures it — returning which pages
    /// instantiation and the init phase left resident — later ones adopt it without copying
    /// anything. Instantiation (a module's start function) and the init phase are bounded by
    /// `limit`, as calls are. `services` are the platform's, the calling user and the holder of
    /// the state locks the init phase takes.
    pub fn function_instance(
        &self,
        function: &Arc<Function>,
        stdout: Stdout,
        services: Option<(Arc<dyn Services>, &str, u64)>,
        limit: Option<std::time::Duration>,
    ) -> anyhow::Result<(Instance, Option<InitPages>)> {
        // The init phase's state locks belong to `holder` (the call the instance is made for).
        let ctx = services.map(|(services, user, holder)| CallContext {
            services,
            user: user.to_string(),
            function: function.clone(),
            call: 0,
            holder,
            forbid_ndp: false,
        });
        let mut store = self.store(stdout, &[ARGV0.to_string()], ctx)?;
        store.data_mut().deadline = limit.map(|l| std::time::Instant::now() + l);
        let mut inst = self.link(store, &function.module)?;
        let mut init_pages = None;
        match function.initial.get() {
            Some(initial) => {
                if let Some(memory) = inst.instance.get_memory(&mut inst.store, "memory") {
                    let have = memory.data_size(&inst.store);
                    if initial.snapshot.size() > have {
                        let delta = ((initial.snapshot.size() - have) / 65536) as u64;
                        memory.grow(&mut inst.store, delta).map_err(|e| anyhow!("{e:?}"))?;
                    }
                }
                if let Some(handle) = &inst.memory {
                    handle.adopt(&initial.snapshot)?;
                }
                inst.globals = initial.globals.clone();
                inst.restore_globals()?;
            }
            None => {
                // What instantiation left resident is the runtime's, what the init phase adds
                // is init's.
                let runtime = inst.memory.as_ref().map(MemoryHandle::resident_pages).unwrap_or_default();
                inst.zygote()?;
                let snapshot = match &inst.memory {
                    Some(handle) => {
                        init_pages = Some(InitPages { runtime, init: handle.resident_pages() });
                        Some(handle.capture()?)
                    }
                    None => None,
                };
                inst.globals = inst.read_globals();
                if let Some(snapshot) = snapshot {
                    let _ = function.initial.set(Initial { snapshot, globals: inst.globals.clone() });
                }
            }
        }
        inst.store.data_mut().deadline = None;
        Ok((inst, init_pages))
    }

    /// Instantiates `module` on paged memory and runs its init phase (`_faasm_zygote`, if
    /// exported). Its memory persists from run to run (see [`Instance::run`]).
    pub fn instantiate(&self, module: &Module, args: &[String], stdout: Stdout) -> anyhow::Result<Instance> {
        let store = self.store(stdout, args, None)?;
        let mut inst = self.link(store, module)?;
        inst.zygote()?;
        Ok(inst)
    }

    fn link(&self, mut store: Store<Host>, module: &Module) -> anyhow::Result<Instance> {
        let instance = self.linker.instantiate(&mut store, module).map_err(|e| guest_error(e, "instantiation failed"))?;
        let exported = instance.get_memory(&mut store, "memory");
        if let Some(m) = exported {
            let originals = WasiOriginals::new(&self.trampoline, &self.wasi, &mut store, m)?;
            store.data_mut().wasi_originals = Some(originals);
        }
        let memory = exported.and_then(|m| self.pager.memory_at(m.data_ptr(&store)));
        let mut inst = Instance {
            store,
            instance,
            memory,
            globals: Vec::new(),
            discard: false,
            last_call: CallPages::default(),
            record_resident: false,
        };
        inst.store.data_mut().memory = inst.memory.clone();
        inst.check_memory()?;
        Ok(inst)
    }
}

/// A compiled function and, once its first instance has run the init phase, its initial state.
pub struct Function {
    pub name: String,
    module: Module,
    initial: std::sync::OnceLock<Initial>,
    /// The hex SHA-256 of the wasm it was compiled from (empty when not known).
    digest: String,
}

/// The pages the first instance's instantiation and init phase left resident (ascending).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitPages {
    /// Resident after instantiation (the runtime's pages: data segments, stack).
    pub runtime: Vec<usize>,
    /// Resident after the init phase (a superset of `runtime`).
    pub init: Vec<usize>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function").field("name", &self.name).field("initial", &self.initial.get().map(|i| &i.snapshot)).finish()
    }
}

impl Function {
    pub fn new(name: impl Into<String>, module: Module) -> Function {
        Function::with_digest(name, module, String::new())
    }

    /// A function compiled from wasm whose hex SHA-256 is `digest` (another node holding the
    /// same digest holds the same function).
    pub fn with_digest(name: impl Into<String>, module: Module, digest: String) -> Function {
        Function { name: name.into(), module, initial: std::sync::OnceLock::new(), digest }
    }

    /// The hex SHA-256 of the wasm it was compiled from (empty when not known).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The captured initial state's snapshot, once an instance has been initialised.
    pub fn snapshot(&self) -> Option<&Arc<crate::pager::Snapshot>> {
        self.initial.get().map(|i| &i.snapshot)
    }
}

/// The initial state of a function: memory pages and global values after the init phase.
struct Initial {
    snapshot: Arc<crate::pager::Snapshot>,
    globals: Vec<(String, Val)>,
}

/// The error of a call whose paged memory lost a page (see [`crate::pager::Poison`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the call lost its memory")]
pub struct LostMemory(#[source] pub crate::pager::Poison);

/// The trap raised when a call runs past its deadline.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the call ran past its time limit and was interrupted")]
pub struct Timeout;

/// A wasmtime error as an anyhow error that keeps a timeout or a lost memory typed (the platform
/// tells them apart) and gives any other trap its message, backtrace and `what` as context.
fn guest_error(e: wasmtime::Error, what: &'static str) -> anyhow::Error {
    if e.downcast_ref::<Timeout>().is_some() {
        anyhow::Error::new(Timeout)
    } else if let Some(lost) = e.downcast_ref::<LostMemory>() {
        anyhow::Error::new(lost.clone())
    } else if e.downcast_ref::<wasmtime::component::ResourceTableError>().is_some_and(|r| matches!(r, wasmtime::component::ResourceTableError::Full)) {
        anyhow!("{e:?}").context(format!("{what}: it held more than {MAX_WASI_RESOURCES} files, directories and streams open at once"))
    } else {
        anyhow!("{e:?}").context(what)
    }
}

/// A guest's return code from a finished call: `proc_exit`'s code counts as a return; a timeout
/// stays a [`Timeout`]; any other trap becomes an error carrying wasmtime's message and backtrace.
fn outcome(result: wasmtime::Result<i32>) -> anyhow::Result<i32> {
    match result {
        Ok(rc) => Ok(rc),
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                Ok(exit.0)
            } else {
                Err(guest_error(e, "the guest trapped"))
            }
        }
    }
}

/// Which export a call enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `_start` (`main`).
    Start,
    /// The `() -> i32` function at this index of the function table (`__faasm_chain_ptr`).
    Table(u32),
}

/// The result of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOutcome {
    /// `main`'s return value (or the `proc_exit` code).
    pub rc: i32,
    /// What the function passed to `__faasm_write_output`.
    pub output: Vec<u8>,
    /// A workflow block's data (see [`Instance::set_flow`]), with what it posted.
    pub flow: Option<host::FlowData>,
}

/// One instance of a module.
pub struct Instance {
    store: Store<Host>,
    instance: wasmtime::Instance,
    memory: Option<MemoryHandle>,
    globals: Vec<(String, Val)>,
    discard: bool,
    /// What the latest call touched.
    pub last_call: CallPages,
    /// Makes the next call list the pages resident at its end in `last_call.resident`.
    pub record_resident: bool,
}

/// The pages one call was seen to touch.
#[derive(Clone, Debug, Default)]
pub struct CallPages {
    /// Pages that faulted in during the call, with the read-around each fault brought, in fault
    /// order.
    pub faulted: Vec<usize>,
    /// Pages the call wrote (ascending), found by the reset.
    pub written: Vec<usize>,
    /// Pages the call touched that were resident already (not faults): seen on the kmod path
    /// only (the module's accessed set), empty elsewhere.
    pub read: Vec<usize>,
    /// Pages resident when the call ended (ascending), when [`Instance::record_resident`] was
    /// set: with the read-around, what a restore should bring back.
    pub resident: Vec<usize>,
}

impl CallPages {
    /// Every page seen touched, ascending, without repeats.
    pub fn touched(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.faulted.iter().chain(&self.written).chain(&self.read).copied().collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").field("memory", &self.memory).finish_non_exhaustive()
    }
}

impl Instance {
    /// The paged memory exported as `memory`, if any.
    pub fn memory(&self) -> Option<&MemoryHandle> {
        self.memory.as_ref()
    }

    /// The bytes of the exported memory (faulting pages in as they are read).
    pub fn memory_bytes(&mut self) -> Option<&[u8]> {
        let m = self.instance.get_memory(&mut self.store, "memory")?;
        Some(m.data(&self.store))
    }

    /// The bytes of the exported memory, writable (to pass data to a guest between runs).
    pub fn memory_bytes_mut(&mut self) -> Option<&mut [u8]> {
        let m = self.instance.get_memory(&mut self.store, "memory")?;
        Some(m.data_mut(&mut self.store))
    }

    fn check_memory(&self) -> anyhow::Result<()> {
        match self.memory.as_ref().and_then(|m| m.poisoned()) {
            Some(why) => Err(anyhow::Error::new(LostMemory(why))),
            None => Ok(()),
        }
    }

    fn zygote(&mut self) -> anyhow::Result<()> {
        if let Some(zygote) = self.instance.get_func(&mut self.store, "_faasm_zygote") {
            let zygote = zygote.typed::<(), i32>(&self.store).map_err(|e| anyhow!("_faasm_zygote must be `() -> i32`: {e}"))?;
            let rc = zygote.call(&mut self.store, ()).map_err(|e| guest_error(e, "_faasm_zygote failed"));
            self.store.data_mut().views.clear();
            self.store.data_mut().host_heap = (0, 0);
            self.check_memory()?;
            // The initial state must be the instance's own pages: a state value mapped now would
            // be shared by every call (and by other functions).
            if let Some(handle) = &self.memory
                && handle.unmap_shared()? > 0
            {
                bail!("_faasm_zygote took a state pointer, which would outlive it: read state by pointer in main, or copy it in the zygote");
            }
            let rc = rc?;
            if rc != 0 {
                bail!("_faasm_zygote returned {rc}");
            }
        }
        Ok(())
    }

    fn read_globals(&mut self) -> Vec<(String, Val)> {
        let names: Vec<String> = self
            .instance
            .exports(&mut self.store)
            .filter(|e| e.name().starts_with(rewrite::GLOBAL_EXPORT_PREFIX))
            .map(|e| e.name().to_string())
            .collect();
        names
            .into_iter()
            .filter_map(|n| {
                let g = self.instance.get_global(&mut self.store, &n)?;
                Some((n, g.get(&mut self.store)))
            })
            .collect()
    }

    fn restore_globals(&mut self) -> anyhow::Result<()> {
        for (name, value) in &self.globals {
            let g = self.instance.get_global(&mut self.store, name).context("a recorded global vanished")?;
            g.set(&mut self.store, *value).map_err(|e| anyhow!("{e:?}"))?;
        }
        Ok(())
    }

    /// Whether the instance must not be reused (its memory grew, or it was poisoned).
    pub fn must_discard(&self) -> bool {
        self.discard || self.memory.as_ref().is_some_and(|m| m.poisoned().is_some())
    }

    /// Sets who the next call is: its record's id, the holder of its state locks, and whether
    /// it may offload.
    pub fn set_call(&mut self, id: u32, holder: u64, forbid_ndp: bool) {
        if let Some(ctx) = &mut self.store.data_mut().ctx {
            ctx.call = id;
            ctx.holder = holder;
            ctx.forbid_ndp = forbid_ndp;
        }
    }

    /// Sets the `argv` the next calls see (a WASI context made anew when it changes).
    pub fn set_args(&mut self, args: &[String]) -> anyhow::Result<()> {
        let host = self.store.data_mut();
        if host.wasi_spec.args != args {
            host.wasi_spec.args = args.to_vec();
            let (wasi, baseline) = host.wasi_spec.build()?;
            host.wasi = wasi;
            host.wasi_baseline = baseline;
        }
        Ok(())
    }

    /// Gives the next [`Instance::call`] (only that one) a workflow block's data; its outcome
    /// returns it with what the call posted.
    pub fn set_flow(&mut self, mut flow: FlowData) {
        flow.posted = vec![Vec::new(); flow.outputs.len()];
        self.store.data_mut().flow = Some(flow);
    }

    /// Calls the function once with `input`, then returns the instance to the initial state:
    /// the pages the call wrote are dropped back to the snapshot and the globals restored. The
    /// instance must come from [`Executor::function_instance`]. A call still running after
    /// `limit` is interrupted (the engine's epoch must be ticking) and the instance discarded.
    pub fn call(&mut self, input: &[u8], entry: Entry, limit: Option<std::time::Duration>) -> anyhow::Result<CallOutcome> {
        self.store.data_mut().input = input.to_vec();
        self.store.data_mut().output.clear();
        self.store.data_mut().views.clear();
        self.store.data_mut().host_heap = (0, 0);
        self.store.data_mut().deadline = limit.map(|l| std::time::Instant::now() + l);
        if let Some(handle) = &self.memory {
            handle.start_fault_log();
        }
        let began = std::time::Instant::now();
        let rc = match entry {
            Entry::Start => self.run(),
            Entry::Table(index) => self.run_table(index),
        };
        let ran = (began, std::time::Instant::now());
        self.store.data_mut().deadline = None;
        self.store.data_mut().views.clear();
        let mut flow = self.store.data_mut().flow.take().map(|mut f| {
            f.ran = Some(ran);
            f
        });
        // A workflow block that succeeded hands its posts on before the reset below.
        if matches!(rc, Ok(0))
            && let Some(mut f) = flow.take_if(|f| f.on_return.is_some())
            && let Some(on_return) = f.on_return.take()
        {
            (on_return.0)(f);
        }
        // State the call mapped goes before the reset, which must see the memory as its own.
        if let Some(handle) = &self.memory
            && let Err(e) = handle.unmap_shared()
        {
            self.discard = true;
            return Err(anyhow::Error::new(e).context("could not unmap the state the call mapped"));
        }
        if rc.as_ref().is_err_and(|e| e.downcast_ref::<Timeout>().is_some()) {
            self.discard = true;
        }
        let output = std::mem::take(&mut self.store.data_mut().output);
        // Files the call left open are the call's: its libc state is reset below, so they could
        // only leak (each is a host descriptor). A fresh WASI context closes them, and gives
        // back the stdio a call renumbered a file onto.
        let host = self.store.data_mut();
        if std::mem::take(&mut host.files_written)
            && let Some(q) = &host.wasi_spec.files.quota
        {
            q.remeasure();
        }
        let renumbered = std::mem::take(&mut host.stdio_renumbered);
        if renumbered || wasmtime_wasi::WasiView::ctx(&mut host.wasi).table.iter_mut().count() > host.wasi_baseline {
            match host.wasi_spec.build() {
                Ok((wasi, baseline)) => {
                    host.wasi = wasi;
                    host.wasi_baseline = baseline;
                }
                Err(e) => {
                    tracing::warn!("could not renew the WASI context of an instance (it is not reused): {e:#}");
                    self.discard = true;
                }
            }
        }
        // Reset even after a trap: the next call must start from the initial state.
        self.last_call = CallPages::default();
        if let Some(handle) = &self.memory
            && handle.poisoned().is_none()
        {
            self.last_call.faulted = handle.take_fault_log();
            self.last_call.read = handle.take_read_log();
            if std::mem::take(&mut self.record_resident) {
                self.last_call.resident = handle.resident_pages();
            }
            match handle.reset() {
                Ok(report) => {
                    self.discard |= report.grown;
                    self.last_call.written = report.written;
                }
                Err(e) => {
                    self.discard = true;
                    return Err(anyhow::Error::new(e).context("could not reset the instance after the call"));
                }
            }
        }
        self.restore_globals()?;
        Ok(CallOutcome { rc: rc?, output, flow })
    }

    fn run_table(&mut self, index: u32) -> anyhow::Result<i32> {
        let table = self.instance.get_table(&mut self.store, "__indirect_function_table");
        let result = lent::call_table_entry(&mut self.store, table, index, &[]);
        self.check_memory()?;
        outcome(result)
    }

    /// Runs `_start` once; returns the exit code (0 when `_start` returns normally).
    pub fn run(&mut self) -> anyhow::Result<i32> {
        let start = self
            .instance
            .get_typed_func::<(), ()>(&mut self.store, "_start")
            .map_err(|e| anyhow!("the module is not a WASI command (no `_start() -> ()` export): {e}"))?;
        let result = start.call(&mut self.store, ()).map(|()| 0);
        // A page lost during the call makes the whole call an error, whatever the guest did next.
        self.check_memory()?;
        outcome(result)
    }
}
