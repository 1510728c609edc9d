//! The filesystem a function sees (Faasm's): its own writable root at `/`, holding the few
//! system files Faasm's functions read (`/etc/hosts`, `/etc/passwd`, `/etc/resolv.conf`) and a `/tmp`, and the
//! user's shared files at Faasm's `faasm://` prefix. On the host, under the data directory:
//!
//! ```text
//!   DATA_DIR/files/USER/functions/FUNCTION/   the function's `/`
//!   DATA_DIR/files/USER/shared/               `faasm://…`, every function of USER
//! ```
//! A tenant's functions see only that tenant's directories (the names are the registry's
//! checked user and function names), and WASI confines every path to its preopen. What a tenant
//! may write there is bounded ([`FileLimits`], one [`FileQuota`] per user over `DATA_DIR/files/USER`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::exec::{FileQuota, FunctionFiles, Preopen, Room};

/// How much disk one user's functions may take under its files directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLimits {
    /// Bytes (allocated blocks). Default 1 GiB.
    pub max_bytes_per_user: u64,
    /// Files, directories and links. Default 10 000.
    pub max_entries_per_user: u64,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits { max_bytes_per_user: 1 << 30, max_entries_per_user: 10_000 }
    }
}

/// The users' files: their directories, and one disk bound per user shared by all its functions.
#[derive(Debug)]
pub struct Files {
    data_dir: PathBuf,
    limits: FileLimits,
    quotas: Mutex<HashMap<String, Arc<FileQuota>>>,
}

impl Files {
    pub fn new(data_dir: PathBuf, limits: FileLimits) -> Files {
        Files { data_dir, limits, quotas: Mutex::new(HashMap::new()) }
    }

    /// What `function` (`USER/NAME`) of `user` sees, made when missing, with its user's bound.
    pub fn of(&self, user: &str, function: &str) -> std::io::Result<FunctionFiles> {
        let dirs = function_dirs(&self.data_dir, user, function)?;
        let mut quotas = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
        let bound = Room { bytes: self.limits.max_bytes_per_user, entries: self.limits.max_entries_per_user };
        let quota = quotas.entry(user.to_string()).or_insert_with(|| Arc::new(FileQuota::new(self.data_dir.join("files").join(user), bound)));
        Ok(FunctionFiles { dirs, quota: Some(quota.clone()) })
    }
}

/// The guest name of the shared area: a Faasm path `faasm://dir/file` is, to wasi-libc, the
/// relative path `faasm:/dir/file`, whose first component is this preopen.
pub const SHARED_GUEST: &str = "faasm:";

const SYSTEM_FILES: [(&str, &str); 3] = [
    ("etc/hosts", "127.0.0.1\tlocalhost\n"),
    ("etc/passwd", "root:x:0:0:root:/:/bin/sh\n"),
    ("etc/resolv.conf", "nameserver 127.0.0.1\n"),
];

/// The directories of `function` (`USER/NAME`) of `user`, made (with the system files) when
/// missing.
pub fn function_dirs(data_dir: &Path, user: &str, function: &str) -> std::io::Result<Vec<Preopen>> {
    let name = function.split_once('/').map_or(function, |(_, n)| n);
    let base = data_dir.join("files").join(user);
    let root = base.join("functions").join(name);
    let shared = base.join("shared");
    for (path, contents) in SYSTEM_FILES {
        let file = root.join(path);
        if !file.exists() {
            std::fs::create_dir_all(file.parent().unwrap_or(&root))?;
            std::fs::write(&file, contents)?;
        }
    }
    std::fs::create_dir_all(root.join("tmp"))?;
    std::fs::create_dir_all(&shared)?;
    Ok(vec![Preopen { host: root, guest: "/".into() }, Preopen { host: shared, guest: SHARED_GUEST.into() }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::host_path;

    #[test]
    fn guest_paths_stay_in_their_directories() {
        let tmp = std::env::temp_dir().join(format!("ebb-files-{}", std::process::id()));
        let dirs = function_dirs(&tmp, "alice", "alice/f").unwrap();
        assert_eq!(std::fs::read_to_string(dirs[0].host.join("etc/hosts")).unwrap().lines().next(), Some("127.0.0.1\tlocalhost"));
        std::fs::write(dirs[0].host.join("a.txt"), b"a").unwrap();
        std::fs::write(dirs[1].host.join("s.txt"), b"s").unwrap();
        assert_eq!(host_path(&dirs, "/a.txt").map(|p| std::fs::read(p).unwrap()), Some(b"a".to_vec()));
        assert_eq!(host_path(&dirs, "a.txt").map(|p| std::fs::read(p).unwrap()), Some(b"a".to_vec()));
        assert_eq!(host_path(&dirs, "faasm://s.txt").map(|p| std::fs::read(p).unwrap()), Some(b"s".to_vec()));
        assert_eq!(host_path(&dirs, "/../../shared/s.txt"), None);
        assert_eq!(host_path(&dirs, "faasm://../functions/f/a.txt"), None);
        std::os::unix::fs::symlink(&dirs[1].host, dirs[0].host.join("out")).unwrap();
        assert_eq!(host_path(&dirs, "/out/s.txt"), None, "a symlink out of the root");
        let bob = function_dirs(&tmp, "bob", "bob/f").unwrap();
        assert_eq!(host_path(&bob, "/a.txt"), None, "tenants do not share");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
