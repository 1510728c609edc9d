//! A guest's WASI context: its arguments, Faasm's environment, its directories (preopens), its
//! stdout, and the bounds on what it may hold open and write to disk. Made anew when a call
//! changes `argv` or leaves files open (see `Instance::call`).
//!
//! The disk bound ([`FileQuota`]) wraps the preview1 calls that take disk: each wrapper takes
//! its room, then calls wasmtime-wasi's own implementation through a small wasm module each
//! store instantiates beside the guest ([`WasiOriginals`]).

use std::sync::Arc;

use anyhow::anyhow;
use wasmtime::{AsContextMut, Caller, Func, Linker, WasmParams};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;

use super::fsquota::{FileQuota, Room};
use super::{Host, Stdout};

/// A host directory a guest sees at `guest` (a WASI preopen).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preopen {
    pub host: std::path::PathBuf,
    pub guest: String,
}

/// The directories a function sees, and the bound on the disk they may take.
#[derive(Clone, Debug, Default)]
pub struct FunctionFiles {
    pub dirs: Vec<Preopen>,
    pub quota: Option<Arc<FileQuota>>,
}

/// The environment Faasm gives every function (Faasm's `WasmEnvironment`): its Python port's
/// settings, which Faasm's own functions check, and single-threaded maths libraries.
const FAASM_ENV: [(&str, &str); 7] = [
    ("MKL_NUM_THREADS", "1"),
    ("OPENBLAS_NUM_THREADS", "1"),
    ("PYTHONHASHSEED", "0"),
    ("PYTHONHOME", "/"),
    ("PYTHONNOUSERSITE", "on"),
    ("PYTHONWASM", "1"),
    ("PYTHON_PATH", "/"),
];

/// The host file behind a guest path as the guest's libc resolves it against its preopens, for
/// host calls that take a path (`__faasm_write_state_from_file`): a path whose first component
/// names a preopen (Faasm's `faasm://x` is `faasm:` then `x`) is in that one, any other under
/// `/` (the guest's working directory). None for a path that leaves its directory, also by a
/// symlink, or that does not exist.
pub fn host_path(dirs: &[Preopen], guest: &str) -> Option<std::path::PathBuf> {
    let parts: Vec<&str> = guest.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    let (dir, rest) = match parts.split_first() {
        Some((first, rest)) if !guest.starts_with('/') && dirs.iter().any(|d| d.guest == *first) => {
            (dirs.iter().find(|d| d.guest == *first)?, rest)
        }
        _ => (dirs.iter().find(|d| d.guest == "/")?, &parts[..]),
    };
    if rest.contains(&"..") {
        return None;
    }
    let real = rest.iter().fold(dir.host.clone(), |p, c| p.join(c)).canonicalize().ok()?;
    real.starts_with(dir.host.canonicalize().ok()?).then_some(real)
}

/// Most WASI resources (open files, directories, streams) one instance may hold at once: each is a
/// host file descriptor of the runtime process, which every tenant shares.
pub(super) const MAX_WASI_RESOURCES: usize = 256;

/// What a guest's WASI context is made of.
#[derive(Clone, Debug)]
pub(super) struct WasiSpec {
    pub(super) stdout: Stdout,
    pub(super) args: Vec<String>,
    /// The directories the guest sees (its WASI preopens) and their disk bound.
    pub(super) files: FunctionFiles,
}

impl WasiSpec {
    /// A WASI context, bounded to [`MAX_WASI_RESOURCES`], and how many resources it starts with.
    pub(super) fn build(&self) -> anyhow::Result<(WasiP1Ctx, usize)> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(&self.args).envs(&FAASM_ENV).inherit_stderr();
        match &self.stdout {
            Stdout::Inherit => wasi.inherit_stdout(),
            Stdout::Log => wasi.stdout(LogTerminal).stderr(LogTerminal),
            Stdout::Capture(pipe) => wasi.stdout(pipe.clone()),
        };
        for d in &self.files.dirs {
            wasi.preopened_dir(&d.host, &d.guest, wasmtime_wasi::FsPerms::ReadWrite)
                .map_err(|e| anyhow!("cannot give the function its directory {}: {e}", d.host.display()))?;
        }
        let mut ctx = wasi.build_p1();
        let table = wasmtime_wasi::WasiView::ctx(&mut ctx).table;
        table.set_max_capacity(MAX_WASI_RESOURCES);
        let baseline = table.iter_mut().count();
        Ok((ctx, baseline))
    }
}

/// The runtime's log (its stderr) as a platform function's stdout and stderr: a terminal, as
/// Faasm gives its functions (`isatty` is true; libc line-buffers).
struct LogTerminal;

impl wasmtime_wasi::cli::IsTerminal for LogTerminal {
    fn is_terminal(&self) -> bool {
        true
    }
}

impl wasmtime_wasi::cli::StdoutStream for LogTerminal {
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        tokio::io::stderr().p2_stream()
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        tokio::io::stderr().async_stream()
    }
}

/// `argv[0]` of every function, as Faasm sets it.
pub const ARGV0: &str = "function.wasm";

const P1: &str = "wasi_snapshot_preview1";

/// How many preview1 calls the disk bound wraps (besides `fd_renumber`): see [`PASSED`].
const WRAPPED: usize = 8;

/// wasmtime-wasi's own implementations of the [`WRAPPED`] calls and `fd_renumber`, reached
/// through a small wasm module instantiated in each store beside the guest ([`trampoline_wat`]).
/// wasmtime-wasi finds the memory it reads and writes through its caller's `memory` export, and
/// a host function called from the host has no calling instance; called from this module, which
/// imports the guest's memory and exports it again, its caller has the guest's memory.
pub(super) struct WasiOriginals([Func; WRAPPED + 1]);

/// Every call the trampoline passes on, with its wasm parameter types.
const PASSED: [(&str, &str); WRAPPED + 1] = [
    ("fd_write", "i32 i32 i32 i32"),
    ("fd_pwrite", "i32 i32 i32 i64 i32"),
    ("path_open", "i32 i32 i32 i32 i32 i64 i64 i32 i32"),
    ("path_create_directory", "i32 i32 i32"),
    ("path_symlink", "i32 i32 i32 i32 i32"),
    ("path_link", "i32 i32 i32 i32 i32 i32 i32"),
    ("path_unlink_file", "i32 i32 i32"),
    ("path_remove_directory", "i32 i32 i32"),
    ("fd_renumber", "i32 i32"),
];

/// The trampoline module: each of [`PASSED`] imported from WASI and exported as a function that
/// calls it with its own arguments; the guest's memory imported and exported as `memory`.
pub(super) fn trampoline_wat() -> String {
    let mut wat = String::from("(module\n");
    for (name, params) in PASSED {
        wat += &format!("  (import \"{P1}\" \"{name}\" (func ${name} (param {params}) (result i32)))\n");
    }
    wat += "  (import \"guest\" \"memory\" (memory 0))\n  (export \"memory\" (memory 0))\n";
    for (name, params) in PASSED {
        let gets: String = (0..params.split(' ').count()).map(|i| format!("local.get {i} ")).collect();
        wat += &format!("  (func (export \"{name}\") (param {params}) (result i32) {gets}call ${name})\n");
    }
    wat + ")\n"
}

/// WASI's errno for "disk quota exceeded" (`EDQUOT`).
const ERRNO_DQUOT: i32 = 19;
/// `__WASI_OFLAGS_CREAT`.
const OFLAGS_CREAT: i32 = 1;

impl WasiOriginals {
    /// Instantiates `trampoline` in `store` over `wasi` (a linker holding WASI alone) and the
    /// guest's `memory`.
    pub(super) fn new(
        trampoline: &wasmtime::Module,
        wasi: &Linker<Host>,
        mut store: impl AsContextMut<Data = Host>,
        memory: wasmtime::Memory,
    ) -> anyhow::Result<WasiOriginals> {
        let mut imports = Vec::with_capacity(PASSED.len() + 1);
        for (name, _) in PASSED {
            imports.push(wasi.get(&mut store, P1, name).map_err(|e| anyhow!("wasmtime-wasi provides no {P1}.{name}: {e}"))?);
        }
        imports.push(memory.into());
        let instance = wasmtime::Instance::new(&mut store, trampoline, &imports).map_err(|e| anyhow!("the WASI trampoline: {e:?}"))?;
        let mut funcs = Vec::with_capacity(PASSED.len());
        for (name, _) in PASSED {
            funcs.push(instance.get_func(&mut store, name).ok_or_else(|| anyhow!("the WASI trampoline exports no {name}"))?);
        }
        Ok(WasiOriginals(funcs.try_into().map_err(|_| anyhow!("the WASI trampoline's exports"))?))
    }

    fn get(&self, name: &str) -> Func {
        let i = PASSED.iter().position(|(n, _)| *n == name).expect("a passed call");
        self.0[i]
    }
}

/// Calls wasmtime-wasi's `name` with `params`, first taking `room` from the guest's disk bound
/// (refused with `EDQUOT`, nothing done, when it is not there). A call that took room, or that
/// `frees` it, has its user's disk measured again when it ends.
fn bounded<P: WasmParams>(caller: &mut Caller<'_, Host>, name: &str, room: Room, frees: bool, params: P) -> wasmtime::Result<i32> {
    let host = caller.data();
    let original = host
        .wasi_originals
        .as_ref()
        .ok_or_else(|| wasmtime::format_err!("WASI call {name} before the instance was made, or without an exported memory"))?
        .get(name);
    let quota = host.wasi_spec.files.quota.clone().filter(|_| room != Room::default() || frees);
    if let Some(q) = &quota
        && room != Room::default()
        && !q.take(room)
    {
        let (used, bound) = (q.used(), q.bound());
        tracing::info!(
            "a call of {} was refused disk: its user holds {} bytes in {} entries of the {} bytes and {} entries allowed",
            host.ctx.as_ref().map_or("a function", |c| c.function.name.as_str()),
            used.bytes,
            used.entries,
            bound.bytes,
            bound.entries
        );
        return Ok(ERRNO_DQUOT);
    }
    let result = original.typed::<P, i32>(&*caller).and_then(|f| f.call(&mut *caller, params));
    if let Some(q) = quota {
        q.done(room);
        caller.data_mut().files_written = true;
    }
    result
}

/// Bytes the `n` iovecs at `iovs` (wasm32 `{ buf: u32, len: u32 }`) hold; 0 if they are not in
/// memory (the call itself then fails with `EFAULT`).
fn iov_bytes(caller: &mut Caller<'_, Host>, iovs: i32, n: i32) -> u64 {
    let Some(mem) = caller.get_export("memory").and_then(|e| e.into_memory()) else { return 0 };
    let (start, n) = (iovs.cast_unsigned() as usize, n.cast_unsigned() as usize);
    let Some(bytes) = n.checked_mul(8).and_then(|len| mem.data(&*caller).get(start..start.checked_add(len)?)) else { return 0 };
    bytes.chunks_exact(8).map(|c| u64::from(u32::from_le_bytes([c[4], c[5], c[6], c[7]]))).sum()
}

/// Room a write to `fd` takes: none for the runtime's stdout and stderr (until a guest renumbers
/// a file onto them), else its bytes.
fn write_room(caller: &mut Caller<'_, Host>, fd: i32, iovs: i32, n: i32) -> Room {
    if (0..=2).contains(&fd) && !caller.data().stdio_renumbered {
        return Room::default();
    }
    Room { bytes: iov_bytes(caller, iovs, n), entries: 0 }
}

/// Wraps the preview1 calls that take disk with the guest's [`FileQuota`] (after
/// `wasmtime_wasi::p1::add_to_linker_sync`).
pub(super) fn add_disk_bound(linker: &mut Linker<Host>) -> anyhow::Result<()> {
    let err = |e: wasmtime::Error| anyhow!("{e}");
    linker.allow_shadowing(true);
    linker
        .func_wrap(P1, "fd_write", |mut caller: Caller<'_, Host>, fd: i32, iovs: i32, n: i32, written: i32| {
            let room = write_room(&mut caller, fd, iovs, n);
            bounded(&mut caller, "fd_write", room, false, (fd, iovs, n, written))
        })
        .map_err(err)?;
    linker
        .func_wrap(P1, "fd_pwrite", |mut caller: Caller<'_, Host>, fd: i32, iovs: i32, n: i32, offset: i64, written: i32| {
            let room = write_room(&mut caller, fd, iovs, n);
            bounded(&mut caller, "fd_pwrite", room, false, (fd, iovs, n, offset, written))
        })
        .map_err(err)?;
    linker
        .func_wrap(
            P1,
            "path_open",
            |mut caller: Caller<'_, Host>, fd: i32, dirflags: i32, path: i32, len: i32, oflags: i32, base: i64, inheriting: i64, fdflags: i32, opened: i32| {
                let room = Room { bytes: 0, entries: u64::from(oflags & OFLAGS_CREAT != 0) };
                bounded(&mut caller, "path_open", room, false, (fd, dirflags, path, len, oflags, base, inheriting, fdflags, opened))
            },
        )
        .map_err(err)?;
    // A directory and a symlink take a block at most; a hard link only an entry.
    linker
        .func_wrap(P1, "path_create_directory", |mut caller: Caller<'_, Host>, fd: i32, path: i32, len: i32| {
            bounded(&mut caller, "path_create_directory", Room { bytes: 4096, entries: 1 }, false, (fd, path, len))
        })
        .map_err(err)?;
    linker
        .func_wrap(P1, "path_symlink", |mut caller: Caller<'_, Host>, old: i32, old_len: i32, fd: i32, new: i32, new_len: i32| {
            bounded(&mut caller, "path_symlink", Room { bytes: 4096, entries: 1 }, false, (old, old_len, fd, new, new_len))
        })
        .map_err(err)?;
    linker
        .func_wrap(
            P1,
            "path_link",
            |mut caller: Caller<'_, Host>, old_fd: i32, flags: i32, old: i32, old_len: i32, fd: i32, new: i32, new_len: i32| {
                bounded(&mut caller, "path_link", Room { bytes: 0, entries: 1 }, false, (old_fd, flags, old, old_len, fd, new, new_len))
            },
        )
        .map_err(err)?;
    // Deletions give room back when the call ends.
    for name in ["path_unlink_file", "path_remove_directory"] {
        linker
            .func_wrap(P1, name, move |mut caller: Caller<'_, Host>, fd: i32, path: i32, len: i32| {
                bounded(&mut caller, name, Room::default(), true, (fd, path, len))
            })
            .map_err(err)?;
    }
    // A file renumbered onto stdout or stderr (`freopen`) makes their writes count.
    linker
        .func_wrap(P1, "fd_renumber", |mut caller: Caller<'_, Host>, from: i32, to: i32| {
            if (0..=2).contains(&to) {
                caller.data_mut().stdio_renumbered = true;
            }
            bounded(&mut caller, "fd_renumber", Room::default(), false, (from, to))
        })
        .map_err(err)?;
    linker.allow_shadowing(false);
    Ok(())
}
