//! Params decoding: every failure names the field and what was wrong with it, e.g.
//! `Invalid params: limit: invalid value: integer `-1`, expected u64`.

use std::ops::Deref;

use serde::de::{DeserializeOwned, Error};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::error::RpcError;

/// Decodes a method's params object. Absent params decode as `{}`, so that a missing required
/// field is reported by name.
pub fn decode<T: DeserializeOwned>(params: Option<&RawValue>) -> Result<T, RpcError> {
    let text = params.map_or("{}", RawValue::get);
    if !text.starts_with('{') {
        return Err(RpcError::invalid_params("params must be an object"));
    }
    let mut decoder = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut decoder).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner().to_string();
        // serde_json appends a position in the frame; the field name is more useful.
        let inner = inner.split(" at line ").next().unwrap_or_default();
        if path == "." {
            RpcError::invalid_params(inner)
        } else {
            RpcError::invalid_params(format!("{path}: {inner}"))
        }
    })
}

macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $max:expr, $check:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(String);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = String::deserialize(deserializer)?;
                if value.is_empty() {
                    return Err(D::Error::custom("must not be empty"));
                }
                if value.len() > $max {
                    return Err(D::Error::custom(format!("longer than {} bytes", $max)));
                }
                let allowed: fn(char) -> bool = $check;
                if !value.chars().all(allowed) {
                    return Err(D::Error::custom($what));
                }
                Ok(Self(value))
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl Deref for $name {
            type Target = String;
            fn deref(&self) -> &String {
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

/// Deserializes a list, refusing more than `N` entries.
#[derive(Debug)]
pub struct Bounded<T, const N: usize>(pub Vec<T>);

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Bounded<T, N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let items = Vec::<T>::deserialize(deserializer)?;
        if items.len() > N {
            return Err(D::Error::custom(format!("more than {N} entries")));
        }
        Ok(Self(items))
    }
}
