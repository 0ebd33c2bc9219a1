//! `addMessage {connectionId, recipientDids, payload, pushNotificationToken?}` ->
//! `{"messageId": id}` once the message is in Redis.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::MethodResult;
use crate::model::NewMessage;
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
    let message = NewMessage::new(params.recipient_dids.0, params.payload.get());
    let token = params
        .push_notification_token
        .and_then(PushTokenParam::into_token);
    let messages = &caller.context.messages;
    let id = messages.add(&params.connection_id, message, token).await?;
    Ok(format!(r#"{{"messageId":"{id}"}}"#))
}
