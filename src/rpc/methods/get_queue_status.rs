//! `getQueueStatus {connectionId, recipientDid?}` -> `{messageCount, totalBytes,
//! oldestReceivedAt, newestReceivedAt}`: what a Pickup 2.0 status reports, at bounded cost.
//! `messageCount` and the times are of pending messages (as getAvailableMessageCount);
//! `totalBytes` is what the connection holds, pending and in flight (null for one DID: not
//! kept per DID); a time is null when nothing is pending.

use serde::Deserialize;
use serde_json::json;

use super::MethodResult;
use crate::model::iso_millis;
use crate::rpc::Caller;
use crate::rpc::params::{ConnectionId, Did};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    connection_id: ConnectionId,
    recipient_did: Option<Did>,
}

pub async fn call(caller: &Caller<'_>, params: Params) -> MethodResult {
    let status = caller
        .context
        .messages
        .queue_status(
            &caller.connection(&params.connection_id),
            params.recipient_did.as_ref(),
        )
        .await?;
    Ok(json!({
        "messageCount": status.message_count,
        "totalBytes": status.total_bytes,
        "oldestReceivedAt": status.oldest_received_ms.map(iso_millis),
        "newestReceivedAt": status.newest_received_ms.map(iso_millis),
    })
    .to_string())
}
