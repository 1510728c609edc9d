//! The function registry, users and tokens, and state.
//!
//! ```text
//!   DATA_DIR/functions/USER/FUNCTION/function.wasm    as uploaded (the source of truth)
//!   DATA_DIR/functions/USER/FUNCTION/function.cwasm   precompiled by this runtime's engine (a cache)
//! ```
//! A restarted runtime loads every stored function from its precompiled code, or recompiles the
//! wasm when the cache is missing or was made by another engine.

mod state;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub use state::{StateError, StateStore};
pub use ebb_memnode::tokens::{TokenFileError, Tokens};

/// Loads a runtime tokens file: `USER TOKEN` lines with valid user names.
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
    #[error("The module does not compile: {0:#}")]
    Compile(anyhow::Error),
    #[error("Failed to store function {key} under {dir}")]
    Store { key: FunctionKey, dir: String, #[source] source: std::io::Error },
}

/// Functions by name, backed by the data directory.
pub struct Registry {
    dir: PathBuf,
    functions: RwLock<HashMap<FunctionKey, Arc<Function>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Registry {
    /// Opens (creating) the registry under `data_dir` and loads every stored function.
    pub fn open(data_dir: &Path, exec: &Executor) -> anyhow::Result<Registry> {
        let dir = data_dir.join("functions");
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create the data directory {}: {e}", dir.display()))?;
        let mut functions = HashMap::new();
        for user in std::fs::read_dir(&dir)? {
            let user = user?;
            for func in std::fs::read_dir(user.path())? {
                let func = func?;
                let (Some(u), Some(f)) = (user.file_name().to_str().map(String::from), func.file_name().to_str().map(String::from)) else {
                    continue;
                };
                let Ok(key) = FunctionKey::new(&u, &f) else { continue };
                match load(&func.path(), &key, exec) {
                    Ok(function) => {
                        functions.insert(key, Arc::new(function));
                    }
                    Err(e) => tracing::warn!("skipping stored function {key}: {e:#}"),
                }
            }
        }
        tracing::info!("registry: {} functions loaded from {}", functions.len(), dir.display());
        Ok(Registry { dir, functions: RwLock::new(functions) })
    }

    /// Validates and precompiles `wasm`, stores it, and makes it the current version of `key`.
    pub fn upload(&self, exec: &Executor, key: FunctionKey, wasm: &[u8]) -> Result<Arc<Function>, UploadError> {
        let module = exec.compile(wasm).map_err(UploadError::Compile)?;
        let dir = self.dir.join(&key.user).join(&key.function);
        let store_err = |source| UploadError::Store { key: key.clone(), dir: dir.display().to_string(), source };
        std::fs::create_dir_all(&dir).map_err(store_err)?;
        let code = module.serialize().map_err(|e| store_err(std::io::Error::other(format!("{e}"))))?;
        write_atomically(&dir.join("function.wasm"), wasm, 0o644).map_err(store_err)?;
        write_atomically(&dir.join("function.cwasm"), &code, 0o644).map_err(store_err)?;
        let function = Arc::new(Function::new(key.to_string(), module));
        self.functions.write().unwrap_or_else(|e| e.into_inner()).insert(key, function.clone());
        Ok(function)
    }

    pub fn get(&self, key: &FunctionKey) -> Option<Arc<Function>> {
        self.functions.read().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    pub fn all(&self) -> Vec<(FunctionKey, Arc<Function>)> {
        let map = self.functions.read().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, f)| (k.clone(), f.clone())).collect()
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

fn load(dir: &Path, key: &FunctionKey, exec: &Executor) -> anyhow::Result<Function> {
    let cwasm = dir.join("function.cwasm");
    if cwasm.exists() {
        // SAFETY: the file was written by `Registry::upload` of this runtime from
        // `Module::serialize` into a directory only the runtime writes; wasmtime still checks
        // that it was compiled by a compatible engine and refuses it otherwise.
        match unsafe { wasmtime::Module::deserialize_file(exec.engine(), &cwasm) } {
            Ok(module) => return Ok(Function::new(key.to_string(), module)),
            Err(e) => tracing::info!("recompiling {key}: its precompiled code is not usable ({e})"),
        }
    }
    let wasm = std::fs::read(dir.join("function.wasm"))?;
    Ok(Function::new(key.to_string(), exec.compile(&wasm)?))
}
