//! `takeFromQueue {connectionId, recipientDid?, limit?, limitBytes?, deleteMessages?}` ->
//! `[QueuedMessage]`, oldest first across both tiers; without delete the messages are in flight
//! until removed or the visibility timeout passes.

use serde::Deserialize;

use super::MethodResult;
use crate::messages::TakeRequest;
use crate::rpc::Caller;
use crate::rpc::params::{ConnectionId, Did};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    connection_id: ConnectionId,
    recipient_did: Option<Did>,
    limit: Option<u64>,
    limit_bytes: Option<u64>,
    delete_messages: Option<bool>,
}

/// `reply_budget`: in a batch, the reply bytes left (the take returns at most that many
/// payload bytes), else unbounded.
pub async fn call(caller: &Caller<'_>, params: Params, reply_budget: u64) -> MethodResult {
    let request = TakeRequest {
        recipient_did: params.recipient_did.as_ref(),
        limit: params.limit,
        limit_bytes: Some(params.limit_bytes.unwrap_or(u64::MAX).min(reply_budget)),
        delete: params.delete_messages.unwrap_or(false),
    };
    let messages = &caller.context.messages;
    let bodies = messages
        .take(&caller.connection(&params.connection_id), request)
        .await?;
    Ok(format!("[{}]", bodies.join(",")))
}
