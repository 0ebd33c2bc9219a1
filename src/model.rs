//! The domain's values, shared by the protocol, the message service and the migration: checked
//! ids and DIDs, and a message as the client receives it (QueuedMessage JSON, built once when it
//! is added and returned byte for byte).

use std::ops::Deref;

use serde::de::Error;
use serde::{Deserialize, Deserializer};
use time::OffsetDateTime;
use time::format_description::well_known::iso8601::{
    Config, EncodedConfig, Iso8601, TimePrecision,
};

macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $max:expr, $check:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            /// Checks a value the way a client's would be checked.
            pub fn parse(value: String) -> Result<Self, String> {
                if value.is_empty() {
                    return Err("must not be empty".into());
                }
                if value.len() > $max {
                    return Err(format!("longer than {} bytes", $max));
                }
                let allowed: fn(char) -> bool = $check;
                if !value.chars().all(allowed) {
                    return Err($what.into());
                }
                Ok(Self(value))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                Self::parse(String::deserialize(deserializer)?).map_err(D::Error::custom)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
    };
}

checked_string!(
    /// Part of every Redis key of the connection, inside its hash tag: no braces.
    ConnectionId,
    256,
    |c| !c.is_control() && c != '{' && c != '}',
    "must not contain braces or control characters"
);

/// Between a tenant and a client's connection id, in the id the server keeps (a client's own id
/// cannot hold it: it has no control characters), so two tenants' connections never meet.
pub const TENANT_SEPARATOR: char = '\u{1f}';

impl ConnectionId {
    /// This client id within `tenant`.
    pub fn in_tenant(&self, tenant: &str) -> Self {
        Self(format!("{tenant}{TENANT_SEPARATOR}{}", self.0))
    }
}

/// The tenant (if any) and the client's own id of a connection id as the server keeps it.
pub fn split_tenant(connection_id: &str) -> (Option<&str>, &str) {
    match connection_id.split_once(TENANT_SEPARATOR) {
        Some((tenant, id)) => (Some(tenant), id),
        None => (None, connection_id),
    }
}

checked_string!(
    /// A recipient DID (usually `did:key:...`).
    Did,
    1024,
    |c| !c.is_control() && !c.is_whitespace(),
    "must be a DID: no whitespace or control characters"
);

checked_string!(
    /// A message id as returned by addMessage (or imported from the Node MPR).
    MessageId,
    256,
    |c| !c.is_control(),
    "must not contain control characters"
);

checked_string!(
    /// The mediator's id for a live session.
    SessionId,
    256,
    |c| !c.is_control(),
    "must not contain control characters"
);

/// `2026-11-22T04:16:15.123Z`, as JavaScript's `Date.toISOString()` writes it.
const ISO_MILLIS: EncodedConfig = Config::DEFAULT
    .set_time_precision(TimePrecision::Second {
        decimal_digits: std::num::NonZeroU8::new(3),
    })
    .encode();

/// A message about to be queued.
pub struct NewMessage {
    pub id: String,
    pub dids: Vec<String>,
    /// Size of `encryptedMessage` in bytes: what `limitBytes` counts.
    pub size: usize,
    /// Receive time, ms since the epoch: what the mover and retention age messages by.
    pub received_ms: i64,
    /// `{"id":...,"receivedAt":...,"encryptedMessage":...}`
    pub body: String,
}

impl NewMessage {
    /// A fresh id (ObjectId: 24 hex characters, unique across processes) and the receive time.
    pub fn new(dids: Vec<Did>, encrypted_message: &str) -> Self {
        let id = bson::oid::ObjectId::new().to_hex();
        let received_ms = now_ms();
        Self {
            body: queued_message_json(&id, received_ms, encrypted_message),
            id,
            dids: dids.into_iter().map(String::from).collect(),
            size: encrypted_message.len(),
            received_ms,
        }
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

/// This host's clock, ms since the epoch.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_queued_message_json_with_the_payload_verbatim() {
        let payload = r#"{"protected":"p","iv":"i","ciphertext":"c","tag":"t"}"#;
        let dids = vec![Did::parse("did:key:z6Mk".into()).unwrap()];
        let message = NewMessage::new(dids, payload);
        let parsed: serde_json::Value = serde_json::from_str(&message.body).unwrap();
        assert_eq!(parsed["id"], message.id.as_str());
        assert_eq!(message.id.len(), 24);
        assert_eq!(parsed["encryptedMessage"]["ciphertext"], "c");
        let received_at = parsed["receivedAt"].as_str().unwrap();
        assert_eq!(received_at.len(), "2026-11-22T04:16:15.123Z".len());
        assert!(received_at.ends_with('Z'));
        assert_eq!(message.size, payload.len());
        assert_eq!(iso_millis(message.received_ms), received_at);
    }

    #[test]
    fn checked_strings_name_what_is_wrong() {
        assert!(
            ConnectionId::parse("a{b}".into())
                .unwrap_err()
                .contains("braces")
        );
        assert!(
            Did::parse("did key".into())
                .unwrap_err()
                .contains("whitespace")
        );
        assert!(
            MessageId::parse(String::new())
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            SessionId::parse("x".repeat(300))
                .unwrap_err()
                .contains("longer")
        );
        assert_eq!(&*Did::parse("did:key:z".into()).unwrap(), "did:key:z");
    }
}
