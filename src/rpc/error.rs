//! JSON-RPC errors as the client sees them.

use serde::Serialize;

use crate::store::StoreError;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
/// Redis failed or timed out: nothing was acknowledged, the call may be retried.
pub const STORAGE_UNAVAILABLE: i64 = -32000;
/// A batch over `BATCH_MAX_CALLS` or `BATCH_MAX_REPLY_BYTES`: the call was not run.
pub const BATCH_LIMIT: i64 = -32001;
/// The message would take the connection past QUEUE_MAX_MESSAGES or QUEUE_MAX_BYTES: nothing
/// was added.
pub const QUEUE_FULL: i64 = -32002;

#[derive(Debug, Serialize)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn parse_error() -> Self {
        Self::new(PARSE_ERROR, "Parse error: the frame is not valid JSON")
    }

    pub fn invalid_request(why: impl std::fmt::Display) -> Self {
        Self::new(INVALID_REQUEST, format!("Invalid Request: {why}"))
    }

    pub fn method_not_found(method: &str) -> Self {
        Self::new(METHOD_NOT_FOUND, format!("Method not found: {method}"))
    }

    pub fn invalid_params(why: impl std::fmt::Display) -> Self {
        Self::new(INVALID_PARAMS, format!("Invalid params: {why}"))
    }

    pub fn batch_limit(why: impl std::fmt::Display) -> Self {
        Self::new(BATCH_LIMIT, format!("Batch limit: {why}"))
    }

    pub fn storage(error: StoreError) -> Self {
        // What is known of a lost reply: the call's fence (see `store::functions`).
        let outcome = if error.is_timeout() {
            "timed out; the outcome is unknown: it took effect before the reply was due, or never will"
        } else if error.outcome_unknown() {
            "failed; the outcome is unknown: it took effect before the reply was due, or never will"
        } else {
            "failed"
        };
        Self::new(
            STORAGE_UNAVAILABLE,
            format!("Storage unavailable: Redis {outcome} ({error})"),
        )
    }

    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The label of this error's outcome in metrics.
    pub fn outcome(&self) -> &'static str {
        if self.code == STORAGE_UNAVAILABLE {
            "error"
        } else {
            "invalid"
        }
    }
}

impl From<StoreError> for RpcError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::QueueFull(quota) => Self::new(
                QUEUE_FULL,
                format!("Queue full: {quota}; nothing was added"),
            ),
            error @ StoreError::NotReplicated { .. } => {
                Self::new(STORAGE_UNAVAILABLE, format!("Storage unavailable: {error}"))
            }
            error => Self::storage(error),
        }
    }
}
