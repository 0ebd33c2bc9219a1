//! `getAvailableMessageCount {connectionId, recipientDid?}` -> number of pending messages (in
//! flight ones are not available).

use serde::Deserialize;

use super::MethodResult;
use crate::rpc::Caller;
use crate::rpc::params::{ConnectionId, Did};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    connection_id: ConnectionId,
    recipient_did: Option<Did>,
}

pub async fn call(caller: &Caller<'_>, params: Params) -> MethodResult {
    let messages = &caller.context.messages;
    let count = messages
        .count(
            &caller.connection(&params.connection_id),
            params.recipient_did.as_ref(),
        )
        .await?;
    Ok(count.to_string())
}
