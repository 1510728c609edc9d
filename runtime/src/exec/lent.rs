//! Calls on lent memory: the guest side of an offloaded `storageCallAndAwait`.
//!
//! The compute node's instance is stopped in the host call; its globals travel with the call
//! descriptor, and its memory is lent by pages (`pager::share`). The storage node makes an
//! instance of the same function that *borrows* that memory, sets the globals, runs the table
//! entry, writes back what it changed and answers with the return value, the globals and the
//! changed pages. Such an instance is never reused.

use std::sync::Arc;

use anyhow::{Context, anyhow};
use wasmtime::{AsContextMut, Table, Val};

use super::{CallContext, Executor, Function, Host, Instance, Stdout, outcome, rewrite};
use crate::pager::LentMemory;

/// What an offloaded call did, for its caller.
#[derive(Debug, Clone)]
pub struct LentOutcome {
    /// The table entry's return value.
    pub rc: i32,
    /// What it passed to `__faasm_write_output`.
    pub output: Vec<u8>,
    /// Every exported mutable global afterwards.
    pub globals: Vec<(String, Val)>,
    /// The memory's size afterwards, in bytes.
    pub size: usize,
    /// Pages it wrote (ascending), now in the lender's region.
    pub changed: Vec<usize>,
}

/// Calls the `(i32 …) -> i32` function at `index` of `table` with `args` (at most two).
pub(crate) fn call_table_entry(mut store: impl AsContextMut<Data = Host>, table: Option<Table>, index: u32, args: &[i32]) -> wasmtime::Result<i32> {
    let table = table.ok_or_else(|| wasmtime::format_err!("the function exports no function table (`__indirect_function_table`)"))?;
    let func = table
        .get(&mut store, u64::from(index))
        .and_then(|r| r.as_func().flatten().copied())
        .ok_or_else(|| wasmtime::format_err!("no function at table index {index}"))?;
    let bad = |e: wasmtime::Error| wasmtime::format_err!("the function at table index {index} must take {} int(s) and return int: {e}", args.len());
    match *args {
        [] => func.typed::<(), i32>(&store).map_err(bad)?.call(&mut store, ()),
        [a] => func.typed::<i32, i32>(&store).map_err(bad)?.call(&mut store, a),
        [a, b] => func.typed::<(i32, i32), i32>(&store).map_err(bad)?.call(&mut store, (a, b)),
        _ => Err(wasmtime::format_err!("at most two arguments")),
    }
}

/// The names of the globals a call's state includes (the module's exported mutable globals).
pub fn global_names(function: &Function) -> Vec<String> {
    function.module.exports().filter(|e| e.name().starts_with(rewrite::GLOBAL_EXPORT_PREFIX)).map(|e| e.name().to_string()).collect()
}

impl Executor {
    /// An instance of `function` on the memory `lent` by another node, with its `globals`: no
    /// start-up state of its own (no init phase, no snapshot of this node).
    pub fn borrowed_instance(
        &self,
        function: &Arc<Function>,
        ctx: CallContext,
        lent: &LentMemory,
        globals: &[(String, Val)],
        limit: std::time::Duration,
    ) -> anyhow::Result<Instance> {
        let mut store = self.store(Stdout::Log, &[super::ARGV0.to_string()], Some(ctx))?;
        store.data_mut().deadline = Some(std::time::Instant::now() + limit);
        let mut inst = self.link(store, &function.module)?;
        let handle = inst.memory.clone().context("offloading needs the function to export its memory")?;
        let memory = inst.instance.get_memory(&mut inst.store, "memory").context("the function exports no memory")?;
        let (have, want) = (memory.data_size(&inst.store), lent.pages * ebb_memnode::PAGE_SIZE);
        if want < have || !(want - have).is_multiple_of(super::host::WASM_PAGE) {
            anyhow::bail!("the lent memory ({want} bytes) does not fit this function's memory ({have} bytes at start)");
        }
        memory.grow(&mut inst.store, ((want - have) / super::host::WASM_PAGE) as u64).map_err(|e| anyhow!("{e:?}"))?;
        handle.borrow(lent)?;
        inst.globals = globals.to_vec();
        inst.restore_globals()?;
        inst.discard = true;
        Ok(inst)
    }
}

impl Instance {
    /// Runs table entry `index` with `args` on borrowed memory (see [`Executor::borrowed_instance`]),
    /// then writes back what it changed.
    pub fn call_lent(&mut self, index: u32, args: &[i32]) -> anyhow::Result<LentOutcome> {
        let table = self.instance.get_table(&mut self.store, "__indirect_function_table");
        let result = call_table_entry(&mut self.store, table, index, args);
        self.check_memory()?;
        let rc = outcome(result)?;
        let handle = self.memory.clone().context("a borrowed instance without its memory")?;
        let changed = handle.give_back()?;
        let globals = self.read_globals();
        let output = std::mem::take(&mut self.store.data_mut().output);
        Ok(LentOutcome { rc, output, globals, size: handle.size(), changed })
    }
}
