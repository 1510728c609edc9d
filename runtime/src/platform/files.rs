//! The filesystem a function sees (Faasm's): its own writable root at `/`, holding the few
//! system files Faasm's functions read (`/etc/hosts`, `/etc/passwd`, `/etc/resolv.conf`) and a `/tmp`, and the
//! user's shared files at Faasm's `faasm://` prefix. On the host, under the data directory:
//!
//! ```text
//!   DATA_DIR/files/USER/functions/FUNCTION/   the function's `/`
//!   DATA_DIR/files/USER/shared/               `faasm://…`, every function of USER
//! ```
//! A tenant's functions see only that tenant's directories (the names are the registry's
//! checked user and function names), and WASI confines every path to its preopen.

use std::path::Path;

use crate::exec::Preopen;

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
