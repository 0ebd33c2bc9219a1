//! `removeAllMessages {connectionId, recipientDid?}` -> `true`: every message of the connection,
//! pending or in flight, or only those for one recipient DID.

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
    caller
        .context
        .store
        .remove_all(&params.connection_id, did)
        .await?;
    Ok(super::boolean(true))
}
