//! Objects on a storage node: (user, key) → bytes in a file of this node's disk, the data that
//! near-data calls read in place.
//!
//! ```text
//!   DATA_DIR/objects/USER/KEY        one file per object (the key percent-encoded)
//!   DATA_DIR/objects/USER/.put-N     a put in progress: streamed, fsynced, renamed over KEY
//! ```
//! A put is durable and atomic: its bytes go to a temporary file that is fsynced and renamed over
//! the object, and the directory is fsynced, before the put is acknowledged; a put that dies
//! midway (a SIGKILL, a full disk, a refused size) leaves the old object, or none, never a mix,
//! and its temporary file is removed at the next start. Sizes are bounded per object and per
//! user, counted as bytes arrive (a body bigger than it said, or than the room left, stops being
//! written at the limit). A tenant's objects are in its own directory, reached by its checked
//! user name only.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many bytes of objects may be kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLimits {
    /// Largest object. Default 1 GiB.
    pub max_object: u64,
    /// Most bytes of objects one user may keep on this node. Default 16 GiB.
    pub max_per_user: u64,
}

impl Default for ObjectLimits {
    fn default() -> Self {
        ObjectLimits { max_object: 1 << 30, max_per_user: 16 << 30 }
    }
}

/// Why an object operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("object key {0:?} is not usable: 1 to {MAX_KEY} bytes, and no '/'")]
    BadKey(String),
    #[error("user {user} has no object {key}")]
    NotFound { user: String, key: String },
    #[error("an object of {size} bytes is over the {limit}-byte limit per object")]
    TooLarge { size: u64, limit: u64 },
    #[error("user {user} would keep {size} bytes of objects here, over the {limit}-byte limit: delete objects first")]
    UserFull { user: String, size: u64, limit: u64 },
    #[error("the object store failed")]
    Io(#[from] io::Error),
    #[error("{0}")]
    NotHere(String),
}

/// Longest key, in bytes (its encoded file name stays within the 255-byte limit of a name).
pub const MAX_KEY: usize = 80;

/// Prefix of a put in progress (no encoded key starts with '.').
const PUT_PREFIX: &str = ".put-";

/// One node's objects.
#[derive(Debug)]
pub struct ObjectStore {
    root: PathBuf,
    limits: ObjectLimits,
    /// Bytes of finished objects per user, and bytes of puts in progress (taken as they arrive).
    usage: Mutex<HashMap<String, u64>>,
    next_put: AtomicU64,
}

/// The file name of `key`: bytes outside `[A-Za-z0-9_-]` and a leading '.' percent-encoded, so a
/// name is never '.', '..', hidden or a path.
fn file_name(key: &str) -> Result<String, ObjectError> {
    if key.is_empty() || key.len() > MAX_KEY || key.contains('/') {
        return Err(ObjectError::BadKey(key.to_string()));
    }
    let mut name = String::with_capacity(key.len() * 3);
    for (i, b) in key.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(name)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl ObjectStore {
    /// Opens (or makes) the store under `root`: removes what puts that died left, and counts what
    /// each user keeps.
    pub fn open(root: PathBuf, limits: ObjectLimits) -> io::Result<ObjectStore> {
        fs::create_dir_all(&root)?;
        let mut usage = HashMap::new();
        for user in fs::read_dir(&root)? {
            let user = user?;
            if !user.file_type()?.is_dir() {
                continue;
            }
            let mut bytes = 0;
            for entry in fs::read_dir(user.path())? {
                let entry = entry?;
                if entry.file_name().to_string_lossy().starts_with(PUT_PREFIX) {
                    fs::remove_file(entry.path())?;
                } else {
                    bytes += entry.metadata()?.len();
                }
            }
            usage.insert(user.file_name().to_string_lossy().into_owned(), bytes);
        }
        Ok(ObjectStore { root, limits, usage: Mutex::new(usage), next_put: AtomicU64::new(0) })
    }

    pub fn limits(&self) -> ObjectLimits {
        self.limits
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes `user` keeps (with puts in progress).
    pub fn used(&self, user: &str) -> u64 {
        self.usage().get(user).copied().unwrap_or(0)
    }

    /// The file of an object, whether or not it exists (for reading it in place).
    pub fn path(&self, user: &str, key: &str) -> Result<PathBuf, ObjectError> {
        Ok(self.root.join(user).join(file_name(key)?))
    }

    /// Starts a put of `key` for `user`; `size` is what the request said it would send, if it did
    /// (refused at once when over a limit).
    pub fn begin_put(&self, user: &str, key: &str, size: Option<u64>) -> Result<Put<'_>, ObjectError> {
        let path = self.path(user, key)?;
        if let Some(size) = size {
            if size > self.limits.max_object {
                return Err(ObjectError::TooLarge { size, limit: self.limits.max_object });
            }
            let used = self.used(user);
            if used.saturating_add(size) > self.limits.max_per_user {
                return Err(ObjectError::UserFull { user: user.to_string(), size: used + size, limit: self.limits.max_per_user });
            }
        }
        let dir = self.root.join(user);
        fs::create_dir_all(&dir)?;
        let temp = dir.join(format!("{PUT_PREFIX}{}", self.next_put.fetch_add(1, Ordering::Relaxed)));
        let file = fs::OpenOptions::new().write(true).create_new(true).open(&temp)?;
        Ok(Put { store: self, user: user.to_string(), path, temp, file: Some(file), written: 0 })
    }

    /// The object's file, open for reading, and its size.
    pub fn open_object(&self, user: &str, key: &str) -> Result<(fs::File, u64), ObjectError> {
        let path = self.path(user, key)?;
        match fs::File::open(&path) {
            Ok(f) => {
                let len = f.metadata()?.len();
                Ok((f, len))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ObjectError::NotFound { user: user.into(), key: key.into() }),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes an object (durably: the directory is fsynced).
    pub fn delete(&self, user: &str, key: &str) -> Result<(), ObjectError> {
        let path = self.path(user, key)?;
        let mut usage = self.usage();
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ObjectError::NotFound { user: user.into(), key: key.into() }),
            Err(e) => return Err(e.into()),
        };
        fs::remove_file(&path)?;
        sync_dir(path.parent().unwrap_or(&self.root))?;
        if let Some(u) = usage.get_mut(user) {
            *u = u.saturating_sub(len);
        }
        Ok(())
    }
}

/// A put in progress: bytes are written as they arrive; [`Put::commit`] makes the object, and a
/// put dropped before that leaves nothing.
#[derive(Debug)]
pub struct Put<'a> {
    store: &'a ObjectStore,
    user: String,
    path: PathBuf,
    temp: PathBuf,
    file: Option<fs::File>,
    written: u64,
}

impl Put<'_> {
    /// Appends `bytes`, refusing what passes the limits (the put is then dead).
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ObjectError> {
        use std::io::Write;
        let n = bytes.len() as u64;
        let limits = self.store.limits;
        if self.written + n > limits.max_object {
            return Err(ObjectError::TooLarge { size: self.written + n, limit: limits.max_object });
        }
        {
            let mut usage = self.store.usage();
            let used = usage.entry(self.user.clone()).or_default();
            if *used + n > limits.max_per_user {
                return Err(ObjectError::UserFull { user: self.user.clone(), size: *used + n, limit: limits.max_per_user });
            }
            *used += n;
        }
        self.written += n;
        self.file.as_mut().expect("open until committed").write_all(bytes)?;
        Ok(())
    }

    /// Makes the object durable and visible, replacing any old one; returns its size.
    pub fn commit(mut self) -> Result<u64, ObjectError> {
        let file = self.file.take().expect("committed once");
        file.sync_all()?;
        drop(file);
        let mut usage = self.store.usage();
        let old = fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        fs::rename(&self.temp, &self.path)?;
        // The new bytes were counted as they arrived; the old object's go.
        let written = std::mem::take(&mut self.written);
        if let Some(u) = usage.get_mut(&self.user) {
            *u = u.saturating_sub(old);
        }
        drop(usage);
        sync_dir(self.path.parent().unwrap_or(&self.store.root))?;
        Ok(written)
    }
}

impl Drop for Put<'_> {
    fn drop(&mut self) {
        if self.file.take().is_some() || self.written > 0 {
            let _ = fs::remove_file(&self.temp);
            let mut usage = self.store.usage();
            if let Some(u) = usage.get_mut(&self.user) {
                *u = u.saturating_sub(self.written);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(tag: &str, limits: ObjectLimits) -> (PathBuf, ObjectStore) {
        let root = std::env::temp_dir().join(format!("ebb-objects-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let s = ObjectStore::open(root.clone(), limits).unwrap();
        (root, s)
    }

    fn read(s: &ObjectStore, user: &str, key: &str) -> Vec<u8> {
        let (mut f, _) = s.open_object(user, key).unwrap();
        let mut v = Vec::new();
        io::Read::read_to_end(&mut f, &mut v).unwrap();
        v
    }

    #[test]
    fn puts_replace_whole_and_a_dead_put_leaves_the_old_object() {
        let (root, s) = store("puts", ObjectLimits { max_object: 10, max_per_user: 14 });
        let mut p = s.begin_put("u", "a.txt", None).unwrap();
        p.write(b"hello").unwrap();
        assert!(matches!(s.open_object("u", "a.txt"), Err(ObjectError::NotFound { .. })), "invisible until committed");
        assert_eq!(p.commit().unwrap(), 5);
        assert_eq!(read(&s, "u", "a.txt"), b"hello");
        // A put past the object limit dies; the old object stays, and so does the count.
        let mut p = s.begin_put("u", "a.txt", None).unwrap();
        p.write(b"0123456").unwrap();
        assert!(matches!(p.write(b"789ab"), Err(ObjectError::TooLarge { size: 12, limit: 10 })));
        drop(p);
        assert_eq!((read(&s, "u", "a.txt"), s.used("u")), (b"hello".to_vec(), 5));
        // The user's room is counted across objects; a declared size is refused up front.
        assert!(matches!(s.begin_put("u", "b", Some(10)), Err(ObjectError::UserFull { .. })));
        assert!(matches!(s.begin_put("u", "b", Some(11)), Err(ObjectError::TooLarge { .. })));
        let mut p = s.begin_put("u", "b", None).unwrap();
        p.write(b"012345678").unwrap();
        p.commit().unwrap();
        assert_eq!(s.used("u"), 14);
        let mut p = s.begin_put("u", "c", None).unwrap();
        assert!(matches!(p.write(b"xx"), Err(ObjectError::UserFull { .. })));
        drop(p);
        // A replacement's bytes count beside the old object's until it commits (both are on
        // disk): at the limit, room must be made first.
        let mut p = s.begin_put("u", "b", None).unwrap();
        assert!(matches!(p.write(b"x"), Err(ObjectError::UserFull { .. })));
        drop(p);
        s.delete("u", "a.txt").unwrap();
        assert!(matches!(s.delete("u", "a.txt"), Err(ObjectError::NotFound { .. })));
        assert_eq!(s.used("u"), 9, "deleting gives the room back");
        // Once committed, a replacement counts its own size only.
        let mut p = s.begin_put("u", "b", None).unwrap();
        p.write(b"x").unwrap();
        p.commit().unwrap();
        assert_eq!(s.used("u"), 1);
        let mut p = s.begin_put("u", "a.txt", None).unwrap();
        p.write(b"hello").unwrap();
        p.commit().unwrap();
        assert!(matches!(s.open_object("v", "a.txt"), Err(ObjectError::NotFound { .. })), "users do not share");
        // A put that died with the process (its temporary file left) is removed at the next open.
        let mut p = s.begin_put("u", "a.txt", None).unwrap();
        p.write(b"half").unwrap();
        std::mem::forget(p);
        let s = ObjectStore::open(root.clone(), s.limits()).unwrap();
        assert_eq!((read(&s, "u", "a.txt"), s.used("u")), (b"hello".to_vec(), 6), "counted again at start");
        assert_eq!(fs::read_dir(root.join("u")).unwrap().count(), 2, "no temporary file left");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn keys_are_names_never_paths() {
        assert_eq!(file_name("data.csv").unwrap(), "data.csv");
        assert_eq!(file_name("..").unwrap(), "%2E.");
        assert_eq!(file_name(".hidden").unwrap(), "%2Ehidden");
        assert_eq!(file_name("a b\u{e9}").unwrap(), "a%20b%C3%A9");
        assert!(file_name("a/b").is_err());
        assert!(file_name("").is_err());
        assert!(file_name(&"k".repeat(MAX_KEY + 1)).is_err());
        assert!(file_name(&"\u{e9}".repeat(MAX_KEY / 2)).unwrap().len() <= 255);
    }
}
