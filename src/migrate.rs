//! `mpr migrate-from-node`: brings the messages a Node MPR left behind into this server's
//! layout. Its Redis lists (`connectionId:<id>:queuemessages`, found with SCAN) become hot
//! messages; its MongoDB documents become cold messages in place (the documents stay where
//! they are). Ids and receive times are kept, and imported messages queue ahead of anything
//! this server received, ordered by receive time. Every imported id is remembered per
//! connection, so a second run (or a run after an interruption) imports nothing twice, even
//! messages delivered and removed in between.

use std::time::Duration;

use bson::{Document, doc};
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::cold::{Cold, document};
use crate::config::{Config, MigrateArgs};
use crate::model::{ConnectionId, Did, now_ms, queued_message_json};
use crate::progress::Progress;
use crate::store::{NodeRedis, Store, Visits, record_tail};

/// Imported messages get sequence numbers below every native one (those count up from 1):
/// their receive time minus this (about the year 2286).
const IMPORT_SEQ_OFFSET: i64 = 10_000_000_000_000;
/// How long a connection remembers the ids imported into it.
const REMEMBER_IMPORTS: Duration = Duration::from_secs(30 * 24 * 3600);
const LIST_CHUNK: isize = 500;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct Report {
    pub lists: u64,
    pub documents: u64,
    pub imported: u64,
    pub already_imported: u64,
    pub unreadable: u64,
}

/// One entry of a Node MPR queue list.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeQueuedMessage {
    message_id: String,
    #[serde(default)]
    recipient_dids: Vec<String>,
    encrypted_message: Box<RawValue>,
    received_at: Option<String>,
}

pub async fn run(config: &Config, args: &MigrateArgs) -> anyhow::Result<Report> {
    let visits = Visits::from(&config.cold);
    let visit_after = visits.first_after();
    let mut redis = config.redis.clone();
    redis.redis_timeout_ms = TIMEOUT.as_millis() as u64;
    let store = Store::open(&redis, &config.queue, visits).await?;
    store.prepare().await?;
    let mut report = Report::default();
    let node_url = args
        .node_redis_url
        .as_deref()
        .unwrap_or(&config.redis.redis_url);
    let every = Duration::from_millis(args.progress_interval_ms);
    import_lists(&store, node_url, visit_after.is_some(), every, &mut report).await?;
    match (&config.cold.mongodb_uri, args.skip_mongodb) {
        (Some(uri), false) => {
            let cold = Cold::open(uri, TIMEOUT).await?;
            cold.ensure_indexes(visits.retention).await?;
            let own = args.include_own_documents;
            let schedule = visit_after.is_some();
            import_documents(&store, &cold, own, schedule, every, &mut report).await?;
        }
        _ => tracing::info!("MongoDB documents not imported (MONGODB_URI unset or --skip-mongodb)"),
    }
    tracing::info!(?report, "migration done");
    Ok(report)
}

async fn import_lists(
    store: &Store,
    node_url: &str,
    schedule: bool,
    every: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut nodes = NodeRedis::open_all(node_url).await?;
    let mut found = 0;
    for node in &mut nodes {
        found += node.count_queues().await?;
    }
    let mut progress = Progress::new("lists", found, every);
    for mut node in nodes {
        import_node_lists(store, &mut node, schedule, &mut progress, report).await?;
    }
    progress.finish();
    Ok(())
}

/// The lists one Redis node holds.
async fn import_node_lists(
    store: &Store,
    node: &mut NodeRedis,
    schedule: bool,
    progress: &mut Progress,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut cursor = 0u64;
    loop {
        let (next, keys) = node.scan_queues(cursor).await?;
        for key in keys {
            let Some(connection_id) = key
                .strip_prefix("connectionId:")
                .and_then(|rest| rest.strip_suffix(":queuemessages"))
                .and_then(checked::<ConnectionId>)
            else {
                tracing::warn!(%key, "not a usable connection id; list left alone");
                continue;
            };
            report.lists += 1;
            import_list(store, node, &key, &connection_id, report).await?;
            if schedule {
                store.schedule_visit(&connection_id, 0, true).await?;
            }
            progress.advance(1);
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

async fn import_list(
    store: &Store,
    node: &mut NodeRedis,
    key: &str,
    connection_id: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut start = 0isize;
    loop {
        let entries = node.list_range(key, start, start + LIST_CHUNK - 1).await?;
        for entry in &entries {
            let Ok(message) = serde_json::from_str::<NodeQueuedMessage>(entry) else {
                report.unreadable += 1;
                tracing::warn!(%key, "unreadable list entry skipped");
                continue;
            };
            let received_ms = message
                .received_at
                .as_deref()
                .and_then(parse_time)
                .unwrap_or_else(now_ms);
            let dids = checked_dids(message.recipient_dids);
            let payload = message.encrypted_message.get();
            let body = queued_message_json(&message.message_id, received_ms, payload);
            let tail = record_tail(payload.len(), received_ms, &dids, &body);
            import(
                store,
                connection_id,
                &message.message_id,
                received_ms,
                &tail,
                report,
            )
            .await?;
        }
        if (entries.len() as isize) < LIST_CHUNK {
            return Ok(());
        }
        start += LIST_CHUNK;
    }
}

/// Documents the Node MPR wrote (this server's carry a `moveToken`; `own` takes them too):
/// indexed as cold messages.
async fn import_documents(
    store: &Store,
    cold: &Cold,
    own: bool,
    schedule: bool,
    every: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let found = cold.count_documents_to_import(own).await?;
    let mut progress = Progress::new("documents", found, every);
    let mut documents = cold.documents_to_import(own).await?;
    while let Some(document) = documents.try_next().await? {
        report.documents += 1;
        progress.advance(1);
        let Some((connection_id, id, received_ms, size, dids)) = node_document(&document) else {
            report.unreadable += 1;
            tracing::warn!(_id = ?document.get("_id"), "unreadable document skipped");
            continue;
        };
        let tail = record_tail(size, received_ms, &dids, "");
        if import(store, &connection_id, &id, received_ms, &tail, report).await? && schedule {
            store.schedule_visit(&connection_id, 0, true).await?;
        }
    }
    progress.finish();
    Ok(())
}

/// (connectionId, messageId, received ms, payload size, recipient DIDs) of a Node document.
fn node_document(document: &Document) -> Option<(String, String, i64, usize, Vec<String>)> {
    let connection_id = checked::<ConnectionId>(document.get_str("connectionId").ok()?)?;
    let id = document.get_str("messageId").ok()?.to_owned();
    let received_ms = document.get_datetime("createdAt").ok()?.timestamp_millis();
    let size = document::encrypted_message_json(document.get("encryptedMessage")?)?.len();
    let dids = document
        .get_array("recipientKeys")
        .map(|keys| {
            keys.iter()
                .filter_map(|key| key.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Some((connection_id, id, received_ms, size, checked_dids(dids)))
}

async fn import(
    store: &Store,
    connection_id: &str,
    id: &str,
    received_ms: i64,
    tail: &str,
    report: &mut Report,
) -> anyhow::Result<bool> {
    let seq = received_ms - IMPORT_SEQ_OFFSET;
    let new = store
        .import(connection_id, id, seq, tail, REMEMBER_IMPORTS)
        .await?;
    if new {
        report.imported += 1;
    } else {
        report.already_imported += 1;
    }
    Ok(new)
}

/// A value that passes the same checks as the protocol's params.
fn checked<T: for<'de> Deserialize<'de> + Into<String>>(value: &str) -> Option<String> {
    serde_json::from_value::<T>(serde_json::Value::String(value.to_owned()))
        .ok()
        .map(Into::into)
}

fn checked_dids(dids: Vec<String>) -> Vec<String> {
    dids.into_iter()
        .filter_map(|did| checked::<Did>(&did))
        .collect()
}

fn parse_time(text: &str) -> Option<i64> {
    let time =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some((time.unix_timestamp_nanos() / 1_000_000) as i64)
}
