//! Token files: one `NAME TOKEN [operator] [quota=SIZE]` entry per line (blank lines and `#`
//! comments ignored). The memnode uses them for tenants, the runtime for users; both read them with
//! this one parser.
//!
//! - `operator` marks a token that may see every identity's usage (the memnode's operator view, the
//!   runtime's whole `/metrics`).
//! - `quota=SIZE` (memnode only) caps the bytes the tenant may store.
//!
//! A token that appears twice, or a name given two tokens with different options, is refused with
//! its line number: a file that means two things is a mistake, not a configuration.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use crate::proto;

/// A secret given on a command line or read from the environment: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// What a token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEntry {
    pub name: String,
    pub operator: bool,
    pub quota: Option<u64>,
}

/// Token → entry.
#[derive(Clone, Default)]
pub struct Tokens(HashMap<String, TokenEntry>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets themselves.
        f.debug_struct("Tokens").field("names", &self.0.len()).finish()
    }
}

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("Failed to read token file {path}")]
    Read { path: String, #[source] source: io::Error },
    #[error("Token file {path}, line {line}: {what}")]
    Syntax { path: String, line: usize, what: String },
    #[error("Token file {path}, line {line}: this token is already given on line {first}; every token must be unique")]
    Duplicate { path: String, line: usize, first: usize },
}

/// Which optional fields a token file may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fields {
    /// `operator` only (the runtime).
    Operator,
    /// `operator` and `quota=SIZE` (the memnode).
    OperatorAndQuota,
}

impl Tokens {
    /// Parses a token file, accepting any name and every option.
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        Tokens::load_with(path, Fields::OperatorAndQuota, |_| true)
    }

    /// Parses a token file whose names must pass `valid_name` and whose options are `fields`.
    pub fn load_with(path: &Path, fields: Fields, valid_name: impl Fn(&str) -> bool) -> Result<Tokens, TokenFileError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read { path: p.clone(), source })?;
        Tokens::parse(&p, &text, fields, valid_name)
    }

    /// Parses the text of a token file named `path` (for messages).
    pub fn parse(path: &str, text: &str, fields: Fields, valid_name: impl Fn(&str) -> bool) -> Result<Tokens, TokenFileError> {
        let mut map = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let syntax = |line: usize, what: String| TokenFileError::Syntax { path: path.to_string(), line, what };
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(name), Some(token)) = (parts.next(), parts.next()) else {
                return Err(syntax(n, "expected `NAME TOKEN [operator] [quota=SIZE]`".into()));
            };
            if !valid_name(name) {
                return Err(syntax(n, format!("`{name}` is not a valid name")));
            }
            if token.len() > proto::MAX_TOKEN_LEN {
                return Err(syntax(n, format!("the token is longer than {} bytes", proto::MAX_TOKEN_LEN)));
            }
            let mut entry = TokenEntry { name: name.to_string(), operator: false, quota: None };
            for opt in parts {
                match opt.split_once('=') {
                    None if opt == "operator" => entry.operator = true,
                    Some(("quota", size)) if fields == Fields::OperatorAndQuota => {
                        let size = crate::store::parse_size(size).map_err(|e| syntax(n, format!("quota: {e}")))?;
                        entry.quota = Some(size);
                    }
                    _ => {
                        let allowed = match fields {
                            Fields::Operator => "`operator`",
                            Fields::OperatorAndQuota => "`operator` and `quota=SIZE`",
                        };
                        return Err(syntax(n, format!("unknown option `{opt}` (allowed: {allowed})")));
                    }
                }
            }
            if let Some(&first) = first_line.get(token) {
                return Err(TokenFileError::Duplicate { path: path.to_string(), line: n, first });
            }
            first_line.insert(token.to_string(), n);
            map.insert(token.to_string(), entry);
        }
        Ok(Tokens(map))
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Tokens {
        Tokens(
            pairs
                .into_iter()
                .map(|(name, token)| (token.to_string(), TokenEntry { name: name.to_string(), operator: false, quota: None }))
                .collect(),
        )
    }

    /// Adds an entry (tests, embedded setups).
    pub fn insert(&mut self, token: &str, entry: TokenEntry) {
        self.0.insert(token.to_string(), entry);
    }

    /// The name a token belongs to.
    pub fn name(&self, token: &str) -> Option<&str> {
        self.0.get(token).map(|e| e.name.as_str())
    }

    /// What a token grants, looked up by its exact bytes (a token that is not UTF-8 matches none).
    pub fn entry(&self, token: &[u8]) -> Option<&TokenEntry> {
        std::str::from_utf8(token).ok().and_then(|t| self.0.get(t))
    }

    /// Per-tenant quotas given in the file.
    pub fn quotas(&self) -> HashMap<String, u64> {
        self.0.values().filter_map(|e| e.quota.map(|q| (e.name.clone(), q))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_duplicates() {
        let t = Tokens::parse("f", "# c\nalice a1 quota=1G\nops o1 operator\n\nbob b1\n", Fields::OperatorAndQuota, |_| true).unwrap();
        assert_eq!(t.entry(b"a1").unwrap().quota, Some(1 << 30));
        assert!(t.entry(b"o1").unwrap().operator);
        assert_eq!(t.name("b1"), Some("bob"));
        assert!(t.entry(b"\xffa1").is_none());
        let dup = Tokens::parse("f", "alice a1\nbob b1\ncarol a1\n", Fields::Operator, |_| true).unwrap_err();
        assert!(matches!(dup, TokenFileError::Duplicate { line: 3, first: 1, .. }), "{dup}");
        assert!(dup.to_string().contains("line 3"), "{dup}");
        let e = Tokens::parse("f", "alice a1 quota=1G\n", Fields::Operator, |_| true).unwrap_err();
        assert!(e.to_string().contains("line 1") && e.to_string().contains("unknown option"), "{e}");
        let e = Tokens::parse("f", "alice\n", Fields::Operator, |_| true).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }
}
