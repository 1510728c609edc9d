//! The function registry and users' tokens.
//!
//! ```text
//!   DATA_DIR/functions/USER/FUNCTION/function.wasm                 as uploaded (the source of truth)
//!   DATA_DIR/functions/USER/FUNCTION/function-<sha256 of it>.cwasm  precompiled code for exactly it
//! ```
//! Every file is written to a unique temp file, fsynced and renamed into place, one upload of a
//! function at a time. The code file is named by the digest of the wasm it was compiled from, so
//! a crash between the two renames can never pair a module with another module's code: a
//! restarted runtime loads the code whose digest matches, or recompiles.
//!
//! Uploads are compiled by a [`Compiler`]: after static limits (size, sections) are checked, in a
//! child process (`runtime compile`) with bounded CPU time, wall time and memory, so a module
//! crafted to make the compiler explode costs an upload error, not the server.

mod compile;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

pub use compile::{CompileError, CompileLimits, Compiler};
pub use ebb_memnode::tokens::{TokenFileError, Tokens};

/// Loads a runtime tokens file: `USER TOKEN [operator]` lines with valid user names.
pub fn load_tokens(path: &Path) -> Result<Tokens, TokenFileError> {
    Tokens::load_with(path, ebb_memnode::tokens::Fields::Operator, |user| check_name("user", user).is_ok())
}

use crate::exec::{Executor, Function};

/// A function's name: `user/function`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionKey {
    pub user: String,
    pub function: String,
}

impl std::fmt::Display for FunctionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.user, self.function)
    }
}

/// Why a name is not acceptable (it becomes a path on disk).
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok { Ok(()) } else { Err(format!("{kind} name `{name}` must be 1-128 characters of A-Z a-z 0-9 _ - .")) }
}

impl FunctionKey {
    pub fn new(user: &str, function: &str) -> Result<FunctionKey, String> {
        check_name("user", user)?;
        check_name("function", function)?;
        Ok(FunctionKey { user: user.to_string(), function: function.to_string() })
    }
}

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{0}")]
    BadName(String),
    #[error("The module was refused")]
    Compile(#[from] CompileError),
    #[error("Failed to store function {key} under {dir}")]
    Store { key: FunctionKey, dir: String, #[source] source: std::io::Error },
}

/// Functions by name, backed by the data directory.
pub struct Registry {
    dir: PathBuf,
    functions: RwLock<HashMap<FunctionKey, Arc<Function>>>,
    /// One upload of a function at a time (the disk and the map change together).
    uploading: Mutex<HashMap<FunctionKey, Arc<Mutex<()>>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// The hex SHA-256 of `bytes`.
fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn code_name(wasm: &[u8]) -> String {
    format!("function-{}.cwasm", digest(wasm))
}

impl Registry {
    /// Opens (creating) the registry under `data_dir` and loads every stored function: from its
    /// precompiled code when that matches the stored wasm and this engine, else by compiling it.
    pub fn open(data_dir: &Path, exec: &Executor, compiler: &Compiler) -> anyhow::Result<Registry> {
        let dir = data_dir.join("functions");
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create the data directory {}: {e}", dir.display()))?;
        let mut functions = HashMap::new();
        for user in std::fs::read_dir(&dir)? {
            let user = user?;
            if !user.file_type()?.is_dir() {
                continue;
            }
            for func in std::fs::read_dir(user.path())? {
                let func = func?;
                let (Some(u), Some(f)) = (user.file_name().to_str().map(String::from), func.file_name().to_str().map(String::from)) else {
                    continue;
                };
                let Ok(key) = FunctionKey::new(&u, &f) else { continue };
                match load(&func.path(), &key, exec, compiler) {
                    Ok(function) => {
                        functions.insert(key, Arc::new(function));
                    }
                    Err(e) => tracing::warn!("skipping stored function {key}: {e:#}"),
                }
            }
        }
        tracing::info!("registry: {} functions loaded from {}", functions.len(), dir.display());
        Ok(Registry { dir, functions: RwLock::new(functions), uploading: Mutex::new(HashMap::new()) })
    }

    /// Validates and compiles `wasm`, stores it, and makes it the current version of `key`.
    pub fn upload(&self, exec: &Executor, compiler: &Compiler, key: FunctionKey, wasm: &[u8]) -> Result<Arc<Function>, UploadError> {
        let (module, code) = compiler.compile(exec, wasm)?;
        let lock = self.uploading.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone();
        let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.dir.join(&key.user).join(&key.function);
        let store_err = |source| UploadError::Store { key: key.clone(), dir: dir.display().to_string(), source };
        std::fs::create_dir_all(&dir).map_err(store_err)?;
        // The code first, under the wasm's digest: whichever rename a crash interrupts, the wasm
        // on disk never meets code compiled from anything else.
        let code_file = code_name(wasm);
        write_atomically(&dir.join(&code_file), &code, 0o644).map_err(store_err)?;
        write_atomically(&dir.join("function.wasm"), wasm, 0o644).map_err(store_err)?;
        remove_stale_code(&dir, &code_file);
        let function = Arc::new(Function::with_digest(key.to_string(), module, digest(wasm)));
        self.functions.write().unwrap_or_else(|e| e.into_inner()).insert(key, function.clone());
        Ok(function)
    }

    /// The stored wasm of `key` (what another node is sent to run the same function).
    pub fn wasm(&self, key: &FunctionKey) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.dir.join(&key.user).join(&key.function).join("function.wasm"))
    }

    pub fn get(&self, key: &FunctionKey) -> Option<Arc<Function>> {
        self.functions.read().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    pub fn all(&self) -> Vec<(FunctionKey, Arc<Function>)> {
        let map = self.functions.read().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, f)| (k.clone(), f.clone())).collect()
    }
}

/// Removes code files of earlier versions (best effort: a leftover is ignored at load anyway).
fn remove_stale_code(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("function") && name.ends_with(".cwasm") && name != keep {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes `bytes` to `path` so that a reader (or a restart after a crash) sees either the old file
/// or the whole new one: a temp file unique to this write (two concurrent writers never share
/// one), fsynced, renamed over `path`, and the directory fsynced so the rename itself is durable.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn load(dir: &Path, key: &FunctionKey, exec: &Executor, compiler: &Compiler) -> anyhow::Result<Function> {
    let wasm = std::fs::read(dir.join("function.wasm"))?;
    let code_file = dir.join(code_name(&wasm));
    if let Ok(code) = std::fs::read(&code_file) {
        match exec.load_compiled(&code) {
            Ok(module) => return Ok(Function::with_digest(key.to_string(), module, digest(&wasm))),
            Err(e) => tracing::info!("recompiling {key}: its precompiled code is not usable ({e:#})"),
        }
    } else {
        tracing::info!("recompiling {key}: no precompiled code for its wasm");
    }
    let (module, code) = compiler.compile(exec, &wasm)?;
    if let Err(e) = write_atomically(&code_file, &code, 0o644) {
        tracing::warn!("could not store the precompiled code of {key}: {e}");
    }
    remove_stale_code(dir, &code_name(&wasm));
    Ok(Function::with_digest(key.to_string(), module, digest(&wasm)))
}
