//! `takeFromQueue {connectionId, recipientDid?, limit?, limitBytes?, deleteMessages?}` ->
//! `[QueuedMessage]`, oldest first. Without delete, the messages are in flight: hidden from
//! further takes until the visibility timeout passes or they are removed.

use serde::Deserialize;

use super::MethodResult;
use crate::rpc::Caller;
use crate::rpc::params::{ConnectionId, Did};
use crate::store::Take;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    connection_id: ConnectionId,
    recipient_did: Option<Did>,
    limit: Option<u64>,
    limit_bytes: Option<u64>,
    delete_messages: Option<bool>,
}

pub async fn call(caller: &Caller<'_>, params: Params) -> MethodResult {
    let context = caller.context;
    let take = Take {
        recipient_did: params.recipient_did.as_deref().map(String::as_str),
        limit: params
            .limit
            .unwrap_or(u64::MAX)
            .min(context.max_take_messages),
        limit_bytes: params
            .limit_bytes
            .unwrap_or(u64::MAX)
            .min(context.max_take_bytes),
        delete: params.delete_messages.unwrap_or(false),
    };
    if take.limit == 0 {
        return Ok("[]".to_owned());
    }
    let bodies = context.store.take(&params.connection_id, &take).await?;
    Ok(format!("[{}]", bodies.join(",")))
}
