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
    let did = params.recipient_did.as_deref().map(String::as_str);
    let count = caller
        .context
        .store
        .count_pending(&params.connection_id, did)
        .await?;
    Ok(count.to_string())
}
