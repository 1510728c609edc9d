//! Uploaded workflows (in memory, and under `<data>/workflows/<user>/<name>.yaml` so that a
//! restarted runtime still has them) and the asynchronous workflow calls in progress.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use super::run::Run;
use super::spec::{SpecError, Workflow};

/// Asynchronous workflow calls whose outcome is kept for polling, at most (the oldest go first).
const KEPT_RUNS: usize = 1024;

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("cannot store the workflow under {}: {source}", path.display())]
    Store { path: PathBuf, source: std::io::Error },
}

/// Asynchronous calls kept: (the last id given, (id, user, call) oldest first).
type Kept = (u32, VecDeque<(u32, String, Arc<Run>)>);

#[derive(Debug)]
pub struct Workflows {
    dir: PathBuf,
    map: RwLock<HashMap<(String, String), Arc<Workflow>>>,
    runs: Mutex<Kept>,
}

impl Workflows {
    pub fn new(data_dir: &std::path::Path) -> Workflows {
        Workflows { dir: data_dir.join("workflows"), map: RwLock::default(), runs: Mutex::default() }
    }

    fn path(&self, user: &str, name: &str) -> PathBuf {
        self.dir.join(user).join(format!("{name}.yaml"))
    }

    /// Parses and stores workflow `name` of `user` (names checked by the caller). The file's
    /// `workflow_name` must be `name`; a refused file changes nothing.
    pub fn put(&self, user: &str, name: &str, text: &str, function_exists: impl Fn(&str) -> bool) -> Result<Arc<Workflow>, PutError> {
        let w = Workflow::parse(text, function_exists)?;
        if w.name != name {
            let line = text.lines().position(|l| l.trim_start().starts_with("workflow_name")).map_or(1, |i| i + 1);
            return Err(SpecError { line, reason: format!("workflow_name is {:?}, but the upload names {name:?}", w.name) }.into());
        }
        let path = self.path(user, name);
        let store = |source| PutError::Store { path: path.clone(), source };
        std::fs::create_dir_all(path.parent().unwrap_or(&self.dir)).map_err(store)?;
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)).map_err(store)?;
        let w = Arc::new(w);
        self.map.write().unwrap_or_else(|e| e.into_inner()).insert((user.into(), name.into()), w.clone());
        Ok(w)
    }

    /// Workflow `name` of `user`, if uploaded (read back from disk after a restart; its
    /// functions are checked when its blocks are called).
    pub fn get(&self, user: &str, name: &str) -> Option<Arc<Workflow>> {
        let key = (user.to_string(), name.to_string());
        if let Some(w) = self.map.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Some(w.clone());
        }
        let text = std::fs::read_to_string(self.path(user, name)).ok()?;
        let w = Arc::new(Workflow::parse(&text, |_| true).ok()?);
        self.map.write().unwrap_or_else(|e| e.into_inner()).insert(key, w.clone());
        Some(w)
    }

    /// Keeps an asynchronous call for polling; returns its id.
    pub fn keep(&self, user: &str, run: Arc<Run>) -> u32 {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.0 = runs.0.wrapping_add(1).max(1);
        let id = runs.0;
        if runs.1.len() >= KEPT_RUNS {
            runs.1.pop_front();
        }
        runs.1.push_back((id, user.to_string(), run));
        id
    }

    /// Asynchronous call `id`, if it is `user`'s (anyone's for `None`, the operator).
    pub fn run(&self, user: Option<&str>, id: u32) -> Option<Arc<Run>> {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.1.iter().find(|(i, u, _)| *i == id && user.is_none_or(|me| me == u)).map(|(_, _, r)| r.clone())
    }
}
