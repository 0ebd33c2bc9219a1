//! Per-socket order: calls from one socket on one `connectionId` take effect in the order they
//! arrived, while calls on other connections run concurrently. The read loop asks for a
//! [`Turn`] as it reads each frame (so the order is the socket's, not the scheduler's); the
//! call waits for the turns before it on its connections, and its own turn ends when it is
//! dropped. Only connections with a call in progress have an entry, so memory stays bounded by
//! `WS_MAX_CALLS_PER_SOCKET`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The order of one socket's calls, by connection.
#[derive(Default)]
pub struct Sequencer {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    next: u64,
    /// The latest call of each connection still in progress: its number, and its end.
    latest: HashMap<Arc<str>, (u64, CancellationToken)>,
}

/// A frame's place in the order; the frame's calls run once `ready` returns, and the next call
/// on its connections may start once this is dropped.
pub struct Turn {
    state: Arc<Mutex<State>>,
    number: u64,
    connections: Vec<Arc<str>>,
    after: Vec<CancellationToken>,
    _done: Option<DropGuard>,
}

impl Sequencer {
    /// Takes the frame's place behind the calls already read on the connections it names.
    /// Must be called in the order frames are read.
    pub fn turn(&self, frame: &str) -> Turn {
        let names = connection_ids(frame);
        let mut state = self.state.lock().expect("sequencer lock");
        state.next += 1;
        let number = state.next;
        let mut turn = Turn {
            state: self.state.clone(),
            number,
            connections: Vec::with_capacity(names.len()),
            after: Vec::new(),
            _done: None,
        };
        if names.is_empty() {
            return turn;
        }
        let done = CancellationToken::new();
        for name in names {
            if turn.connections.iter().any(|held| **held == *name) {
                continue; // a batch naming a connection twice waits for it once
            }
            let name: Arc<str> = Arc::from(name);
            let previous = state.latest.insert(name.clone(), (number, done.clone()));
            turn.after.extend(previous.map(|(_, end)| end));
            turn.connections.push(name);
        }
        turn._done = Some(done.drop_guard());
        turn
    }
}

impl Turn {
    /// Waits until the calls read before this one on its connections have finished.
    pub async fn ready(&mut self) {
        for previous in self.after.drain(..) {
            previous.cancelled().await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.connections.is_empty() {
            return;
        }
        let mut state = self.state.lock().expect("sequencer lock");
        for name in &self.connections {
            if state
                .latest
                .get(name)
                .is_some_and(|(n, _)| *n == self.number)
            {
                state.latest.remove(name);
            }
        }
        // `_done` is dropped after this: the calls waiting on this one start.
    }
}

/// The `connectionId`s a frame's calls name (one for a request, any number for a batch);
/// none when the frame is not JSON or its params name no connection. Only `connectionId` is
/// decoded; everything else is skipped.
fn connection_ids(frame: &str) -> Vec<Cow<'_, str>> {
    if frame.trim_start().starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(frame).unwrap_or_default();
        items
            .into_iter()
            .filter_map(|item| connection_id(item.get()))
            .collect()
    } else {
        connection_id(frame).into_iter().collect()
    }
}

fn connection_id(request: &str) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Request<'a> {
        #[serde(borrow)]
        params: Option<Params<'a>>,
    }
    let request: Request = serde_json::from_str(request).ok()?;
    request.params?.0
}

/// `params.connectionId` when params is an object (params of another shape, or a connectionId
/// that is not a string, fail to decode: the call names no connection).
struct Params<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Params<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ParamsVisitor)
    }
}

struct ParamsVisitor;

impl<'de> Visitor<'de> for ParamsVisitor {
    type Value = Params<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("params")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(Text(key)) = map.next_key()? {
            if key == "connectionId" {
                found = Some(map.next_value::<Text>()?.0);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Params(found))
    }
}

/// A JSON string, borrowed from the frame unless it has escapes (serde's own `Cow` always
/// copies).
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Borrowed(text)))
    }

    fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Owned(text.to_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_are_read_from_requests_and_batches() {
        let single = r#"{"jsonrpc":"2.0","method":"addMessage","params":{"payload":{"a":[1,{"connectionId":"no"}]},"connectionId":"c\"1"},"id":1}"#;
        assert_eq!(connection_ids(single), ["c\"1"]);
        let batch = r#"[{"params":{"connectionId":"a"}},5,{"params":["x"]},{"params":{"connectionId":7}},{"params":{"connectionId":"b"}}]"#;
        assert_eq!(connection_ids(batch), ["a", "b"]);
        assert!(connection_ids(r#"{"method":"ping","id":1}"#).is_empty());
        assert!(connection_ids("not json").is_empty());
    }

    #[tokio::test]
    async fn a_call_waits_for_the_earlier_call_on_its_connection_only() {
        let sequencer = Sequencer::default();
        let first = sequencer.turn(r#"{"params":{"connectionId":"a"}}"#);
        let mut second = sequencer.turn(r#"{"params":{"connectionId":"a"}}"#);
        let mut other = sequencer.turn(r#"{"params":{"connectionId":"b"}}"#);
        other.ready().await;
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), second.ready());
        assert!(waiting.await.is_err(), "second ran before the first ended");
        drop(first);
        second.ready().await;
        drop((second, other));
        assert!(sequencer.state.lock().unwrap().latest.is_empty());
    }
}
