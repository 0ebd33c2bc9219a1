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

use crate::live::{Live, LocalSocket};
use crate::messages::Messages;
use crate::telemetry;
use error::RpcError;

/// What every call can reach: the message service and live sessions.
pub struct Context {
    pub messages: Messages,
    pub live: Arc<Live>,
}

/// The socket a call arrived on.
pub struct Caller<'a> {
    pub context: &'a Context,
    pub socket: &'a Arc<LocalSocket>,
}

/// Handles one text frame; returns the reply frame, if any.
pub async fn handle_frame(caller: Caller<'_>, frame: &str) -> Option<String> {
    if frame.trim_start().starts_with('[') {
        return handle_batch(&caller, frame).await;
    }
    match serde_json::from_str::<Envelope>(frame) {
        Ok(envelope) => handle_request(&caller, envelope).await,
        Err(error) => Some(error_reply(None, &decode_failure(&error))),
    }
}

async fn handle_batch(caller: &Caller<'_>, frame: &str) -> Option<String> {
    let items = match serde_json::from_str::<Vec<&RawValue>>(frame) {
        Ok(items) if !items.is_empty() => items,
        Ok(_) => return Some(error_reply(None, &RpcError::invalid_request("empty batch"))),
        Err(error) => return Some(error_reply(None, &decode_failure(&error))),
    };
    let mut replies = Vec::new();
    for item in items {
        let reply = match serde_json::from_str::<Envelope>(item.get()) {
            Ok(envelope) => handle_request(caller, envelope).await,
            Err(error) => Some(error_reply(None, &decode_failure(&error))),
        };
        replies.extend(reply);
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
        RpcError::invalid_request("a request must be a JSON object")
    } else {
        RpcError::parse_error()
    }
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

async fn handle_request(caller: &Caller<'_>, envelope: Envelope<'_>) -> Option<String> {
    let id = envelope.id;
    if let Some(id) = id {
        let valid = matches!(id.get().as_bytes()[0], b'"' | b'-' | b'0'..=b'9' | b'n');
        if !valid {
            return Some(error_reply(
                None,
                &RpcError::invalid_request("id must be a string, a number or null"),
            ));
        }
    }
    if envelope.jsonrpc.map(RawValue::get) != Some(r#""2.0""#) {
        // An invalid request is answered even without an id (JSON-RPC 2.0, section 5).
        return Some(error_reply(
            id,
            &RpcError::invalid_request(r#"jsonrpc must be "2.0""#),
        ));
    }
    let method = envelope
        .method
        .and_then(|m| serde_json::from_str::<Cow<str>>(m.get()).ok());
    let Some(method) = method else {
        return Some(error_reply(
            id,
            &RpcError::invalid_request("method must be a string"),
        ));
    };
    let started = Instant::now();
    let result = methods::dispatch(caller, &method, envelope.params).await;
    let label = methods::metric_label(&method);
    let outcome = result.as_ref().map_or_else(RpcError::outcome, |_| "ok");
    metrics::counter!(telemetry::CALLS, "method" => label, "outcome" => outcome).increment(1);
    metrics::histogram!(telemetry::CALL_DURATION, "method" => label)
        .record(started.elapsed().as_secs_f64());
    if let Err(error) = &result
        && error.outcome() == "error"
    {
        tracing::warn!(method = label, error = %error.message, "call failed");
    }
    reply_unless_notification(id, result)
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
