//! Who may open a socket: the tokens of AUTH_TOKENS and AUTH_TOKENS_FILE (re-read on SIGHUP).
//! A client presents one as `Authorization: Bearer <token>` or as the `token` query parameter
//! of the upgrade URL (so an unmodified MPR client can carry it in its URL). Tokens are kept
//! as SHA-256 digests and compared in constant time; they are never logged. With no tokens
//! configured every client is let in.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthSettings;

pub struct Tokens {
    inline: Vec<String>,
    file: Option<PathBuf>,
    digests: RwLock<Vec<[u8; 32]>>,
}

/// Why a request was not let in (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Invalid,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
        }
    }
}

impl Tokens {
    /// Reads the configured tokens; an unreadable file or a malformed token is an error.
    pub fn load(settings: &AuthSettings) -> Result<Self, String> {
        let tokens = Self {
            inline: settings.auth_tokens.clone(),
            file: settings.auth_tokens_file.clone(),
            digests: RwLock::default(),
        };
        tokens.reload()?;
        Ok(tokens)
    }

    /// Reads AUTH_TOKENS_FILE again (SIGHUP); on error the tokens in use stay. Returns how
    /// many tokens are accepted now.
    pub fn reload(&self) -> Result<usize, String> {
        let mut all: Vec<String> = self.inline.clone();
        if let Some(path) = &self.file {
            all.extend(read_file(path)?);
        }
        let mut digests = Vec::with_capacity(all.len());
        for token in all
            .iter()
            .map(|token| token.trim())
            .filter(|token| !token.is_empty())
        {
            if token.contains('=') || token.contains(char::is_whitespace) {
                return Err(
                    "AUTH_TOKENS: a token may not contain '=' or whitespace (per-token tenants \
                     are not supported by this version)"
                        .into(),
                );
            }
            digests.push(digest(token));
        }
        let count = digests.len();
        *self.digests.write().expect("tokens lock") = digests;
        Ok(count)
    }

    pub fn required(&self) -> bool {
        !self.digests.read().expect("tokens lock").is_empty()
    }

    /// Whether a request presenting `token` (None: none) may in.
    pub fn admit(&self, token: Option<&str>) -> Result<(), Refusal> {
        let digests = self.digests.read().expect("tokens lock");
        if digests.is_empty() {
            return Ok(());
        }
        let presented = digest(token.ok_or(Refusal::Missing)?);
        // Every digest is compared, so the time taken says nothing of which one matched.
        let matched = digests
            .iter()
            .fold(subtle::Choice::from(0), |found, known| {
                found | known.ct_eq(&presented)
            });
        if bool::from(matched) {
            Ok(())
        } else {
            Err(Refusal::Invalid)
        }
    }
}

/// The token a request carries: `Authorization: Bearer <token>`, else `?token=<token>`.
pub fn presented<'a>(authorization: Option<&'a str>, query: Option<&'a str>) -> Option<&'a str> {
    if let Some(bearer) = authorization.and_then(|value| value.strip_prefix("Bearer ")) {
        return Some(bearer.trim());
    }
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn read_file(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("AUTH_TOKENS_FILE {}: {error}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(inline: &[&str]) -> Tokens {
        Tokens::load(&AuthSettings {
            auth_tokens: inline.iter().map(|t| t.to_string()).collect(),
            auth_tokens_file: None,
            auth_metrics: false,
        })
        .unwrap()
    }

    #[test]
    fn only_a_configured_token_is_admitted() {
        let open = tokens(&[]);
        assert_eq!(open.admit(None), Ok(()));
        let closed = tokens(&["old", "new"]);
        assert_eq!(closed.admit(Some("new")), Ok(()));
        assert_eq!(closed.admit(Some("old")), Ok(()));
        assert_eq!(closed.admit(Some("newer")), Err(Refusal::Invalid));
        assert_eq!(closed.admit(Some("")), Err(Refusal::Invalid));
        assert_eq!(closed.admit(None), Err(Refusal::Missing));
    }

    #[test]
    fn a_token_comes_from_the_header_or_the_query() {
        assert_eq!(
            presented(Some("Bearer abc"), Some("token=xyz")),
            Some("abc")
        );
        assert_eq!(presented(None, Some("a=1&token=xyz")), Some("xyz"));
        assert_eq!(presented(Some("Basic abc"), None), None);
        assert_eq!(presented(None, Some("tokens=1")), None);
    }

    #[test]
    fn a_token_naming_a_tenant_is_refused_at_start() {
        let settings = AuthSettings {
            auth_tokens: vec!["abc=tenant-a".into()],
            auth_tokens_file: None,
            auth_metrics: false,
        };
        assert!(Tokens::load(&settings).is_err());
    }
}
