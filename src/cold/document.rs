//! Documents of the `storequeuedmessages` collection, in the Node MPR's format (so either server
//! reads what the other wrote): written when the mover moves a message, read back into the
//! QueuedMessage JSON the client receives.

use bson::{Bson, DateTime, Document, RawDocumentBuf, doc};

use crate::model::queued_message_json;
use crate::store::Record;

/// Where the payload starts in a QueuedMessage JSON built by `queued_message_json`.
const PAYLOAD_MARKER: &str = r#","encryptedMessage":"#;

/// The document for a message moved out of Redis. `mover` is the move attempt's token: a
/// mover deletes only documents that carry its own.
pub fn moved(
    connection_id: &str,
    id: &str,
    record: &Record<'_>,
    mover: &str,
) -> Result<Document, String> {
    let start = record
        .body
        .find(PAYLOAD_MARKER)
        .ok_or("record body is not a QueuedMessage")?
        + PAYLOAD_MARKER.len();
    let payload = &record.body[start..record.body.len() - 1];
    // Deserialising the JSON text straight into a Document keeps the members' order.
    let encrypted: Document =
        serde_json::from_str(payload).map_err(|error| format!("encryptedMessage: {error}"))?;
    let now = DateTime::now();
    Ok(doc! {
        "messageId": id,
        "connectionId": connection_id,
        "recipientKeys": record.dids.clone(),
        "encryptedMessage": encrypted,
        "encryptedMessageByteCount": record.size as i64,
        "state": "pending",
        "createdAt": DateTime::from_millis(record.received_ms),
        "updatedAt": now,
        "moveToken": mover,
    })
}

/// MongoDB's largest document (`maxBsonObjectSize`), less the `_id` the driver adds to it.
const MAX_DOCUMENT_BYTES: usize = (16 << 20) - 17;
/// MongoDB's deepest nesting of documents and arrays (the document itself is level 1).
const MAX_DOCUMENT_DEPTH: usize = 100;

/// The document as MongoDB will store it, or why MongoDB would refuse it: checked here so
/// that one such message fails alone instead of failing the write of its whole batch.
pub fn storable(document: &Document) -> Result<RawDocumentBuf, String> {
    let depth = depth(document);
    if depth > MAX_DOCUMENT_DEPTH {
        return Err(format!(
            "nested {depth} levels deep, more than MongoDB's {MAX_DOCUMENT_DEPTH}"
        ));
    }
    let raw = RawDocumentBuf::try_from(document).map_err(|error| error.to_string())?;
    if raw.as_bytes().len() > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "{} bytes as BSON, more than MongoDB's {MAX_DOCUMENT_BYTES}",
            raw.as_bytes().len()
        ));
    }
    Ok(raw)
}

fn depth(document: &Document) -> usize {
    1 + document.values().map(value_depth).max().unwrap_or(0)
}

fn value_depth(value: &Bson) -> usize {
    match value {
        Bson::Document(document) => depth(document),
        Bson::Array(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A document as the client receives it: `(messageId, QueuedMessage JSON)`.
pub fn queued_message(document: &Document) -> Option<(String, String)> {
    let id = document.get_str("messageId").ok()?;
    let received_ms = document.get_datetime("createdAt").ok()?.timestamp_millis();
    let payload = encrypted_message_json(document.get("encryptedMessage")?)?;
    Some((
        id.to_owned(),
        queued_message_json(id, received_ms, &payload),
    ))
}

/// The payload's JSON text; the Node MPR stores an object, older documents may hold a string.
pub fn encrypted_message_json(value: &Bson) -> Option<String> {
    match value {
        Bson::Document(_) => {
            let mut json = String::new();
            write_json(value, &mut json);
            Some(json)
        }
        Bson::String(text) if text.trim_start().starts_with('{') => Some(text.clone()),
        _ => None,
    }
}

/// BSON to JSON text, members in stored order (serde_json's map would sort them).
fn write_json(value: &Bson, out: &mut String) {
    match value {
        Bson::Document(document) => {
            out.push('{');
            for (i, (key, value)) in document.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(key).expect("a string serialises"));
                out.push(':');
                write_json(value, out);
            }
            out.push('}');
        }
        Bson::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.clone().into_relaxed_extjson().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record_tail;

    #[test]
    fn a_moved_message_reads_back_as_the_same_queued_message() {
        let payload = r#"{"protected":"eyJ","iv":"aXY","ciphertext":"Y2lw","tag":"dGFn","n":7,"x":[1.5,null,true]}"#;
        let body = queued_message_json("6563e2b1f1c2a3b4c5d6e7f8", 1_700_000_000_123, payload);
        let dids = vec!["did:key:z6Mk".to_owned()];
        let record = format!(
            "5\t{}",
            record_tail(payload.len(), 1_700_000_000_123, &dids, &body)
        );
        let record = Record::parse(&record).unwrap();
        let document = moved("conn-1", "6563e2b1f1c2a3b4c5d6e7f8", &record, "token").unwrap();
        assert_eq!(document.get_str("state").unwrap(), "pending");
        assert_eq!(document.get_array("recipientKeys").unwrap().len(), 1);
        assert_eq!(
            document.get_i64("encryptedMessageByteCount").unwrap(),
            payload.len() as i64
        );
        let (id, read_back) = queued_message(&document).unwrap();
        assert_eq!(id, "6563e2b1f1c2a3b4c5d6e7f8");
        assert_eq!(read_back, body);
    }

    #[test]
    fn node_documents_with_a_string_payload_are_read() {
        let document = doc! {
            "messageId": "m1",
            "createdAt": DateTime::from_millis(0),
            "encryptedMessage": r#"{"protected":"p"}"#,
        };
        let (_, body) = queued_message(&document).unwrap();
        assert_eq!(
            body,
            r#"{"id":"m1","receivedAt":"1970-01-01T00:00:00.000Z","encryptedMessage":{"protected":"p"}}"#
        );
        assert!(queued_message(&doc! {"messageId": "m2"}).is_none());
    }
}
