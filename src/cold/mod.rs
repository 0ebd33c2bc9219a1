//! The cold tier: bodies of messages older than `THRESHOLD_TIMESTAMP`, moved out of Redis into
//! MongoDB (collection `storequeuedmessages`, the Node MPR's document format). Redis keeps
//! every message's place in its queue, so order, filters, counts and visibility work the same
//! for both tiers; MongoDB is read only for the bodies of cold messages a take hands out.

pub mod document;

use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bson::{Document, RawDocumentBuf, doc};
use futures_util::TryStreamExt;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};

use crate::telemetry;

/// The Node MPR's names.
const DEFAULT_DATABASE: &str = "MessagePickupRepository";
const COLLECTION: &str = "storequeuedmessages";
/// Duplicate key: a document with this messageId exists already.
const DUPLICATE_KEY: i32 = 11000;

#[derive(Debug)]
pub enum ColdError {
    Mongo(mongodb::error::Error),
    TimedOut(Duration),
}

impl std::fmt::Display for ColdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Mongo(error) => write!(f, "MongoDB: {error}"),
            Self::TimedOut(after) => write!(f, "MongoDB did not answer within {after:?}"),
        }
    }
}

impl std::error::Error for ColdError {}

pub type ColdResult<T> = Result<T, ColdError>;

/// What a write of moved documents did.
pub struct Written {
    /// The documents MongoDB refused (by index in the batch, with its reason); the others are
    /// written.
    pub refused: Vec<(usize, String)>,
    /// False if a document adopted from an earlier attempt vanished meanwhile: the batch is
    /// then retried at a later visit.
    pub adopted: bool,
}

/// A cheap handle to the collection (the driver pools connections and reconnects by itself).
pub struct Cold {
    collection: Collection<Document>,
    timeout: Duration,
    /// Whether the last operation reached MongoDB: while it did not, reads serve what Redis
    /// holds instead of waiting for a timeout on every call.
    available: AtomicBool,
}

impl Cold {
    /// Parses the URI and prepares the client; nothing is contacted yet.
    pub async fn open(uri: &str, timeout: Duration) -> ColdResult<Self> {
        let mut options = ClientOptions::parse(uri).await.map_err(ColdError::Mongo)?;
        options.app_name.get_or_insert_with(|| "mpr".to_owned());
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        let client = Client::with_options(options).map_err(ColdError::Mongo)?;
        let database = client
            .default_database()
            .unwrap_or_else(|| client.database(DEFAULT_DATABASE));
        Ok(Self {
            collection: database.collection(COLLECTION),
            timeout,
            available: AtomicBool::new(true),
        })
    }

    /// `database.collection`, for logs.
    pub fn namespace(&self) -> String {
        self.collection.namespace().to_string()
    }

    /// The indexes the queries need (unique messageId: what makes moving idempotent), and the
    /// retention TTL index when `retention` is set.
    pub async fn ensure_indexes(&self, retention: Option<Duration>) -> ColdResult<()> {
        self.ensure_index("mpr_message_id", doc! {"messageId": 1}, |options| {
            options.unique = Some(true);
        })
        .await?;
        self.ensure_index(
            "mpr_connection_received",
            doc! {"connectionId": 1, "createdAt": 1},
            |_| {},
        )
        .await?;
        let existing = self.retention_index().await?;
        if existing != retention {
            if existing.is_some() {
                self.run(self.collection.drop_index("mpr_retention"))
                    .await?;
            }
            if let Some(retention) = retention {
                self.ensure_index("mpr_retention", doc! {"createdAt": 1}, |options| {
                    options.expire_after = Some(retention);
                })
                .await?;
            }
        }
        Ok(())
    }

    async fn ensure_index(
        &self,
        name: &str,
        keys: Document,
        configure: impl FnOnce(&mut IndexOptions),
    ) -> ColdResult<()> {
        let mut options = IndexOptions::builder().name(name.to_owned()).build();
        configure(&mut options);
        let wanted_unique = options.unique.unwrap_or(false);
        let model = IndexModel::builder()
            .keys(keys.clone())
            .options(options)
            .build();
        match self.run(self.collection.create_index(model)).await {
            Ok(_) => Ok(()),
            // An index on the same keys under another name (left by the Node MPR) serves as
            // well, provided it is as unique.
            Err(error) => {
                let indexes = self.indexes().await?;
                let equivalent = indexes.iter().any(|index| {
                    index.keys == keys
                        && index
                            .options
                            .as_ref()
                            .and_then(|o| o.unique)
                            .unwrap_or(false)
                            == wanted_unique
                });
                if equivalent { Ok(()) } else { Err(error) }
            }
        }
    }

    async fn indexes(&self) -> ColdResult<Vec<IndexModel>> {
        self.run(async { self.collection.list_indexes().await?.try_collect().await })
            .await
    }

    async fn retention_index(&self) -> ColdResult<Option<Duration>> {
        let indexes = self.indexes().await?;
        Ok(indexes
            .into_iter()
            .filter_map(|index| index.options)
            .find(|options| options.name.as_deref() == Some("mpr_retention"))
            .and_then(|options| options.expire_after))
    }

    pub async fn ping(&self) -> ColdResult<()> {
        let database = self
            .collection
            .client()
            .database(&self.collection.namespace().db);
        self.run(async { database.run_command(doc! {"ping": 1}).await.map(|_| ()) })
            .await
    }

    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    /// Runs one operation within the timeout, and keeps `available` up to date.
    async fn run<T>(
        &self,
        operation: impl IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> ColdResult<T> {
        let result = match tokio::time::timeout(self.timeout, operation.into_future()).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) if reached_mongodb(&error) => Err(ColdError::Mongo(error)),
            Ok(Err(error)) => {
                self.set_available(false);
                return Err(ColdError::Mongo(error));
            }
            Err(_) => {
                self.set_available(false);
                return Err(ColdError::TimedOut(self.timeout));
            }
        };
        self.set_available(true);
        result
    }

    /// Exports `mpr_cold_available` as it stands, so that a dashboard sees 1 or 0 from the
    /// start, not nothing until the first change.
    pub fn export_available(&self) {
        metrics::gauge!(telemetry::COLD_AVAILABLE).set(if self.is_available() { 1.0 } else { 0.0 });
    }

    fn set_available(&self, available: bool) {
        if self.available.swap(available, Ordering::Relaxed) != available {
            self.export_available();
            if available {
                tracing::info!("MongoDB answers again");
            } else {
                tracing::warn!("MongoDB is unavailable; reads serve what Redis holds");
            }
        }
    }

    /// The QueuedMessage JSON of each id found, by id.
    pub async fn bodies(&self, ids: &[&str]) -> ColdResult<HashMap<String, String>> {
        let filter = doc! {"messageId": {"$in": ids}};
        let projection = doc! {"_id": 0, "messageId": 1, "createdAt": 1, "encryptedMessage": 1};
        let documents: Vec<Document> = self
            .run(async {
                self.collection
                    .find(filter)
                    .projection(projection)
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        Ok(documents
            .iter()
            .filter_map(document::queued_message)
            .collect())
    }

    /// Writes the documents of messages being moved, idempotently: a document an earlier
    /// attempt left is adopted (re-tagged with `mover`). A document MongoDB refuses for its own
    /// sake (a write error on it) is reported, not an error: the others are written.
    pub async fn write_moved(
        &self,
        documents: Vec<RawDocumentBuf>,
        ids: &[&str],
        mover: &str,
    ) -> ColdResult<Written> {
        let collection = self.collection.clone_with_type::<RawDocumentBuf>();
        let mut written = Written {
            refused: Vec::new(),
            adopted: true,
        };
        let errors = match self
            .run(collection.insert_many(documents).ordered(false))
            .await
        {
            Ok(_) => return Ok(written),
            Err(ColdError::Mongo(error)) => match *error.kind {
                mongodb::error::ErrorKind::InsertMany(ref failure)
                    if failure.write_concern_error.is_none() =>
                {
                    failure.write_errors.clone().unwrap_or_default()
                }
                _ => return Err(ColdError::Mongo(error)),
            },
            Err(other) => return Err(other),
        };
        let mut duplicates = Vec::new();
        for error in errors {
            let Some(id) = ids.get(error.index).copied() else {
                continue;
            };
            if error.code == DUPLICATE_KEY {
                duplicates.push(id);
            } else {
                written.refused.push((error.index, error.message));
            }
        }
        if !duplicates.is_empty() {
            let adopted = self
                .run(self.collection.update_many(
                    doc! {"messageId": {"$in": &duplicates}},
                    doc! {"$set": {"moveToken": mover, "updatedAt": bson::DateTime::now()}},
                ))
                .await?;
            written.adopted = adopted.matched_count == duplicates.len() as u64;
        }
        Ok(written)
    }

    /// Documents to import from the Node MPR: those it wrote (this server's carry a
    /// `moveToken`), or every document with `own` (recovery after Redis lost its data).
    pub async fn documents_to_import(&self, own: bool) -> ColdResult<mongodb::Cursor<Document>> {
        self.run(self.collection.find(import_filter(own))).await
    }

    /// How many documents `documents_to_import` would go through.
    pub async fn count_documents_to_import(&self, own: bool) -> ColdResult<u64> {
        self.run(self.collection.count_documents(import_filter(own)))
            .await
    }

    /// Deletes documents by messageId.
    pub async fn delete(&self, ids: &[String]) -> ColdResult<u64> {
        let result = self
            .run(
                self.collection
                    .delete_many(doc! {"messageId": {"$in": ids}}),
            )
            .await?;
        Ok(result.deleted_count)
    }

    /// Deletes the documents a move attempt wrote for messages it could not move.
    pub async fn delete_unmoved(&self, ids: &[&str], mover: &str) -> ColdResult<u64> {
        let filter = doc! {"messageId": {"$in": ids}, "moveToken": mover};
        let result = self.run(self.collection.delete_many(filter)).await?;
        Ok(result.deleted_count)
    }

    /// Deletes a connection's documents (of one recipient DID, if given) received up to
    /// `cutoff_ms`: what removeAllMessages leaves when whole cold tiers went at once.
    pub async fn delete_received_until(
        &self,
        connection_id: &str,
        recipient_did: Option<&str>,
        cutoff_ms: i64,
    ) -> ColdResult<u64> {
        let mut filter = doc! {
            "connectionId": connection_id,
            "createdAt": {"$lte": bson::DateTime::from_millis(cutoff_ms)},
        };
        if let Some(did) = recipient_did {
            filter.insert("recipientKeys", did);
        }
        let result = self.run(self.collection.delete_many(filter)).await?;
        Ok(result.deleted_count)
    }
}

/// Errors about the request, not the connection, say nothing about reachability: the server
/// answered (a write error, a bad command), or the driver refused to send a document (larger
/// than MongoDB takes, or not serialisable).
fn reached_mongodb(error: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    matches!(
        *error.kind,
        ErrorKind::Command(_)
            | ErrorKind::Write(_)
            | ErrorKind::InsertMany(_)
            | ErrorKind::InvalidArgument { .. }
            | ErrorKind::BsonSerialization(_)
            | ErrorKind::Bson(_)
    )
}

/// The Node MPR's documents, or with `own` every document (this server's own are marked with
/// the `moveToken` of the move that wrote them).
fn import_filter(own: bool) -> Document {
    if own {
        doc! {}
    } else {
        doc! {"moveToken": {"$exists": false}}
    }
}
