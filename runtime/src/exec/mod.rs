//! The wasmtime executor: an engine whose linear memories come from the pager, WASI preview1, and
//! instances that run a command module's `_start` one or more times.
//!
//! An instance is created once: instantiate, then run `_faasm_zygote` if the module exports it (the
//! init phase). Each run calls `_start`. The executor never asks which fault path or transport the
//! memory uses; it sees a [`MemoryHandle`] only to offload and to learn whether a page was lost.

use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use wasmtime::{Config, Engine, Linker, Module, Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::pager::{MemoryHandle, Pager};

/// Where a guest's stdout goes.
#[derive(Clone, Debug)]
pub enum Stdout {
    /// The runtime's own stdout.
    Inherit,
    /// Collected in memory (tests, the HTTP platform).
    Capture(MemoryOutputPipe),
}

/// A wasmtime engine on paged memory, with WASI preview1 linked.
pub struct Executor {
    engine: Engine,
    linker: Linker<WasiP1Ctx>,
    pager: Arc<Pager>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").field("pager", &self.pager).finish_non_exhaustive()
    }
}

impl Executor {
    pub fn new(pager: Arc<Pager>) -> anyhow::Result<Executor> {
        let mut config = Config::new();
        config
            .with_host_memory(pager.creator())
            // Copy-on-write images need wasmtime's own mmap memories; with a custom creator the
            // data segments are copied in (and fault through the pager like any write).
            .memory_init_cow(false)
            // Lets the pager stop a guest whose memory lost a page (see `pager`).
            .epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| anyhow!("{e}"))?;
        let weak = engine.weak();
        pager.set_interrupt(move || {
            if let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
            }
        });
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |ctx| ctx).map_err(|e| anyhow!("{e}"))?;
        Ok(Executor { engine, linker, pager })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn pager(&self) -> &Arc<Pager> {
        &self.pager
    }

    /// Compiles a module from wasm or WAT bytes.
    pub fn compile(&self, bytes: &[u8]) -> anyhow::Result<Module> {
        Module::new(&self.engine, bytes).map_err(|e| anyhow!("{e:?}")).context("the module does not compile")
    }

    /// Instantiates `module` on paged memory and runs its init phase (`_faasm_zygote`, if exported).
    pub fn instantiate(&self, module: &Module, args: &[String], stdout: Stdout) -> anyhow::Result<Instance> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(args).inherit_stderr();
        match stdout {
            Stdout::Inherit => wasi.inherit_stdout(),
            Stdout::Capture(pipe) => wasi.stdout(pipe),
        };
        let mut store = Store::new(&self.engine, wasi.build_p1());
        store.set_epoch_deadline(1);
        let instance = self.linker.instantiate(&mut store, module).map_err(|e| anyhow!("{e:?}"))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .and_then(|m| self.pager.memory_at(m.data_ptr(&store)));
        let mut inst = Instance { store, instance, memory };
        let handle = inst.memory.clone();
        inst.store.epoch_deadline_callback(move |_| {
            // An epoch tick reaches every store; only a store whose memory lost a page stops.
            match handle.as_ref().and_then(|m| m.poisoned()) {
                Some(why) => Err(wasmtime::format_err!("the call lost its memory: {why}")),
                None => Ok(UpdateDeadline::Continue(1)),
            }
        });
        inst.check_memory()?;
        if let Some(zygote) = inst.instance.get_func(&mut inst.store, "_faasm_zygote") {
            let zygote = zygote.typed::<(), i32>(&inst.store).map_err(|e| anyhow!("_faasm_zygote must be `() -> i32`: {e}"))?;
            let rc = zygote.call(&mut inst.store, ()).map_err(|e| anyhow!("{e:?}")).context("_faasm_zygote failed");
            inst.check_memory()?;
            let rc = rc?;
            if rc != 0 {
                bail!("_faasm_zygote returned {rc}");
            }
        }
        Ok(inst)
    }
}

/// One instance of a module.
pub struct Instance {
    store: Store<WasiP1Ctx>,
    instance: wasmtime::Instance,
    memory: Option<MemoryHandle>,
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
            Some(why) => Err(anyhow!("the call lost its memory: {why}")),
            None => Ok(()),
        }
    }

    /// Runs `_start` once; returns the exit code (0 when `_start` returns normally).
    pub fn run(&mut self) -> anyhow::Result<i32> {
        let start = self
            .instance
            .get_typed_func::<(), ()>(&mut self.store, "_start")
            .map_err(|e| anyhow!("the module is not a WASI command (no `_start() -> ()` export): {e}"))?;
        let result = start.call(&mut self.store, ());
        // A page lost during the call makes the whole call an error, whatever the guest did next.
        self.check_memory()?;
        match result {
            Ok(()) => Ok(0),
            Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                Some(exit) => Ok(exit.0),
                None => Err(anyhow!("{e:?}")).context("the guest trapped"),
            },
        }
    }
}
