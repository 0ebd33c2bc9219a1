//! `rpc.on` / `rpc.off` `["messagesReceived"]`, answered as the rpc-websockets server does:
//! `{"messagesReceived":"ok"}`. Pushes reach the socket holding a live session either way; the
//! subscription is kept for clients that check the answer.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::MethodResult;
use crate::rpc::Caller;
use crate::rpc::error::RpcError;

const EVENT: &str = "messagesReceived";

pub fn call(caller: &Caller<'_>, params: Option<&RawValue>, subscribe: bool) -> MethodResult {
    let names: Vec<String> = params
        .and_then(|params| serde_json::from_str(params.get()).ok())
        .ok_or_else(|| RpcError::invalid_params("params must be an array of event names"))?;
    let mut results = BTreeMap::new();
    for name in names {
        let result = if name != EVENT {
            "provided event invalid"
        } else if caller.socket.set_subscribed(subscribe) {
            "ok"
        } else if subscribe {
            "socket has already been subscribed to event"
        } else {
            "not subscribed"
        };
        results.insert(name, result);
    }
    Ok(serde_json::to_string(&results).expect("a map of strings serializes"))
}
