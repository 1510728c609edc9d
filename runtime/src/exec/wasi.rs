//! A guest's WASI context: its arguments, Faasm's environment, its directories (preopens), its
//! stdout, and the bound on what it may hold open. Made anew when a call changes `argv` or leaves
//! files open (see `Instance::call`).

use anyhow::anyhow;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;

use super::Stdout;

/// A host directory a guest sees at `guest` (a WASI preopen).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preopen {
    pub host: std::path::PathBuf,
    pub guest: String,
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
    /// The directories the guest sees (its WASI preopens).
    pub(super) dirs: Vec<Preopen>,
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
        for d in &self.dirs {
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
