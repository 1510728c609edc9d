//! Policy settings: global defaults from the command line, per-function overrides from a policy
//! file. Every value is checked against its allowed range when the runtime starts.
//!
//! ```text
//!   # policy file: one line per scope, `key=value` settings
//!   default        policy=ebb keep-alive=10m
//!   alice/resize   semi-warm-after=30s drain-rate=256M floor=8M
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// What happens to idle instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    /// Keep every idle instance resident until the keep-alive ends (the baseline).
    KeepAlive,
    /// Segments + semi-warm drain; every page leaving is written back (FaaSMem).
    Faasmem,
    /// FaaSMem's policy plus working-set prefetch and dirty tracking: clean pages are dropped
    /// without a write-back. The default.
    Ebb,
    /// No keep-alive: every call gets a new instance restored from the memnode.
    Cold,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 4] = [PolicyKind::KeepAlive, PolicyKind::Faasmem, PolicyKind::Ebb, PolicyKind::Cold];

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::KeepAlive => "keep-alive",
            PolicyKind::Faasmem => "faasmem",
            PolicyKind::Ebb => "ebb",
            PolicyKind::Cold => "cold",
        }
    }

    /// Whether idle instances' pages leave this host (segments and semi-warm).
    pub fn offloads(self) -> bool {
        matches!(self, PolicyKind::Faasmem | PolicyKind::Ebb)
    }

    /// Whether a call on an instance with nothing resident prefetches the recorded working set.
    pub fn prefetches(self) -> bool {
        self == PolicyKind::Ebb
    }

    /// Whether pages the memnode already holds are dropped without a write-back.
    pub fn dirty_tracking(self) -> bool {
        self == PolicyKind::Ebb
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        PolicyKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| ConfigError::Value { key: "policy".into(), value: s.into(), allowed: "keep-alive, faasmem, ebb or cold".into() })
    }
}

/// A function's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    pub kind: PolicyKind,
    /// Idle time after which an instance turns semi-warm. `None` (the default): the function's
    /// P99 reuse interval, at least `semi_warm_min` (FaaSMem's rule).
    pub semi_warm_after: Option<Duration>,
    /// The least automatic semi-warm threshold. Default 60 s.
    pub semi_warm_min: Duration,
    /// How fast a semi-warm instance's pages drain, in bytes per second. Default 64 MiB/s.
    pub drain_rate: u64,
    /// Resident bytes a semi-warm instance keeps (its hottest pages). Default 0.
    pub floor: u64,
    /// On top of `floor`: a semi-warm instance keeps its resident pages of the function's
    /// recorded working set, up to this many bytes (0: off). Default 0.
    pub hot_floor: u64,
    /// Every this many restores of a function (calls on new, semi-warm or offloaded instances),
    /// one runs without prefetch and its pages replace the working set (0: never). Default 8.
    pub ws_probe_every: u32,
    /// Idle time after which an instance is freed with its memnode pages. Default 600 s.
    pub keep_alive: Duration,
    /// A warm instance offloads init pages no call touched for this many calls... Default 4.
    pub init_idle_calls: u32,
    /// ...or for this long. Default 60 s.
    pub init_idle: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            kind: PolicyKind::Ebb,
            semi_warm_after: None,
            semi_warm_min: Duration::from_secs(60),
            drain_rate: 64 << 20,
            floor: 0,
            hot_floor: 0,
            ws_probe_every: 8,
            keep_alive: Duration::from_secs(600),
            init_idle_calls: 4,
            init_idle: Duration::from_secs(60),
        }
    }
}

/// A bad policy setting.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown policy setting `{0}`: use policy, semi-warm-after, semi-warm-min, drain-rate, floor, hot-floor, ws-probe-every, keep-alive, init-idle-calls or init-idle")]
    Key(String),
    #[error("policy setting {key}={value} is invalid: allowed {allowed}")]
    Value { key: String, value: String, allowed: String },
    #[error("policy setting `{0}` must be key=value")]
    Syntax(String),
    #[error("policy settings conflict: {0}")]
    Conflict(String),
    #[error("policy file {path}, line {line}: {error}")]
    File { path: String, line: usize, error: Box<ConfigError> },
    #[error("cannot read policy file {path}: {error}")]
    Read { path: String, error: String },
}

const MIN_TIME: Duration = Duration::from_millis(1);
const MAX_TIME: Duration = Duration::from_secs(7 * 24 * 3600);

fn duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::Value { key: key.into(), value: value.into(), allowed: "1ms to 7d, e.g. 500ms, 60s, 10m".into() };
    let d = humantime::parse_duration(value).map_err(|_| bad())?;
    if (MIN_TIME..=MAX_TIME).contains(&d) { Ok(d) } else { Err(bad()) }
}

fn bytes(key: &str, value: &str, min: u64, max: u64, allowed: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::Value { key: key.into(), value: value.into(), allowed: allowed.into() };
    let n = ebb_memnode::parse_size(value).map_err(|_| bad())?;
    if (min..=max).contains(&n) { Ok(n) } else { Err(bad()) }
}

fn count(key: &str, value: &str, min: u32) -> Result<u32, ConfigError> {
    value
        .parse()
        .ok()
        .filter(|n| (min..=1_000_000).contains(n))
        .ok_or_else(|| ConfigError::Value { key: key.into(), value: value.into(), allowed: format!("{min} to 1000000") })
}

impl PolicyConfig {
    /// Applies one `key=value` setting.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "policy" => self.kind = value.parse()?,
            "semi-warm-after" => {
                self.semi_warm_after = if value == "auto" { None } else { Some(duration(key, value)?) };
            }
            "semi-warm-min" => self.semi_warm_min = duration(key, value)?,
            "drain-rate" => self.drain_rate = bytes(key, value, 4096, 1 << 40, "4K to 1T (bytes per second)")?,
            "floor" => self.floor = bytes(key, value, 0, 1 << 40, "0 to 1T")?,
            "hot-floor" => self.hot_floor = bytes(key, value, 0, 1 << 40, "0 (off) to 1T")?,
            "ws-probe-every" => self.ws_probe_every = count(key, value, 0)?,
            "keep-alive" => self.keep_alive = duration(key, value)?,
            "init-idle-calls" => self.init_idle_calls = count(key, value, 1)?,
            "init-idle" => self.init_idle = duration(key, value)?,
            _ => return Err(ConfigError::Key(key.into())),
        }
        Ok(())
    }

    /// Applies `key=value` words.
    pub fn apply<'a>(&mut self, settings: impl IntoIterator<Item = &'a str>) -> Result<(), ConfigError> {
        for word in settings {
            let (k, v) = word.split_once('=').ok_or_else(|| ConfigError::Syntax(word.into()))?;
            self.set(k.trim(), v.trim())?;
        }
        self.check()
    }

    /// Checks values that depend on each other.
    pub fn check(&self) -> Result<(), ConfigError> {
        if let Some(after) = self.semi_warm_after
            && after >= self.keep_alive
        {
            return Err(ConfigError::Conflict(format!(
                "semi-warm-after ({after:?}) must be shorter than keep-alive ({:?})",
                self.keep_alive
            )));
        }
        Ok(())
    }
}

/// Global settings plus per-function overrides.
#[derive(Clone, Debug, Default)]
pub struct PolicyFile {
    pub default: PolicyConfig,
    /// By `user/function`.
    pub functions: HashMap<String, PolicyConfig>,
}

impl PolicyFile {
    /// The policy of `user/function`.
    pub fn get(&self, function: &str) -> &PolicyConfig {
        self.functions.get(function).unwrap_or(&self.default)
    }

    /// Parses a policy file on top of `default` (the command line's settings). A function line
    /// starts from the file's `default` line, whatever their order.
    pub fn parse(text: &str, path: &str, default: PolicyConfig) -> Result<PolicyFile, ConfigError> {
        let at = |line: usize| move |error| ConfigError::File { path: path.into(), line, error: Box::new(error) };
        let mut lines = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            let mut words = line.split_whitespace();
            if let Some(scope) = words.next() {
                lines.push((i + 1, scope, words.collect::<Vec<_>>()));
            }
        }
        let mut file = PolicyFile { default, functions: HashMap::new() };
        for (line, _, words) in lines.iter().filter(|(_, s, _)| *s == "default") {
            file.default.apply(words.iter().copied()).map_err(at(*line))?;
        }
        for (line, scope, words) in lines.iter().filter(|(_, s, _)| *s != "default") {
            let valid = scope
                .split_once('/')
                .is_some_and(|(u, f)| crate::registry::check_name("user", u).is_ok() && crate::registry::check_name("function", f).is_ok());
            if !valid {
                let error = ConfigError::Syntax(format!("{scope}: a line starts with `default` or USER/FUNCTION"));
                return Err(at(*line)(error));
            }
            let mut config = file.functions.get(*scope).cloned().unwrap_or_else(|| file.default.clone());
            config.apply(words.iter().copied()).map_err(at(*line))?;
            file.functions.insert((*scope).to_string(), config);
        }
        Ok(file)
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path, default: PolicyConfig) -> Result<PolicyFile, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.display().to_string(), error: e.to_string() })?;
        PolicyFile::parse(&text, &path.display().to_string(), default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_ranges_are_enforced() {
        let mut c = PolicyConfig::default();
        c.apply(["policy=faasmem", "semi-warm-after=30s", "drain-rate=128M", "floor=8M", "init-idle-calls=2", "hot-floor=64M", "ws-probe-every=0"]).unwrap();
        assert_eq!((c.hot_floor, c.ws_probe_every), (64 << 20, 0));
        assert_eq!(c.kind, PolicyKind::Faasmem);
        assert_eq!(c.semi_warm_after, Some(Duration::from_secs(30)));
        assert_eq!((c.drain_rate, c.floor, c.init_idle_calls), (128 << 20, 8 << 20, 2));
        let err = |w: &str| PolicyConfig::default().apply([w]).unwrap_err();
        assert!(matches!(err("policy=lru"), ConfigError::Value { .. }));
        assert!(err("drain-rate=0").to_string().contains("allowed 4K to 1T"));
        assert!(err("keep-alive=0s").to_string().contains("1ms to 7d"));
        assert!(err("init-idle-calls=0").to_string().contains("1 to 1000000"));
        assert!(err("ws-probe-every=-1").to_string().contains("0 to 1000000"));
        assert_eq!(err("speed=3"), ConfigError::Key("speed".into()));
        assert_eq!(err("floor"), ConfigError::Syntax("floor".into()));
        assert!(matches!(err("semi-warm-after=20m"), ConfigError::Conflict(_)), "beyond the 10 min keep-alive");
    }

    #[test]
    fn policy_file_overrides_per_function() {
        let text = "# comment\nalice/resize semi-warm-after=5s\ndefault policy=faasmem keep-alive=2m\n\nbob/x policy=cold # tail\n";
        let f = PolicyFile::parse(text, "p", PolicyConfig::default()).unwrap();
        assert_eq!(f.default.kind, PolicyKind::Faasmem);
        let a = f.get("alice/resize");
        assert_eq!((a.kind, a.keep_alive, a.semi_warm_after), (PolicyKind::Faasmem, Duration::from_secs(120), Some(Duration::from_secs(5))));
        assert_eq!(f.get("bob/x").kind, PolicyKind::Cold);
        assert_eq!(f.get("carol/y"), &f.default);
        let e = PolicyFile::parse("default floor=-1\n", "p", PolicyConfig::default()).unwrap_err();
        assert!(e.to_string().starts_with("policy file p, line 1: policy setting floor=-1 is invalid"), "{e}");
        let e = PolicyFile::parse("alice keep-alive=1s\n", "p", PolicyConfig::default()).unwrap_err();
        assert!(e.to_string().contains("USER/FUNCTION"), "{e}");
    }
}
