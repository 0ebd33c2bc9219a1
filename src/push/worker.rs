//! A push worker: takes jobs from the queue and, for each, finds the token, checks the
//! cross-instance dedup window in Redis, and sends with retries. The Redis check happens here,
//! off the request path, just before sending (repeats within a window this instance opened
//! were already dropped by `Pushes::request`).

use std::sync::Arc;
use std::time::Instant;

use super::apns::Apns;
use super::dedup::Dedup;
use super::fcm::Fcm;
use super::retry::Attempt;
use super::tokens::Tokens;
use super::{Provider, PushToken, Pushes};
use crate::telemetry;

pub struct Job {
    pub connection_id: String,
    /// None: the connection's latest token, from Redis.
    pub token: Option<PushToken>,
    pub message_id: String,
}

pub async fn run(pushes: Arc<Pushes>) {
    while let Some(job) = pushes.queue.pop().await {
        tokio::select! {
            biased;
            () = pushes.stop.cancelled() => return,
            () = deliver(&pushes, job) => {}
        }
    }
}

async fn deliver(pushes: &Pushes, job: Job) {
    let token = match job.token {
        Some(token) => token,
        None => match Tokens::recall(&pushes.store, &job.connection_id).await {
            Ok(Some(token)) => token,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(connection_id = %job.connection_id, %error, "push: cannot read the connection's token");
                count_failure_unknown_provider();
                return;
            }
        },
    };
    let sender = match (token.provider, &pushes.fcm, &pushes.apns) {
        (Provider::Fcm, Some(fcm), _) => Sender::Fcm(fcm),
        (Provider::Apns, _, Some(apns)) => Sender::Apns(apns),
        (provider, _, _) => return count_failure(provider, "disabled"),
    };
    let print = Dedup::token_print(&token.token);
    match pushes.dedup.first_in_window(&pushes.store, &print).await {
        Ok(true) => {}
        Ok(false) => return count_deduplicated(token.provider),
        // Better a repeated wake-up than none.
        Err(error) => tracing::warn!(%error, "push: dedup window unavailable; sending anyway"),
    }
    send_with_retries(pushes, sender, &token, &job.message_id).await;
}

async fn send_with_retries(
    pushes: &Pushes,
    sender: Sender<'_>,
    token: &PushToken,
    message_id: &str,
) {
    let label = token.provider.label();
    let mut retries = 0;
    let mut renewed = false;
    loop {
        let started = Instant::now();
        let attempt = sender.send(pushes, &token.token, message_id).await;
        metrics::histogram!(telemetry::PUSH_DURATION, "provider" => label)
            .record(started.elapsed().as_secs_f64());
        let wait = match attempt {
            Attempt::Sent => {
                metrics::counter!(telemetry::PUSHES_SENT, "provider" => label).increment(1);
                return;
            }
            Attempt::DeadToken => {
                tracing::info!(provider = label, %message_id, "push: the device token is no longer valid");
                return count_failure(token.provider, "dead_token");
            }
            Attempt::Failed(reason) => {
                tracing::warn!(provider = label, %message_id, reason, "push failed");
                return count_failure(token.provider, reason);
            }
            Attempt::Reauthenticate(refused) if !renewed => {
                renewed = true;
                sender.renew_credentials(&refused).await;
                std::time::Duration::ZERO
            }
            Attempt::Reauthenticate(_) => {
                tracing::warn!(provider = label, "push: credentials refused after renewal");
                return count_failure(token.provider, "unauthorized");
            }
            Attempt::Retry { after, reason } => match pushes.retry.delay(retries, after) {
                Some(wait) => {
                    retries += 1;
                    wait
                }
                None => {
                    tracing::warn!(provider = label, %message_id, reason, retries, "push failed; giving up");
                    return count_failure(token.provider, reason);
                }
            },
        };
        metrics::counter!(telemetry::PUSHES_RETRIED, "provider" => label).increment(1);
        tokio::time::sleep(wait).await;
    }
}

pub fn count_failure(provider: Provider, reason: &'static str) {
    metrics::counter!(telemetry::PUSHES_FAILED, "provider" => provider.label(), "reason" => reason)
        .increment(1);
}

pub fn count_deduplicated(provider: Provider) {
    metrics::counter!(telemetry::PUSHES_DEDUPLICATED, "provider" => provider.label()).increment(1);
}

fn count_failure_unknown_provider() {
    metrics::counter!(telemetry::PUSHES_FAILED, "provider" => "unknown", "reason" => "storage")
        .increment(1);
}

#[derive(Clone, Copy)]
enum Sender<'a> {
    Fcm(&'a Fcm),
    Apns(&'a Apns),
}

impl Sender<'_> {
    async fn send(self, pushes: &Pushes, token: &str, message_id: &str) -> Attempt {
        match self {
            Self::Fcm(fcm) => fcm.send(&pushes.notification, token, message_id).await,
            Self::Apns(apns) => apns.send(&pushes.notification, token, message_id).await,
        }
    }

    async fn renew_credentials(self, refused: &str) {
        match self {
            Self::Fcm(fcm) => fcm.renew_credentials(refused).await,
            Self::Apns(apns) => apns.renew_credentials(refused).await,
        }
    }
}
