//! One file per method: its params, their checks, and what it does.

mod add_live_session;
mod add_message;
mod get_available_message_count;
mod get_live_session;
mod get_queue_status;
mod ping;
mod remove_all_messages;
mod remove_live_session;
mod remove_messages;
mod subscription;
mod take_from_queue;

use serde_json::value::RawValue;

use super::Caller;
use super::error::RpcError;
use super::params::decode;

/// The result of a method: JSON text of the `result` member.
pub type MethodResult = Result<String, RpcError>;

/// Runs a method; `reply_budget` caps the payload bytes a take returns (see `handle_batch`).
pub async fn dispatch(
    caller: &Caller<'_>,
    method: &str,
    params: Option<&RawValue>,
    reply_budget: u64,
) -> MethodResult {
    match method {
        "takeFromQueue" => take_from_queue::call(caller, decode(params)?, reply_budget).await,
        "getAvailableMessageCount" => {
            get_available_message_count::call(caller, decode(params)?).await
        }
        "getQueueStatus" => get_queue_status::call(caller, decode(params)?).await,
        "addMessage" => add_message::call(caller, decode(params)?).await,
        "removeMessages" => remove_messages::call(caller, decode(params)?).await,
        "removeAllMessages" => remove_all_messages::call(caller, decode(params)?).await,
        "getLiveSession" => get_live_session::call(caller, decode(params)?).await,
        "addLiveSession" => add_live_session::call(caller, decode(params)?).await,
        "removeLiveSession" => remove_live_session::call(caller, decode(params)?).await,
        "ping" => Ok(ping::call()),
        "rpc.on" => subscription::call(caller, params, true),
        "rpc.off" => subscription::call(caller, params, false),
        other => Err(RpcError::method_not_found(other)),
    }
}

/// Every method name, for metrics labels.
pub const METHODS: [&str; 12] = [
    "takeFromQueue",
    "getAvailableMessageCount",
    "getQueueStatus",
    "addMessage",
    "removeMessages",
    "removeAllMessages",
    "getLiveSession",
    "addLiveSession",
    "removeLiveSession",
    "ping",
    "rpc.on",
    "rpc.off",
];

/// The method's name for metrics; anything unknown is one label, so clients cannot grow the set.
pub fn metric_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|known| **known == method)
        .copied()
        .unwrap_or("unknown")
}

fn boolean(value: bool) -> String {
    if value { "true" } else { "false" }.to_owned()
}
