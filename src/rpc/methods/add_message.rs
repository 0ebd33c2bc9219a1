//! `addMessage {connectionId, recipientDids, payload, pushNotificationToken?}` ->
//! `{"messageId": id}` once the message is in Redis. If the connection has a live session the
//! message goes in flight to it as `messagesReceived`; otherwise, with a push token, a push
//! notification is requested (sent later by the push workers: the reply never waits for it).

use serde::Deserialize;
use serde_json::value::RawValue;

use super::MethodResult;
use crate::push::PushTokenParam;
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
    #[serde(default)]
    push_notification_token: Option<PushTokenParam>,
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
    let push_token = params
        .push_notification_token
        .and_then(PushTokenParam::into_token);
    // Both commands go out together on the multiplexed connection: one round trip.
    let (live, ()) = tokio::join!(
        context.store.add_message(&params.connection_id, &message),
        context
            .pushes
            .remember_token(&params.connection_id, push_token.as_ref()),
    );
    if let Some(delivery) = live? {
        context
            .live
            .deliver(
                &params.connection_id,
                delivery,
                message.id.clone(),
                &message.body,
            )
            .await;
    } else if push_token.is_some() {
        context
            .pushes
            .request(&params.connection_id, push_token.as_ref(), &message.id);
    }
    Ok(format!(r#"{{"messageId":"{}"}}"#, message.id))
}
