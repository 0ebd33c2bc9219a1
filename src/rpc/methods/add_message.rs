//! `addMessage {connectionId, recipientDids, payload, pushNotificationToken?}` ->
//! `{"messageId": id}` once the message is in Redis.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::MethodResult;
use crate::model::NewMessage;
use crate::payload;
use crate::push::PushTokenParam;
use crate::rpc::Caller;
use crate::rpc::error::RpcError;
use crate::rpc::params::{Bounded, ConnectionId, Did};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    connection_id: ConnectionId,
    recipient_dids: Bounded<Did, 64>,
    payload: Box<RawValue>,
    #[serde(default)]
    push_notification_token: Option<PushTokenParam>,
}

pub async fn call(caller: &Caller<'_>, params: Params) -> MethodResult {
    if !params.payload.get().starts_with('{') {
        return Err(RpcError::invalid_params(
            "payload: must be an object (an encrypted message)",
        ));
    }
    check_storable(caller, params.payload.get())?;
    let message = NewMessage::new(params.recipient_dids.0, params.payload.get());
    let token = params
        .push_notification_token
        .and_then(PushTokenParam::into_token);
    let messages = &caller.context.messages;
    let id = messages
        .add(&caller.connection(&params.connection_id), message, token)
        .await?;
    Ok(format!(r#"{{"messageId":"{id}"}}"#))
}

/// Refuses a payload the cold tier could not store: too deep for MongoDB, or too large once
/// converted to BSON (which can be several times its JSON size).
fn check_storable(caller: &Caller<'_>, payload: &str) -> Result<(), RpcError> {
    let limits = &caller.context.calls;
    let max_depth = limits.max_payload_depth as usize;
    let shape = payload::measure(payload, max_depth);
    if shape.depth > max_depth {
        return Err(RpcError::invalid_params(format!(
            "payload: nested deeper than {max_depth} levels (MAX_PAYLOAD_DEPTH)"
        )));
    }
    if shape.bson_bytes > limits.max_payload_bson_bytes {
        return Err(RpcError::invalid_params(format!(
            "payload: up to {} bytes as a MongoDB document, more than {} (MAX_PAYLOAD_BSON_BYTES)",
            shape.bson_bytes, limits.max_payload_bson_bytes
        )));
    }
    Ok(())
}
