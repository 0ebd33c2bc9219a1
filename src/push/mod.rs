//! Push notifications that wake a recipient's phone (FCM for Android, APNs for iOS) when a
//! message arrives while it has no live session, or when a live-session event found no socket.
//!
//! Never on the request path: [`Pushes::request`] only puts a job in a bounded queue and
//! returns; worker tasks do the Redis dedup check, the HTTP request and its retries. A
//! provider whose credentials are missing or invalid is disabled at start with one warning;
//! a push for it is counted, never an error to the mediator.

mod apns;
mod dedup;
mod fcm;
mod payload;
mod queue;
mod recent;
mod retry;
mod tokens;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::PushSettings;
use crate::store::Store;
use crate::telemetry;
use apns::{Apns, ApnsFiles};
use dedup::Dedup;
use fcm::Fcm;
use payload::Notification;
use queue::Queue;
use retry::RetryPolicy;
use tokens::Tokens;
use worker::Job;

/// Longest device token accepted (FCM's are ~160 bytes, APNs' 64).
const MAX_TOKEN_BYTES: usize = 4096;
/// Longest wait before a retry, whether backoff or `Retry-After`.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Fcm,
    Apns,
}

impl Provider {
    fn label(self) -> &'static str {
        match self {
            Self::Fcm => "fcm",
            Self::Apns => "apns",
        }
    }
}

/// A device token and the service that delivers to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushToken {
    pub provider: Provider,
    pub token: String,
}

impl PushToken {
    /// `<provider>\t<token>`, as kept in Redis.
    fn stored(&self) -> String {
        format!("{}\t{}", self.provider.label(), self.token)
    }

    fn from_stored(stored: &str) -> Option<Self> {
        let (provider, token) = stored.split_once('\t')?;
        let provider = match provider {
            "fcm" => Provider::Fcm,
            "apns" => Provider::Apns,
            _ => return None,
        };
        Some(Self {
            provider,
            token: token.to_owned(),
        })
    }
}

/// `addMessage.pushNotificationToken`: `{type, token?}`. Like the Node server, any `type` other
/// than `"fcm"` means APNs; without a token (absent, null or empty) there is nothing to push.
#[derive(Deserialize)]
pub struct PushTokenParam {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, deserialize_with = "device_token")]
    token: Option<String>,
}

impl PushTokenParam {
    pub fn into_token(self) -> Option<PushToken> {
        let provider = if self.kind == "fcm" {
            Provider::Fcm
        } else {
            Provider::Apns
        };
        Some(PushToken {
            provider,
            token: self.token?,
        })
    }
}

fn device_token<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let token = Option::<String>::deserialize(deserializer)?.filter(|token| !token.is_empty());
    if let Some(token) = &token {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(D::Error::custom(format!(
                "longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        if token.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(D::Error::custom(
                "must not contain whitespace or control characters",
            ));
        }
    }
    Ok(token)
}

/// The push side of an instance: the queue, its workers, and the two providers.
pub struct Pushes {
    store: Store,
    queue: Queue<Job>,
    fcm: Option<Fcm>,
    apns: Option<Apns>,
    notification: Notification,
    retry: RetryPolicy,
    dedup: Dedup,
    tokens: Tokens,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Pushes {
    /// Loads the providers' credentials (a provider without valid ones is disabled, with a
    /// warning) and starts the workers.
    pub fn start(config: &PushSettings, store: Store) -> Arc<Self> {
        let timeout = Duration::from_millis(config.push_timeout_ms);
        let fcm = match &config.firebase_cfg_file {
            None => Err("FIREBASE_CFG_FILE is not set".to_owned()),
            Some(path) => Fcm::from_file(path, &config.fcm_base_url, http_client(timeout, false))
                .map_err(|problem| format!("FIREBASE_CFG_FILE {}: {problem}", path.display())),
        };
        let apns = match (
            &config.apns_cfg_file,
            &config.apns_path_key,
            &config.apns_topic,
        ) {
            (Some(config_file), Some(key), Some(topic)) => {
                let files = ApnsFiles {
                    config: config_file,
                    key,
                    topic,
                    base_url: config.apns_base_url.as_deref(),
                };
                Apns::from_files(&files, http_client(timeout, true))
            }
            _ => Err("APNS_CFG_FILE, APNS_PATH_KEY and APNS_TOPIC are not all set".to_owned()),
        };
        let pushes = Arc::new(Self {
            store,
            queue: Queue::new(config.push_queue_capacity as usize),
            fcm: enable(Provider::Fcm, fcm),
            apns: enable(Provider::Apns, apns),
            notification: Notification {
                title: config.push_title.clone(),
                body: config.push_body.clone(),
                data_only: config.notification_data_only,
            },
            retry: RetryPolicy {
                max_retries: config.push_max_retries,
                base: Duration::from_millis(config.push_retry_base_ms),
                max_delay: MAX_RETRY_DELAY,
            },
            dedup: Dedup::new(Duration::from_millis(config.push_dedup_window_ms)),
            tokens: Tokens::default(),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        });
        if pushes.any_enabled() {
            for _ in 0..config.push_workers {
                pushes.tasks.spawn(worker::run(pushes.clone()));
            }
        }
        pushes.tasks.close();
        pushes
    }

    fn any_enabled(&self) -> bool {
        self.fcm.is_some() || self.apns.is_some()
    }

    /// Asks for a push to the device `token`, or (None) to the connection's latest token as
    /// remembered in Redis. Returns at once; the outcome is only counted and logged.
    pub fn request(&self, connection_id: &str, token: Option<&PushToken>, message_id: &str) {
        if let Some(token) = token {
            if !self.enabled(token.provider) {
                worker::count_failure(token.provider, "disabled");
                return;
            }
            if self.dedup.open_here(&Dedup::token_print(&token.token)) {
                worker::count_deduplicated(token.provider);
                return;
            }
        }
        if !self.any_enabled() {
            return;
        }
        let job = Job {
            connection_id: connection_id.to_owned(),
            token: token.cloned(),
            message_id: message_id.to_owned(),
        };
        match self.queue.push(job) {
            Ok(None) => {}
            Ok(Some(dropped)) => {
                metrics::counter!(telemetry::PUSHES_DROPPED).increment(1);
                tracing::debug!(connection_id = %dropped.connection_id, "push queue full; oldest push dropped");
            }
            Err(refused) => {
                metrics::counter!(telemetry::PUSHES_DROPPED).increment(1);
                tracing::debug!(connection_id = %refused.connection_id, "shutting down; push dropped");
            }
        }
    }

    /// Keeps the connection's latest token in Redis so that any instance can push to it later.
    /// A failure is logged, not returned: the message itself does not depend on it.
    pub async fn remember_token(&self, connection_id: &str, token: Option<&PushToken>) {
        let Some(token) = token else { return };
        if !self.any_enabled() {
            return;
        }
        if let Err(error) = self
            .tokens
            .remember(&self.store, connection_id, token)
            .await
        {
            tracing::warn!(%connection_id, %error, "could not remember the push token");
        }
    }

    /// Sends what is queued within `grace`, then stops the workers; what is left is dropped.
    pub async fn stop(&self, grace: Duration) {
        self.queue.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            self.stop.cancel();
            self.tasks.wait().await;
            let dropped = self.queue.clear();
            metrics::counter!(telemetry::PUSHES_DROPPED).increment(dropped as u64);
            tracing::warn!(dropped, "pushes still unsent after {grace:?}; dropped");
        }
    }

    fn enabled(&self, provider: Provider) -> bool {
        match provider {
            Provider::Fcm => self.fcm.is_some(),
            Provider::Apns => self.apns.is_some(),
        }
    }
}

/// The provider if its credentials loaded; otherwise the one warning that it is disabled.
fn enable<T>(provider: Provider, loaded: Result<T, String>) -> Option<T> {
    match loaded {
        Ok(sender) => {
            tracing::info!(provider = provider.label(), "push notifications enabled");
            Some(sender)
        }
        Err(problem) => {
            tracing::warn!(
                provider = provider.label(),
                "push notifications disabled: {problem}"
            );
            None
        }
    }
}

/// APNs is HTTP/2 only: over TLS ALPN offers only h2; over cleartext (a test stand-in) the
/// client speaks HTTP/2 from the first byte.
fn http_client(timeout: Duration, http2_only: bool) -> reqwest::Client {
    let mut builder = crate::http::outbound_client()
        .timeout(timeout)
        .connect_timeout(timeout);
    if http2_only {
        builder = builder.http2_prior_knowledge();
    }
    builder
        .build()
        .expect("an HTTP client with the platform's roots")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(json: &str) -> Result<Option<PushToken>, String> {
        serde_json::from_str::<PushTokenParam>(json)
            .map(PushTokenParam::into_token)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn token_params_read_like_the_node_server() {
        let fcm = param(r#"{"type":"fcm","token":"abc:1"}"#).unwrap().unwrap();
        assert_eq!(fcm.provider, Provider::Fcm);
        assert_eq!(fcm.token, "abc:1");
        let other = param(r#"{"type":"ios","token":"ff00"}"#).unwrap().unwrap();
        assert_eq!(other.provider, Provider::Apns);
        assert_eq!(param(r#"{"type":"fcm"}"#), Ok(None));
        assert_eq!(param(r#"{"type":"apns","token":null}"#), Ok(None));
        assert_eq!(param(r#"{"type":"apns","token":""}"#), Ok(None));
        assert!(param(r#"{"type":1,"token":"x"}"#).is_err());
        assert!(param(r#"{"token":"x"}"#).is_err());
        assert!(param(r#"{"type":"fcm","token":"a b"}"#).is_err());
        let long = format!(r#"{{"type":"fcm","token":"{}"}}"#, "x".repeat(5000));
        assert!(param(&long).unwrap_err().contains("longer than"));
    }

    #[test]
    fn stored_tokens_round_trip() {
        for provider in [Provider::Fcm, Provider::Apns] {
            let token = PushToken {
                provider,
                token: "t:1".into(),
            };
            assert_eq!(PushToken::from_stored(&token.stored()), Some(token));
        }
        assert_eq!(PushToken::from_stored("gcm\tx"), None);
    }
}
