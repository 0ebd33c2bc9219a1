//! JSON-RPC 2.0 as rpc-websockets speaks it: decode a frame, dispatch each request to its
//! method, encode the reply. Requests without `id` are notifications: run, never answered.
//! Frames the server pushes (`messagesReceived`) are built here too.

pub mod error;
pub mod methods;
pub mod notifications;
pub mod order;
pub mod params;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::config::CallSettings;
use crate::live::{Live, LocalSocket};
use crate::messages::Messages;
use crate::model::ConnectionId;
use crate::socketdock::SocketDock;
use crate::telemetry;
use error::RpcError;

/// What every call can reach: the message service, live sessions, and the bounds of calls.
pub struct Context {
    pub messages: Arc<Messages>,
    pub live: Arc<Live>,
    /// The SocketDock adapter, when MEDIATOR_URL is set.
    pub socketdock: Option<Arc<SocketDock>>,
    pub calls: CallSettings,
}

/// The socket a call arrived on.
pub struct Caller<'a> {
    pub context: &'a Context,
    pub socket: &'a Arc<LocalSocket>,
    /// The tenant its token names, if any: its connection ids are within it.
    pub tenant: Option<&'a str>,
}

impl Caller<'_> {
    /// A connection id the client named, as the server keeps it (within the caller's tenant;
    /// without one, the very id: no copy on the untenanted path).
    pub fn connection<'a>(&self, id: &'a ConnectionId) -> Cow<'a, ConnectionId> {
        match self.tenant {
            Some(tenant) => Cow::Owned(id.in_tenant(tenant)),
            None => Cow::Borrowed(id),
        }
    }
}

/// Handles one text frame; returns the reply frame, if any.
pub async fn handle_frame(caller: Caller<'_>, frame: &str) -> Option<String> {
    if frame.trim_start().starts_with('[') {
        return handle_batch(&caller, frame).await;
    }
    match serde_json::from_str::<Envelope>(frame) {
        Ok(envelope) => handle_request(&caller, envelope, u64::MAX).await,
        Err(error) => Some(error_reply(None, &decode_failure(&error))),
    }
}

/// Runs a batch's calls one after the other. Its reply is bounded: a batch of more than
/// `BATCH_MAX_CALLS` runs none of them; the replies share `BATCH_MAX_REPLY_BYTES`, each take
/// capped at what is left, and once it is spent the calls left are not run. Refused requests
/// each get an error, so no client waits for a reply that never comes.
async fn handle_batch(caller: &Caller<'_>, frame: &str) -> Option<String> {
    let items = match serde_json::from_str::<Vec<&RawValue>>(frame) {
        Ok(items) if !items.is_empty() => items,
        Ok(_) => return Some(error_reply(None, &RpcError::invalid_request("empty batch"))),
        Err(error) => return Some(error_reply(None, &decode_failure(&error))),
    };
    let limits = &caller.context.calls;
    let too_many = (items.len() as u64 > limits.batch_max_calls).then(|| {
        RpcError::batch_limit(format!(
            "a batch holds at most {} calls (BATCH_MAX_CALLS), this one {}; none was run",
            limits.batch_max_calls,
            items.len()
        ))
    });
    let mut budget = limits.batch_max_reply_bytes;
    let mut replies = Vec::new();
    for item in items {
        // serde would read an array as the envelope's members in order: only objects are
        // requests.
        let envelope = match serde_json::from_str::<Envelope>(item.get()) {
            Ok(envelope) if item.get().starts_with('{') => envelope,
            Ok(_) => {
                replies.push(error_reply(None, &not_an_object()));
                continue;
            }
            Err(error) => {
                replies.push(error_reply(None, &decode_failure(&error)));
                continue;
            }
        };
        let reply = match &too_many {
            Some(error) => refuse(envelope, error),
            None if budget == 0 => refuse(
                envelope,
                &RpcError::batch_limit(format!(
                    "the batch's replies reached BATCH_MAX_REPLY_BYTES ({} bytes); this call was not run",
                    limits.batch_max_reply_bytes
                )),
            ),
            None => handle_request(caller, envelope, budget).await,
        };
        if let Some(reply) = reply {
            budget = budget.saturating_sub(reply.len() as u64 + 1);
            replies.push(reply);
        }
    }
    // A batch of notifications only gets no reply at all.
    (!replies.is_empty()).then(|| format!("[{}]", replies.join(",")))
}

/// The reply to a frame that is not text at all.
pub fn parse_error_reply() -> String {
    error_reply(None, &RpcError::parse_error())
}

fn decode_failure(error: &serde_json::Error) -> RpcError {
    if error.is_data() {
        not_an_object()
    } else {
        RpcError::parse_error()
    }
}

fn not_an_object() -> RpcError {
    RpcError::invalid_request("a request must be a JSON object")
}

/// A request before validation; every member is kept raw so a wrong type is reported, not lost.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    jsonrpc: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    /// `None`: absent (a notification); `Some("null")`: present and null.
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// A request that is valid JSON-RPC: its id (None: a notification) and method.
struct Valid<'a> {
    id: Option<&'a RawValue>,
    method: Cow<'a, str>,
    params: Option<&'a RawValue>,
}

/// Checks the envelope; an invalid request gets its error reply (even without an id, as
/// JSON-RPC 2.0 section 5 says).
fn validate(envelope: Envelope<'_>) -> Result<Valid<'_>, String> {
    let id = envelope.id;
    if let Some(id) = id {
        let valid = matches!(id.get().as_bytes()[0], b'"' | b'-' | b'0'..=b'9' | b'n');
        if !valid {
            return Err(error_reply(
                None,
                &RpcError::invalid_request("id must be a string, a number or null"),
            ));
        }
    }
    if envelope.jsonrpc.map(RawValue::get) != Some(r#""2.0""#) {
        return Err(error_reply(
            id,
            &RpcError::invalid_request(r#"jsonrpc must be "2.0""#),
        ));
    }
    let method = envelope
        .method
        .and_then(|m| serde_json::from_str::<Cow<str>>(m.get()).ok());
    let Some(method) = method else {
        return Err(error_reply(
            id,
            &RpcError::invalid_request("method must be a string"),
        ));
    };
    Ok(Valid {
        id,
        method,
        params: envelope.params,
    })
}

/// The reply to a valid request that is not run (a batch over its bounds).
fn refuse(envelope: Envelope<'_>, error: &RpcError) -> Option<String> {
    match validate(envelope) {
        Ok(request) => request.id.map(|id| error_reply(Some(id), error)),
        Err(reply) => Some(reply),
    }
}

/// Runs a request; `reply_budget` caps the bytes a take may return (a batch's budget left).
async fn handle_request(
    caller: &Caller<'_>,
    envelope: Envelope<'_>,
    reply_budget: u64,
) -> Option<String> {
    let request = match validate(envelope) {
        Ok(request) => request,
        Err(reply) => return Some(reply),
    };
    let method = &request.method;
    let started = Instant::now();
    let result = methods::dispatch(caller, method, request.params, reply_budget).await;
    let label = methods::metric_label(method);
    let outcome = result.as_ref().map_or_else(RpcError::outcome, |_| "ok");
    // Tenants are the configured set (AUTH_TOKENS), so the label stays bounded; "" without one.
    let tenant = caller.tenant.unwrap_or_default().to_owned();
    metrics::counter!(telemetry::CALLS, "method" => label, "outcome" => outcome, "tenant" => tenant)
        .increment(1);
    metrics::histogram!(telemetry::CALL_DURATION, "method" => label)
        .record(started.elapsed().as_secs_f64());
    if let Err(error) = &result
        && error.outcome() == "error"
    {
        tracing::warn!(method = label, error = %error.message, "call failed");
    }
    reply_unless_notification(request.id, result)
}

fn reply_unless_notification(
    id: Option<&RawValue>,
    result: Result<String, RpcError>,
) -> Option<String> {
    let id = id?;
    Some(match result {
        Ok(result) => format!(r#"{{"jsonrpc":"2.0","result":{result},"id":{}}}"#, id.get()),
        Err(error) => error_reply(Some(id), &error),
    })
}

fn error_reply(id: Option<&RawValue>, error: &RpcError) -> String {
    let error = serde_json::to_string(error).expect("an error serializes");
    let id = id.map_or("null", RawValue::get);
    format!(r#"{{"jsonrpc":"2.0","error":{error},"id":{id}}}"#)
}
