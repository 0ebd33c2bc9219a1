//! A message as stored and returned: the QueuedMessage JSON the client receives, built once at
//! addMessage and returned byte for byte, plus what the scripts need to index it.

use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::iso8601::{
    Config, EncodedConfig, Iso8601, TimePrecision,
};

/// `2026-11-22T04:16:15.123Z`, as JavaScript's `Date.toISOString()` writes it.
const ISO_MILLIS: EncodedConfig = Config::DEFAULT
    .set_time_precision(TimePrecision::Second {
        decimal_digits: std::num::NonZeroU8::new(3),
    })
    .encode();

pub struct NewMessage<'a> {
    pub id: String,
    pub dids: &'a [String],
    /// Size of `encryptedMessage` in bytes: what `limitBytes` counts.
    pub size: usize,
    /// Receive time, ms since the epoch: what the mover and retention age messages by.
    pub received_ms: i64,
    /// `{"id":...,"receivedAt":...,"encryptedMessage":...}`
    pub body: String,
}

impl<'a> NewMessage<'a> {
    /// A fresh id (ObjectId: 24 hex characters, unique across processes) and the receive time.
    pub fn new(dids: &'a [String], encrypted_message: &RawValue) -> Self {
        let id = bson::oid::ObjectId::new().to_hex();
        let now = OffsetDateTime::now_utc();
        let received_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
        let payload = encrypted_message.get();
        Self {
            body: queued_message_json(&id, received_ms, payload),
            id,
            dids,
            size: payload.len(),
            received_ms,
        }
    }

    /// The record after its sequence number.
    pub fn record_tail(&self) -> String {
        record_tail(self.size, self.received_ms, self.dids, &self.body)
    }
}

/// `{"id":...,"receivedAt":...,"encryptedMessage":...}` with the payload verbatim.
pub fn queued_message_json(id: &str, received_ms: i64, encrypted_message: &str) -> String {
    let mut body = String::with_capacity(encrypted_message.len() + 80);
    body.push_str(r#"{"id":""#);
    body.push_str(id);
    body.push_str(r#"","receivedAt":""#);
    body.push_str(&iso_millis(received_ms));
    body.push_str(r#"","encryptedMessage":"#);
    body.push_str(encrypted_message);
    body.push('}');
    body
}

/// `2026-11-22T04:16:15.123Z` for a time in ms since the epoch.
pub fn iso_millis(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .format(&Iso8601::<ISO_MILLIS>)
        .expect("UTC time formats as ISO 8601")
}

/// A record after its sequence number: `<size>\t<received ms>[\t<did>...]\n<body>`; an empty
/// body makes a cold record (the body is in MongoDB).
pub fn record_tail(size: usize, received_ms: i64, dids: &[String], body: &str) -> String {
    let mut tail = String::with_capacity(body.len() + 32 + dids.len() * 64);
    tail.push_str(&size.to_string());
    tail.push('\t');
    tail.push_str(&received_ms.to_string());
    for did in dids {
        tail.push('\t');
        tail.push_str(did);
    }
    tail.push('\n');
    tail.push_str(body);
    tail
}

/// A record as the scripts store it, read back (by the mover).
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub size: usize,
    pub received_ms: i64,
    pub dids: Vec<&'a str>,
    /// The QueuedMessage JSON; empty for a cold record.
    pub body: &'a str,
}

impl<'a> Record<'a> {
    pub fn parse(record: &'a str) -> Option<Self> {
        let (header, body) = record.split_once('\n')?;
        let mut fields = header.split('\t');
        let _seq = fields.next()?;
        let size = fields.next()?.parse().ok()?;
        let received_ms = fields.next()?.parse().ok()?;
        Some(Self {
            size,
            received_ms,
            dids: fields.collect(),
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_queued_message_json_with_the_payload_verbatim() {
        let payload = RawValue::from_string(
            r#"{"protected":"p","iv":"i","ciphertext":"c","tag":"t"}"#.into(),
        )
        .unwrap();
        let dids = vec!["did:key:z6Mk".to_owned()];
        let message = NewMessage::new(&dids, &payload);
        let parsed: serde_json::Value = serde_json::from_str(&message.body).unwrap();
        assert_eq!(parsed["id"], message.id.as_str());
        assert_eq!(message.id.len(), 24);
        assert_eq!(parsed["encryptedMessage"]["ciphertext"], "c");
        let received_at = parsed["receivedAt"].as_str().unwrap();
        assert_eq!(
            received_at.len(),
            "2026-11-22T04:16:15.123Z".len(),
            "{received_at}"
        );
        assert!(received_at.ends_with('Z'));
        assert_eq!(message.size, payload.get().len());
        let record = format!("7\t{}", message.record_tail());
        assert_eq!(
            Record::parse(&record),
            Some(Record {
                size: message.size,
                received_ms: message.received_ms,
                dids: vec!["did:key:z6Mk"],
                body: &message.body,
            })
        );
        assert_eq!(iso_millis(message.received_ms), received_at);
    }

    #[test]
    fn a_cold_record_has_an_empty_body() {
        let dids = vec!["a".to_owned(), "b".to_owned()];
        let record = format!("-3\t{}", record_tail(12, 1_700_000_000_123, &dids, ""));
        let parsed = Record::parse(&record).unwrap();
        assert_eq!(parsed.dids, ["a", "b"]);
        assert_eq!(parsed.body, "");
        assert_eq!(iso_millis(parsed.received_ms), "2023-11-14T22:13:20.123Z");
    }
}
