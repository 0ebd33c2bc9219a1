//! `removeAllMessages {connectionId, recipientDid?}` -> `true`: every message of the connection,
//! pending or in flight, in both tiers, or only those for one recipient DID.

use serde::Deserialize;

use super::MethodResult;
use crate::rpc::Caller;
use crate::rpc::params::{ConnectionId, Did};
use crate::telemetry;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    connection_id: ConnectionId,
    recipient_did: Option<Did>,
}

pub async fn call(caller: &Caller<'_>, params: Params) -> MethodResult {
    let context = caller.context;
    let connection_id: &str = &params.connection_id;
    let did = params.recipient_did.as_deref().map(String::as_str);
    let removed = context.store.remove_all(connection_id, did).await?;
    if let Some(cold) = &context.cold {
        cold.discard(&context.store, connection_id, removed.trashed);
        if let Some(cutoff) = removed.cold_cutoff_ms {
            // Redis no longer lists them, so they are gone for clients either way; what fails
            // here is only disk space, left to MESSAGE_TTL or an operator.
            if let Err(error) = cold.delete_received_until(connection_id, did, cutoff).await {
                metrics::counter!(telemetry::COLD_DELETE_DEFERRED).increment(1);
                tracing::warn!(%connection_id, cutoff, %error,
                    "documents of removed messages not deleted: delete {{connectionId, createdAt <= cutoff}} by hand");
            }
        }
    }
    Ok(super::boolean(true))
}
