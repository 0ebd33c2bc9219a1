//! `addMessage {connectionId, recipientDids, payload, pushNotificationToken?}` ->
//! `{"messageId": id}` once the message is in Redis. If the connection has a live session the
//! message goes in flight to it as `messagesReceived`.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::MethodResult;
use crate::rpc::Caller;
use crate::rpc::error::RpcError;
use crate::rpc::params::{Bounded, ConnectionId, Did};
use crate::store::NewMessage;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    connection_id: ConnectionId,
    recipient_dids: Bounded<Did, 64>,
    payload: Box<RawValue>,
}

pub async fn call(caller: &Caller<'_>, params: Params) -> MethodResult {
    if !params.payload.get().starts_with('{') {
        return Err(RpcError::invalid_params(
            "payload: must be an object (an encrypted message)",
        ));
    }
    let dids: Vec<String> = params
        .recipient_dids
        .0
        .into_iter()
        .map(String::from)
        .collect();
    let message = NewMessage::new(&dids, &params.payload);
    let context = caller.context;
    let live = context
        .store
        .add_message(&params.connection_id, &message)
        .await?;
    if let Some(delivery) = live {
        context
            .live
            .deliver(
                &params.connection_id,
                delivery,
                message.id.clone(),
                &message.body,
            )
            .await;
    }
    Ok(format!(r#"{{"messageId":"{}"}}"#, message.id))
}
