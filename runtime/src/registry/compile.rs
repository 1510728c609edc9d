//! Compiling uploads within bounds.
//!
//! A module is first checked against static limits (its size and the counts that make compiling
//! expensive: functions, code size, data segments — 100 000 one-byte data segments cost minutes
//! and gigabytes), then compiled — by the `runtime` binary in a child process (`runtime compile`,
//! wasm on stdin, code on stdout) under `RLIMIT_CPU` and `RLIMIT_AS` and a wall-clock deadline,
//! or, for library users without that binary (benches, tests), in this process after the static
//! checks only.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wasmtime::Module;

use crate::exec::Executor;

/// What an upload may cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileLimits {
    /// Largest module (wasm or WAT) accepted, in bytes. Default 64 MiB.
    pub max_module: usize,
    /// Most functions defined. Default 100 000.
    pub max_functions: u32,
    /// Most data segments. Default 4 096 (wasm-ld merges a program's into a handful).
    pub max_data_segments: u32,
    /// Largest function body, in bytes. Default 4 MiB.
    pub max_function_body: usize,
    /// CPU time a compile may use (all its threads). Default 60 s.
    pub cpu: Duration,
    /// Wall time a compile may take. Default 120 s.
    pub wall: Duration,
    /// Address space the compiling process may use. Default 4 GiB.
    pub memory: u64,
}

impl Default for CompileLimits {
    fn default() -> Self {
        CompileLimits {
            max_module: 64 << 20,
            max_functions: 100_000,
            max_data_segments: 4096,
            max_function_body: 4 << 20,
            cpu: Duration::from_secs(60),
            wall: Duration::from_secs(120),
            memory: 4 << 30,
        }
    }
}

/// Why a module was refused.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("The module is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("The module has {count} {what}, over the limit of {limit}")]
    TooMany { what: &'static str, count: u64, limit: u64 },
    #[error("The module does not compile: {0:#}")]
    Invalid(anyhow::Error),
    #[error("The module cannot run on Ebb: {0}")]
    Unsupported(String),
    #[error("Compiling the module ran past its {what} limit ({limit}) and was stopped")]
    Limit { what: &'static str, limit: String },
    #[error("Could not run the compiler process {exe}")]
    Process { exe: String, #[source] source: std::io::Error },
}

/// How uploads are compiled.
#[derive(Clone, Debug)]
pub struct Compiler {
    limits: CompileLimits,
    /// The `runtime` binary to run `compile` in a child process; None compiles in this process.
    exe: Option<PathBuf>,
}

impl Compiler {
    /// Compiles in this process, after the static checks (no time or memory bound).
    pub fn in_process(limits: CompileLimits) -> Compiler {
        Compiler { limits, exe: None }
    }

    /// Compiles in child processes of `exe` (the `runtime` binary) under the limits.
    pub fn subprocess(exe: PathBuf, limits: CompileLimits) -> Compiler {
        Compiler { limits, exe: Some(exe) }
    }

    pub fn limits(&self) -> &CompileLimits {
        &self.limits
    }

    /// Checks and compiles `bytes` (wasm or WAT) into a module of `exec`'s engine and its
    /// loadable code.
    pub fn compile(&self, exec: &Executor, bytes: &[u8]) -> Result<(Module, Vec<u8>), CompileError> {
        let l = &self.limits;
        if bytes.len() > l.max_module {
            return Err(CompileError::TooLarge { size: bytes.len(), limit: l.max_module });
        }
        let wasm = wat::parse_bytes(bytes).map_err(|e| CompileError::Invalid(anyhow::anyhow!("neither wasm nor valid WAT: {e}")))?;
        check_static(&wasm, l)?;
        let code = match &self.exe {
            None => {
                let module = exec.compile(&wasm).map_err(CompileError::Invalid)?;
                exec.check_imports(&module).map_err(CompileError::Unsupported)?;
                let code = module.serialize().map_err(|e| CompileError::Invalid(anyhow::anyhow!("{e}")))?;
                return Ok((module, code));
            }
            Some(exe) => compile_in_child(exe, &wasm, l)?,
        };
        let module = exec.load_compiled(&code).map_err(CompileError::Invalid)?;
        exec.check_imports(&module).map_err(CompileError::Unsupported)?;
        Ok((module, code))
    }
}

const THREADS: &str = "the module has a shared memory: wasm threads are not supported (see docs/platform.md, \"Not supported\")";

/// The static limits, from the module's sections (without compiling anything).
fn check_static(wasm: &[u8], l: &CompileLimits) -> Result<(), CompileError> {
    let invalid = |e: wasmparser::BinaryReaderError| CompileError::Invalid(anyhow::anyhow!("{e}"));
    let too_many = |what, count: u32, limit: u32| CompileError::TooMany { what, count: u64::from(count), limit: u64::from(limit) };
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.map_err(invalid)? {
            wasmparser::Payload::FunctionSection(s) if s.count() > l.max_functions => {
                return Err(too_many("functions", s.count(), l.max_functions));
            }
            wasmparser::Payload::DataSection(s) if s.count() > l.max_data_segments => {
                return Err(too_many("data segments", s.count(), l.max_data_segments));
            }
            wasmparser::Payload::MemorySection(s) => {
                for m in s {
                    if m.map_err(invalid)?.shared {
                        return Err(CompileError::Unsupported(THREADS.into()));
                    }
                }
            }
            wasmparser::Payload::ImportSection(s) => {
                for i in s.into_imports() {
                    if matches!(i.map_err(invalid)?.ty, wasmparser::TypeRef::Memory(m) if m.shared) {
                        return Err(CompileError::Unsupported(THREADS.into()));
                    }
                }
            }
            wasmparser::Payload::CodeSectionEntry(body) if body.range().len() > l.max_function_body => {
                let size = body.range().len();
                return Err(CompileError::TooMany { what: "bytes in one function body", count: size as u64, limit: l.max_function_body as u64 });
            }
            _ => {}
        }
    }
    Ok(())
}

fn compile_in_child(exe: &std::path::Path, wasm: &[u8], l: &CompileLimits) -> Result<Vec<u8>, CompileError> {
    let process = |source| CompileError::Process { exe: exe.display().to_string(), source };
    let (cpu, memory) = (l.cpu.as_secs().max(1), l.memory);
    let mut cmd = Command::new(exe);
    cmd.arg("compile").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec and calls only setrlimit, which
    // is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            set_limit(libc::RLIMIT_CPU, cpu)?;
            set_limit(libc::RLIMIT_AS, memory)?;
            set_limit(libc::RLIMIT_CORE, 0)
        });
    }
    let mut child = cmd.spawn().map_err(process)?;
    let mut stdin = child.stdin.take().expect("piped");
    let (mut stdout, mut stderr) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let input = wasm.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).map(|_| out)
    });
    let errors = std::thread::spawn(move || {
        let mut err = Vec::new();
        let _ = stderr.by_ref().take(64 << 10).read_to_end(&mut err);
        String::from_utf8_lossy(&err).into_owned()
    });
    let deadline = Instant::now() + l.wall;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(process)? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CompileError::Limit { what: "wall time", limit: format!("{:?}", l.wall) });
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    let out = reader.join().map_err(|_| process(std::io::Error::other("the reader thread panicked")))?.map_err(process)?;
    let stderr = errors.join().unwrap_or_default();
    if status.success() {
        return Ok(out);
    }
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(libc::SIGXCPU) | Some(libc::SIGKILL) => Err(CompileError::Limit { what: "CPU time", limit: format!("{}s", l.cpu.as_secs()) }),
        _ if stderr.contains("memory allocation") || stderr.contains("out of memory") || status.signal() == Some(libc::SIGABRT) => {
            Err(CompileError::Limit { what: "memory", limit: format!("{} bytes", l.memory) })
        }
        _ => Err(CompileError::Invalid(anyhow::anyhow!("{}", stderr.trim().trim_start_matches("Error: ")))),
    }
}

/// setrlimit(2) for both the soft and the hard limit (async-signal-safe: usable in `pre_exec`).
fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let lim = libc::rlimit { rlim_cur: value, rlim_max: value };
    // SAFETY: a valid rlimit struct for the duration of the call.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wat(text: &str) -> Vec<u8> {
        wat::parse_str(text).unwrap()
    }

    #[test]
    fn static_limits_refuse_before_compiling() {
        let l = CompileLimits { max_data_segments: 2, max_functions: 1, ..Default::default() };
        let three_segments = wat(r#"(module (memory 1) (data (i32.const 0) "a") (data (i32.const 1) "b") (data (i32.const 2) "c"))"#);
        let err = check_static(&three_segments, &l).unwrap_err();
        assert!(matches!(err, CompileError::TooMany { what: "data segments", count: 3, limit: 2 }), "{err}");
        let two_functions = wat("(module (func) (func))");
        assert!(matches!(check_static(&two_functions, &l), Err(CompileError::TooMany { what: "functions", .. })));
        check_static(&wat("(module (func))"), &l).unwrap();
    }
}
