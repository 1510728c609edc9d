//! Per-user bearer tokens: a file of `USER TOKEN` lines.

use std::collections::HashMap;
use std::path::Path;

/// Token → user.
#[derive(Clone, Default)]
pub struct Tokens(HashMap<String, String>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("Tokens").field("users", &self.0.len()).finish()
    }
}

/// Why a tokens file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("Failed to read the tokens file {path}")]
    Read { path: String, #[source] source: std::io::Error },
    #[error("Tokens file {path}, line {line}: expected `USER TOKEN` with a valid user name")]
    Syntax { path: String, line: usize },
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read { path: p.clone(), source })?;
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(user), Some(token), None) if super::check_name("user", user).is_ok() => {
                    map.insert(token.to_string(), user.to_string());
                }
                _ => return Err(TokensError::Syntax { path: p, line: i + 1 }),
            }
        }
        Ok(Tokens(map))
    }

    /// The user a token belongs to.
    pub fn user(&self, token: &str) -> Option<&str> {
        self.0.get(token).map(String::as_str)
    }
}
