//! `removeMessages {connectionId, messageIds}` -> `true`. Ids that are not queued (any more)
//! are not an error: acknowledgements may arrive twice. Removal from Redis is what counts (a
//! message Redis no longer lists is never handed out); documents of removed cold messages are
//! deleted in the background, or by the mover if MongoDB is away.

use serde::Deserialize;

use super::MethodResult;
use crate::rpc::Caller;
use crate::rpc::params::{Bounded, ConnectionId, MessageId};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    connection_id: ConnectionId,
    message_ids: Bounded<MessageId, 10_000>,
}

pub async fn call(caller: &Caller<'_>, params: Params) -> MethodResult {
    if !params.message_ids.0.is_empty() {
        let context = caller.context;
        let ids: Vec<String> = params.message_ids.0.into_iter().map(String::from).collect();
        let trashed = context
            .store
            .remove_messages(&params.connection_id, &ids)
            .await?;
        if let Some(cold) = &context.cold {
            cold.discard(&context.store, &params.connection_id, trashed);
        }
    }
    Ok(super::boolean(true))
}
