//! Token files: one `NAME TOKEN` pair per line (blank lines and `#` comments ignored). The memnode
//! uses them for tenants, the runtime for users; both read them with this one parser.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use crate::proto;

/// Token → name.
#[derive(Clone, Default)]
pub struct Tokens(HashMap<String, String>);

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
    #[error("Token file {path}, line {line}: expected `NAME TOKEN` (a valid name, a token of at most 256 bytes)")]
    Syntax { path: String, line: usize },
}

impl Tokens {
    /// Parses a token file, accepting any name.
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        Tokens::load_with(path, |_| true)
    }

    /// Parses a token file whose names must pass `valid_name`.
    pub fn load_with(path: &Path, valid_name: impl Fn(&str) -> bool) -> Result<Tokens, TokenFileError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read { path: p.clone(), source })?;
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(name), Some(token), None) if token.len() <= proto::MAX_TOKEN_LEN && valid_name(name) => {
                    map.insert(token.to_string(), name.to_string());
                }
                _ => return Err(TokenFileError::Syntax { path: p, line: i + 1 }),
            }
        }
        Ok(Tokens(map))
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Tokens {
        Tokens(pairs.into_iter().map(|(name, token)| (token.to_string(), name.to_string())).collect())
    }

    /// The name a token belongs to.
    pub fn name(&self, token: &str) -> Option<&str> {
        self.0.get(token).map(String::as_str)
    }
}
