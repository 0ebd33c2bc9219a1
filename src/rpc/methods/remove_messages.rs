//! `removeMessages {connectionId, messageIds}` -> `true`. Ids that are not queued (any more)
//! are not an error: acknowledgements may arrive twice.

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
    let messages = &caller.context.messages;
    messages
        .remove(
            &caller.connection(&params.connection_id),
            params.message_ids.0,
        )
        .await?;
    Ok(super::boolean(true))
}
