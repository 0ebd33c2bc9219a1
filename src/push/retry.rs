//! What one attempt at a push came to, and how long to wait before the next one.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// The outcome of one request to a push service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Sent,
    /// Worth trying again (5xx, 429, network): after `after` if the service said so.
    Retry {
        after: Option<Duration>,
        reason: &'static str,
    },
    /// The service refused these credentials (expired): renew them once and try again.
    Reauthenticate(Arc<str>),
    /// The device token is dead (uninstalled app, bad token): never retried.
    DeadToken,
    /// Refused for good, for the reason given (a metrics label).
    Failed(&'static str),
}

impl Attempt {
    /// The usual reading of a status for which the service gave no more specific reason.
    pub fn from_status(status: reqwest::StatusCode, headers: &HeaderMap) -> Self {
        match status.as_u16() {
            200..=299 => Self::Sent,
            429 => Self::Retry {
                after: retry_after(headers),
                reason: "rate_limited",
            },
            500..=599 => Self::Retry {
                after: retry_after(headers),
                reason: "unavailable",
            },
            _ => Self::Failed("rejected"),
        }
    }

    /// A request that got no answer: refused connection, reset, timeout.
    pub fn from_error(error: &reqwest::Error) -> Self {
        Self::Retry {
            after: None,
            reason: if error.is_timeout() {
                "timeout"
            } else {
                "network"
            },
        }
    }
}

/// A push service's answer, read in full (so the connection can be reused).
pub struct Reply {
    pub status: reqwest::StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Sends a request; a transport failure is already an attempt to retry.
pub async fn exchange(request: reqwest::RequestBuilder) -> Result<Reply, Attempt> {
    let response = request
        .send()
        .await
        .map_err(|error| Attempt::from_error(&error))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .bytes()
        .await
        .map_err(|error| Attempt::from_error(&error))?;
    Ok(Reply {
        status,
        headers,
        body: body.to_vec(),
    })
}

/// `Retry-After`: seconds (what Google and Apple send) or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt (renewing credentials does not count).
    pub max_retries: u32,
    /// First backoff; each retry doubles it.
    pub base: Duration,
    /// Longest wait, for backoff and for `Retry-After` alike: a service asking for more is
    /// given up on rather than holding a worker.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Exponential backoff with jitter: for retry n (0-based), a random delay in
    /// [d/2, d] with d = base·2ⁿ, so that pushes failing together do not retry together.
    pub fn backoff(&self, retry: u32) -> Duration {
        let full = self
            .base
            .saturating_mul(1u32 << retry.min(20))
            .min(self.max_delay);
        let half = full / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// How long to wait before retry `retry`, or None when it should not happen.
    pub fn delay(&self, retry: u32, after: Option<Duration>) -> Option<Duration> {
        if retry >= self.max_retries {
            return None;
        }
        match after {
            Some(after) if after > self.max_delay => None,
            Some(after) => Some(after),
            None => Some(self.backoff(retry)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;
    use reqwest::header::HeaderValue;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let policy = policy();
        for retry in 0..6 {
            let full = Duration::from_millis(100 * (1 << retry)).min(Duration::from_secs(1));
            for _ in 0..50 {
                let delay = policy.backoff(retry);
                assert!(delay >= full / 2 && delay <= full, "{retry}: {delay:?}");
            }
        }
    }

    #[test]
    fn retries_stop_at_the_limit_and_retry_after_wins_within_the_cap() {
        let policy = policy();
        assert!(policy.delay(2, None).is_some());
        assert_eq!(policy.delay(3, None), None);
        assert_eq!(
            policy.delay(0, Some(Duration::from_millis(700))),
            Some(Duration::from_millis(700))
        );
        assert_eq!(policy.delay(0, Some(Duration::from_secs(5))), None);
    }

    #[test]
    fn statuses_are_read_as_the_services_document_them() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            Attempt::from_status(StatusCode::OK, &headers),
            Attempt::Sent
        );
        assert_eq!(
            Attempt::from_status(StatusCode::SERVICE_UNAVAILABLE, &headers),
            Attempt::Retry {
                after: None,
                reason: "unavailable"
            }
        );
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(
            Attempt::from_status(StatusCode::TOO_MANY_REQUESTS, &headers),
            Attempt::Retry {
                after: Some(Duration::from_secs(3)),
                reason: "rate_limited"
            }
        );
        assert_eq!(
            Attempt::from_status(StatusCode::BAD_REQUEST, &headers),
            Attempt::Failed("rejected")
        );
        let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(61));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&in_a_minute).unwrap());
        let after = retry_after(&headers).unwrap();
        assert!(after > Duration::from_secs(59) && after <= Duration::from_secs(61));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }
}
