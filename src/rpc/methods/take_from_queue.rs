//! `takeFromQueue {connectionId, recipientDid?, limit?, limitBytes?, deleteMessages?}` ->
//! `[QueuedMessage]`, oldest first across both tiers. Without delete, the messages are in
//! flight: hidden from further takes until the visibility timeout passes or they are removed.
//! Cold messages come back in flight from Redis; their bodies are read from MongoDB, then they
//! are deleted (with deleteMessages) or left in flight. If MongoDB cannot be read, they go back
//! to pending and the reply holds what Redis holds.

use std::collections::HashMap;

use serde::Deserialize;

use super::MethodResult;
use crate::rpc::Caller;
use crate::rpc::params::{ConnectionId, Did};
use crate::store::{Settle, Take, Taken};
use crate::telemetry;

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
    let cold = context.cold.as_ref();
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
        hot_only: cold.is_none_or(|cold| !cold.is_available()),
    };
    if take.limit == 0 {
        return Ok("[]".to_owned());
    }
    let connection_id: &str = &params.connection_id;
    if take.hot_only && cold.is_some() {
        metrics::counter!(telemetry::COLD_DEGRADED, "method" => "takeFromQueue").increment(1);
    }
    let taken = context.store.take(connection_id, &take).await?;
    let cold_ids: Vec<&str> = taken
        .messages
        .iter()
        .filter(|message| message.body.is_none())
        .map(|message| message.id.as_str())
        .collect();
    if cold_ids.is_empty() {
        return Ok(reply(&taken, &HashMap::new()));
    }
    let store = &context.store;
    let read = match cold {
        Some(cold) => cold.bodies(&cold_ids).await.map_err(|e| e.to_string()),
        None => Err("MONGODB_URI is not set".to_owned()),
    };
    let bodies = match read {
        Ok(bodies) => bodies,
        Err(error) => {
            tracing::warn!(%connection_id, %error, "cold messages not read; serving what Redis holds");
            metrics::counter!(telemetry::COLD_DEGRADED, "method" => "takeFromQueue").increment(1);
            store
                .settle_cold(connection_id, taken.deadline, &cold_ids, Settle::Release)
                .await?;
            return Ok(reply(&taken, &HashMap::new()));
        }
    };
    // A document gone from MongoDB (its TTL index, or a hand) is a message gone.
    let missing: Vec<&str> = cold_ids
        .iter()
        .copied()
        .filter(|id| !bodies.contains_key(*id))
        .collect();
    if !missing.is_empty() {
        metrics::counter!(telemetry::COLD_MISSING).increment(missing.len() as u64);
        tracing::warn!(%connection_id, ?missing, "cold messages without a document; removed");
    }
    let to_delete: Vec<&str> = if take.delete { cold_ids } else { missing };
    if !to_delete.is_empty() {
        let trashed = store
            .settle_cold(connection_id, taken.deadline, &to_delete, Settle::Delete)
            .await?;
        if let Some(cold) = cold {
            cold.discard(store, connection_id, trashed);
        }
    }
    Ok(reply(&taken, &bodies))
}

/// The JSON array of the messages that have a body, in the order taken.
fn reply(taken: &Taken, cold_bodies: &HashMap<String, String>) -> String {
    let mut json = String::from("[");
    let bodies = taken.messages.iter().filter_map(|message| {
        message
            .body
            .as_deref()
            .or_else(|| cold_bodies.get(&message.id).map(String::as_str))
    });
    for (i, body) in bodies.enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(body);
    }
    json.push(']');
    json
}
