//! `removeAllMessages {connectionId, recipientDid?}` -> `true`: every message of the connection,
//! pending or in flight, in both tiers, or only those for one recipient DID.

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
    messages
        .remove_all(
            &caller.connection(&params.connection_id),
            params.recipient_did.as_ref(),
        )
        .await?;
    Ok(super::boolean(true))
}
