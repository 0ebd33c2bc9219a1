//! Who may open a socket: the tokens of AUTH_TOKENS and AUTH_TOKENS_FILE (re-read on SIGHUP).
//! A client presents one as `Authorization: Bearer <token>` or as the `token` query parameter
//! of the upgrade URL (so an unmodified MPR client can carry it in its URL). Tokens are kept
//! as SHA-256 digests and compared in constant time; they are never logged. With no tokens
//! configured every client is let in. A token written `token=tenant` puts its sockets in that
//! tenant: their connection ids are the tenant's own (`model::split_tenant`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthSettings;

pub struct Tokens {
    inline: Vec<String>,
    file: Option<PathBuf>,
    known: RwLock<Vec<Known>>,
}

/// An accepted token's digest, and the tenant it names.
struct Known {
    digest: [u8; 32],
    tenant: Option<Arc<str>>,
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
    /// Reads the configured tokens; an unreadable file or a malformed entry is an error.
    pub fn load(settings: &AuthSettings) -> Result<Self, String> {
        let tokens = Self {
            inline: settings.auth_tokens.clone(),
            file: settings.auth_tokens_file.clone(),
            known: RwLock::default(),
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
        let mut known = Vec::with_capacity(all.len());
        for entry in all
            .iter()
            .map(|entry| entry.trim())
            .filter(|entry| !entry.is_empty())
        {
            let (token, tenant) = match entry.split_once('=') {
                Some((token, tenant)) => (token, Some(checked_tenant(tenant)?)),
                None => (entry, None),
            };
            if token.is_empty() || token.contains(char::is_whitespace) {
                return Err("AUTH_TOKENS: a token may not be empty or hold whitespace".into());
            }
            known.push(Known {
                digest: digest(token),
                tenant: tenant.map(Arc::from),
            });
        }
        let count = known.len();
        *self.known.write().expect("tokens lock") = known;
        Ok(count)
    }

    pub fn required(&self) -> bool {
        !self.known.read().expect("tokens lock").is_empty()
    }

    /// Whether a request presenting `token` (None: none) may in, and in which tenant.
    pub fn admit(&self, token: Option<&str>) -> Result<Option<Arc<str>>, Refusal> {
        let known = self.known.read().expect("tokens lock");
        if known.is_empty() {
            return Ok(None);
        }
        let presented = digest(token.ok_or(Refusal::Missing)?);
        // Every digest is compared, so the time taken says nothing of which one matched.
        let mut matched = None;
        for entry in known.iter() {
            if bool::from(entry.digest.ct_eq(&presented)) {
                matched = Some(entry);
            }
        }
        matched
            .map(|entry| entry.tenant.clone())
            .ok_or(Refusal::Invalid)
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

/// A tenant's name goes into key names: letters, digits, `-` and `_`, at most 64.
fn checked_tenant(tenant: &str) -> Result<&str, String> {
    let fits = !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if fits {
        Ok(tenant)
    } else {
        Err(format!(
            "AUTH_TOKENS: tenant {tenant:?} must be 1-64 letters, digits, '-' or '_'"
        ))
    }
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

    fn settings(inline: &[&str]) -> AuthSettings {
        AuthSettings {
            auth_tokens: inline.iter().map(|t| t.to_string()).collect(),
            auth_tokens_file: None,
            auth_metrics: false,
        }
    }

    #[test]
    fn only_a_configured_token_is_admitted_in_its_tenant() {
        let open = Tokens::load(&settings(&[])).unwrap();
        assert_eq!(open.admit(None), Ok(None));
        let closed = Tokens::load(&settings(&["old", "new=acme"])).unwrap();
        assert_eq!(closed.admit(Some("new")), Ok(Some(Arc::from("acme"))));
        assert_eq!(closed.admit(Some("old")), Ok(None));
        assert_eq!(closed.admit(Some("newer")), Err(Refusal::Invalid));
        assert_eq!(closed.admit(Some("new=acme")), Err(Refusal::Invalid));
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
    fn a_tenant_name_must_fit_in_a_key() {
        for bad in ["abc=", "abc=a b", "abc=a:b", "abc=a{b}", "=acme"] {
            assert!(Tokens::load(&settings(&[bad])).is_err(), "{bad}");
        }
    }
}
