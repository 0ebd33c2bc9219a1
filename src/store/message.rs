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
    /// `{"id":...,"receivedAt":...,"encryptedMessage":...}`
    pub body: String,
}

impl<'a> NewMessage<'a> {
    /// A fresh id (ObjectId: 24 hex characters, unique across processes) and the receive time.
    pub fn new(dids: &'a [String], encrypted_message: &RawValue) -> Self {
        let id = bson::oid::ObjectId::new().to_hex();
        let received_at = OffsetDateTime::now_utc()
            .format(&Iso8601::<ISO_MILLIS>)
            .expect("UTC time formats as ISO 8601");
        let payload = encrypted_message.get();
        let mut body = String::with_capacity(payload.len() + 80);
        body.push_str(r#"{"id":""#);
        body.push_str(&id);
        body.push_str(r#"","receivedAt":""#);
        body.push_str(&received_at);
        body.push_str(r#"","encryptedMessage":"#);
        body.push_str(payload);
        body.push('}');
        Self {
            id,
            dids,
            size: payload.len(),
            body,
        }
    }

    /// The record after its sequence number: `<size>[\t<did>...]\n<body>`.
    pub fn record_tail(&self) -> String {
        let mut tail = String::with_capacity(self.body.len() + 16 + self.dids.len() * 64);
        tail.push_str(&self.size.to_string());
        for did in self.dids {
            tail.push('\t');
            tail.push_str(did);
        }
        tail.push('\n');
        tail.push_str(&self.body);
        tail
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
        assert!(
            message
                .record_tail()
                .starts_with(&format!("{}\tdid:key:z6Mk\n{{", message.size))
        );
    }
}
