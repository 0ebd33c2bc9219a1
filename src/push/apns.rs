//! Apple Push Notification service with token authentication: an ES256 provider token signed
//! with the team's `.p8` key, reused for 50 minutes (Apple refuses tokens older than an hour and
//! renewals more often than every 20 minutes), over HTTP/2.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::payload::Notification;
use super::retry::{Attempt, Reply, exchange};

const PRODUCTION_URL: &str = "https://api.push.apple.com";
const SANDBOX_URL: &str = "https://api.sandbox.push.apple.com";
const PROVIDER_TOKEN_REUSE: Duration = Duration::from_secs(50 * 60);

/// `APNS_CFG_FILE`, as the Node MPR reads it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApnsFile {
    key_id: String,
    team_id: String,
    production: bool,
}

#[derive(Serialize)]
struct ProviderClaims<'a> {
    iss: &'a str,
    iat: u64,
}

#[derive(Default)]
struct ProviderToken {
    current: Option<(Arc<str>, Instant)>,
    /// `iat` of the last token made: a renewal must differ from the token Apple refused.
    last_iat: u64,
}

pub struct Apns {
    client: reqwest::Client,
    base_url: String,
    topic: String,
    team_id: String,
    key: EncodingKey,
    header: Header,
    provider_token: Mutex<ProviderToken>,
}

/// Where the credentials are; every one is needed.
pub struct ApnsFiles<'a> {
    pub config: &'a Path,
    pub key: &'a Path,
    pub topic: &'a str,
    /// Overrides the host chosen by `production`.
    pub base_url: Option<&'a str>,
}

impl Apns {
    /// Reads and checks the credentials; the error says what is wrong with them.
    pub fn from_files(files: &ApnsFiles<'_>, client: reqwest::Client) -> Result<Self, String> {
        let text = std::fs::read_to_string(files.config)
            .map_err(|error| format!("APNS_CFG_FILE: cannot read: {error}"))?;
        let config: ApnsFile = serde_json::from_str(&text).map_err(|error| {
            format!("APNS_CFG_FILE: expected keyId, teamId, production: {error}")
        })?;
        let pem = std::fs::read(files.key)
            .map_err(|error| format!("APNS_PATH_KEY: cannot read: {error}"))?;
        let key = EncodingKey::from_ec_pem(&pem)
            .map_err(|error| format!("APNS_PATH_KEY: not a P-256 .p8 key: {error}"))?;
        if files.topic.is_empty() {
            return Err("APNS_TOPIC is empty".into());
        }
        let default_url = if config.production {
            PRODUCTION_URL
        } else {
            SANDBOX_URL
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(config.key_id);
        Ok(Self {
            client,
            base_url: files
                .base_url
                .unwrap_or(default_url)
                .trim_end_matches('/')
                .to_owned(),
            topic: files.topic.to_owned(),
            team_id: config.team_id,
            key,
            header,
            provider_token: Mutex::default(),
        })
    }

    pub async fn send(
        &self,
        notification: &Notification,
        token: &str,
        message_id: &str,
    ) -> Attempt {
        let Ok(mut url) = reqwest::Url::parse(&format!("{}/3/device/", self.base_url)) else {
            return Attempt::Failed("rejected");
        };
        // Percent-encodes whatever the mediator passed as a token.
        url.path_segments_mut()
            .expect("an http(s) URL has a path")
            .pop_if_empty()
            .push(token);
        let jwt = match self.provider_token().await {
            Ok(jwt) => jwt,
            Err(attempt) => return attempt,
        };
        let request = self
            .client
            .post(url)
            .header(AUTHORIZATION, format!("bearer {jwt}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", notification.apns_push_type())
            .header("apns-priority", notification.apns_priority())
            .header(CONTENT_TYPE, "application/json")
            .body(notification.apns_payload(message_id).to_string());
        let Reply {
            status,
            headers,
            body,
        } = match exchange(request).await {
            Ok(reply) => reply,
            Err(attempt) => return attempt,
        };
        let reason = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|body| Some(body.get("reason")?.as_str()?.to_owned()))
            .unwrap_or_default();
        match (status.as_u16(), reason.as_str()) {
            (410, _) | (400, "BadDeviceToken") => Attempt::DeadToken,
            (403, "ExpiredProviderToken") => Attempt::Reauthenticate(jwt),
            (403, _) => Attempt::Failed("forbidden"),
            _ => Attempt::from_status(status, &headers),
        }
    }

    /// Drops the provider token Apple refused, unless another push already replaced it.
    pub async fn renew_credentials(&self, refused: &str) {
        let mut provider_token = self.provider_token.lock().await;
        if provider_token
            .current
            .as_ref()
            .is_some_and(|(jwt, _)| &**jwt == refused)
        {
            provider_token.current = None;
        }
    }

    async fn provider_token(&self) -> Result<Arc<str>, Attempt> {
        let mut provider_token = self.provider_token.lock().await;
        if let Some((jwt, made)) = &provider_token.current
            && made.elapsed() < PROVIDER_TOKEN_REUSE
        {
            return Ok(jwt.clone());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let iat = now.max(provider_token.last_iat + 1);
        let claims = ProviderClaims {
            iss: &self.team_id,
            iat,
        };
        let jwt: Arc<str> = jsonwebtoken::encode(&self.header, &claims, &self.key)
            .map_err(|_| Attempt::Failed("credentials"))?
            .into();
        provider_token.current = Some((jwt.clone(), Instant::now()));
        provider_token.last_iat = iat;
        Ok(jwt)
    }
}
