//! Firebase Cloud Messaging, HTTP v1. Credentials are a Google service account: an OAuth2
//! access token is obtained with the JWT-bearer flow against the file's `token_uri` (which is
//! how tests stand in for Google), cached, and renewed shortly before it expires.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::payload::Notification;
use super::retry::{Attempt, exchange};

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// `urn:ietf:params:oauth:grant-type:jwt-bearer`, form-encoded.
const GRANT_TYPE: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
/// Lifetime asked for the signed assertion (Google's maximum).
const ASSERTION_LIFETIME_S: u64 = 3600;
/// An access token is renewed this long before it expires, so none is used while expiring.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// The members of the service-account JSON this client uses.
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    #[serde(default)]
    private_key_id: Option<String>,
    private_key: String,
    client_email: String,
    token_uri: String,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

struct AccessToken {
    value: Arc<str>,
    renew_at: Instant,
}

pub struct Fcm {
    client: reqwest::Client,
    send_url: String,
    client_email: String,
    token_uri: String,
    key: EncodingKey,
    header: Header,
    /// Held while a token is fetched, so concurrent pushes wait for one fetch.
    access: Mutex<Option<AccessToken>>,
}

impl Fcm {
    /// Reads and checks the service-account file; the error says what is wrong with it.
    pub fn from_file(path: &Path, base_url: &str, client: reqwest::Client) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|error| format!("cannot read: {error}"))?;
        let account: ServiceAccount = serde_json::from_str(&text)
            .map_err(|error| format!("not a service account: {error}"))?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|error| format!("private_key is not an RSA key: {error}"))?;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = account.private_key_id;
        Ok(Self {
            client,
            send_url: format!(
                "{}/v1/projects/{}/messages:send",
                base_url.trim_end_matches('/'),
                account.project_id
            ),
            client_email: account.client_email,
            token_uri: account.token_uri,
            key,
            header,
            access: Mutex::new(None),
        })
    }

    pub async fn send(
        &self,
        notification: &Notification,
        token: &str,
        message_id: &str,
    ) -> Attempt {
        let access = match self.access_token().await {
            Ok(access) => access,
            Err(attempt) => return attempt,
        };
        let request = self
            .client
            .post(&self.send_url)
            .header(AUTHORIZATION, format!("Bearer {access}"))
            .header(CONTENT_TYPE, "application/json")
            .body(notification.fcm_message(token, message_id).to_string());
        let reply = match exchange(request).await {
            Ok(reply) => reply,
            Err(attempt) => return attempt,
        };
        match reply.status.as_u16() {
            401 => Attempt::Reauthenticate(access),
            400 | 404 if is_dead_token(&reply.body) => Attempt::DeadToken,
            403 => Attempt::Failed("forbidden"),
            _ => Attempt::from_status(reply.status, &reply.headers),
        }
    }

    /// Forgets the access token the service refused, unless another push already replaced it.
    pub async fn renew_credentials(&self, refused: &str) {
        let mut access = self.access.lock().await;
        if access
            .as_ref()
            .is_some_and(|token| &*token.value == refused)
        {
            *access = None;
        }
    }

    async fn access_token(&self) -> Result<Arc<str>, Attempt> {
        let mut access = self.access.lock().await;
        if let Some(token) = access.as_ref()
            && Instant::now() < token.renew_at
        {
            return Ok(token.value.clone());
        }
        let fetched = self.fetch_access_token().await?;
        let lifetime = Duration::from_secs(fetched.expires_in);
        let renew_after = lifetime.checked_sub(RENEW_BEFORE).unwrap_or(lifetime / 2);
        let value: Arc<str> = fetched.access_token.into();
        *access = Some(AccessToken {
            value: value.clone(),
            renew_at: Instant::now() + renew_after,
        });
        Ok(value)
    }

    async fn fetch_access_token(&self) -> Result<TokenResponse, Attempt> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = AssertionClaims {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_uri,
            iat,
            exp: iat + ASSERTION_LIFETIME_S,
        };
        let assertion = jsonwebtoken::encode(&self.header, &claims, &self.key)
            .map_err(|_| Attempt::Failed("credentials"))?;
        // A JWT is base64url and dots only: nothing in it needs form-encoding.
        let form = format!("grant_type={GRANT_TYPE}&assertion={assertion}");
        let request = self
            .client
            .post(&self.token_uri)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form);
        let reply = exchange(request).await?;
        if !reply.status.is_success() {
            let status = reply.status;
            tracing::warn!(%status, token_uri = %self.token_uri, "FCM: the token endpoint refused the service account");
            return Err(match Attempt::from_status(status, &reply.headers) {
                Attempt::Failed(_) => Attempt::Failed("credentials"),
                retry => retry,
            });
        }
        serde_json::from_slice(&reply.body).map_err(|_| Attempt::Failed("credentials"))
    }
}

/// `UNREGISTERED` (app uninstalled) or `INVALID_ARGUMENT` (not a token), from the
/// `google.firebase.fcm.v1.FcmError` detail or else the error's status.
fn is_dead_token(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: ErrorDetails,
    }
    #[derive(Deserialize)]
    struct ErrorDetails {
        #[serde(default)]
        status: String,
        #[serde(default)]
        details: Vec<serde_json::Value>,
    }
    let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(body) else {
        return false;
    };
    let code = error
        .details
        .iter()
        .find_map(|detail| detail.get("errorCode")?.as_str())
        .unwrap_or(&error.status);
    matches!(code, "UNREGISTERED" | "INVALID_ARGUMENT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_tokens_are_read_from_fcm_error_bodies() {
        let unregistered = br#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        assert!(is_dead_token(unregistered));
        let invalid = br#"{"error":{"code":400,"status":"INVALID_ARGUMENT"}}"#;
        assert!(is_dead_token(invalid));
        let quota = br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"errorCode":"QUOTA_EXCEEDED"}]}}"#;
        assert!(!is_dead_token(quota));
        assert!(!is_dead_token(b"not json"));
    }
}
