//! Params decoding: every failure names the field and what was wrong with it, e.g.
//! `Invalid params: limit: invalid value: integer `-1`, expected u64`.

use serde::de::{DeserializeOwned, Error};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::error::RpcError;
pub use crate::model::{ConnectionId, Did, MessageId, SessionId};

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
