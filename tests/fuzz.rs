//! Fuzzing the server's input over one socket of one real server: arbitrary text, arbitrary
//! JSON, and JSON-RPC requests and batches of every method with random params. The server
//! must never panic or drop the socket, and every request with an id gets exactly one
//! well-formed reply (JSON-RPC 2.0); notifications get none.
//!
//! `MPR_FUZZ_CASES` sets the number of frames (default 200, a few seconds); e.g.
//! `MPR_FUZZ_CASES=20000 cargo test --release --test fuzz` for a longer run.

mod support;

use std::cell::RefCell;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};
use support::{Client, Incoming, Redis, Server};

use mpr::rpc::methods::METHODS;

/// Every member any method's params has.
const FIELDS: [&str; 10] = [
    "connectionId",
    "recipientDids",
    "recipientDid",
    "payload",
    "pushNotificationToken",
    "limit",
    "limitBytes",
    "deleteMessages",
    "messageIds",
    "sessionId",
];

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        // Strings the server gives a meaning to, so random shapes hit them too.
        prop::sample::select(
            &[
                "c-1",
                "did:key:z6MkA",
                "messagesReceived",
                "fcm",
                "2.0",
                "ping",
                ""
            ][..]
        )
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Params with the members methods read, each valid-looking or random.
fn params() -> impl Strategy<Value = Value> {
    let member = prop_oneof![
        any_json(),
        prop::sample::select(&["c-1", "c-2", "", "{x}", "did:key:z6MkA"][..]).prop_map(Value::from),
        Just(json!(["did:key:z6MkA"])),
        Just(json!({"protected": "p", "iv": "i", "ciphertext": "c", "tag": "t"})),
        Just(json!({"type": "fcm", "token": "t"})),
        (0u64..5).prop_map(Value::from),
    ];
    let object = prop::collection::btree_map(prop::sample::select(&FIELDS[..]), member, 0..6)
        .prop_map(|map| Value::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
    prop_oneof![4 => object, 1 => any_json(), 1 => Just(json!(["messagesReceived"]))]
}

/// How a request carries its id: the value is made unique when the case runs.
#[derive(Debug, Clone)]
enum Id {
    Absent,
    Number,
    Text,
    Null,
    /// Not a string, number or null: answered with id null.
    Invalid(Value),
}

fn id() -> impl Strategy<Value = Id> {
    prop_oneof![
        1 => Just(Id::Absent),
        3 => Just(Id::Number),
        2 => Just(Id::Text),
        1 => Just(Id::Null),
        1 => prop_oneof![Just(json!(true)), Just(json!([1])), Just(json!({}))].prop_map(Id::Invalid),
    ]
}

#[derive(Debug, Clone)]
struct Request {
    jsonrpc: Option<Value>,
    method: Option<Value>,
    params: Option<Value>,
    id: Id,
}

fn request() -> impl Strategy<Value = Request> {
    let jsonrpc =
        prop_oneof![8 => Just(Some(json!("2.0"))), 1 => Just(None), 1 => any_json().prop_map(Some)];
    let method = prop_oneof![
        8 => prop::sample::select(&METHODS[..]).prop_map(|m| Some(json!(m))),
        1 => ".{0,10}".prop_map(|m| Some(json!(m))),
        1 => prop::option::of(any_json()),
    ];
    (jsonrpc, method, prop::option::of(params()), id()).prop_map(|(jsonrpc, method, params, id)| {
        Request {
            jsonrpc,
            method,
            params,
            id,
        }
    })
}

#[derive(Debug, Clone)]
enum Frame {
    Text(String),
    Json(Value),
    Request(Request),
    Batch(Vec<Item>),
}

#[derive(Debug, Clone)]
enum Item {
    Request(Request),
    Json(Value),
    /// A request's members as an array, in the envelope's order: not a request.
    Array(Request),
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        6 => request().prop_map(Item::Request),
        1 => any_json().prop_map(Item::Json),
        1 => request().prop_map(Item::Array),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        1 => ".{0,40}".prop_map(Frame::Text),
        1 => any_json().prop_map(Frame::Json),
        6 => request().prop_map(Frame::Request),
        2 => prop::collection::vec(item(), 1..5).prop_map(Frame::Batch),
    ]
}

/// What the server must answer to one frame.
enum Expected {
    Nothing,
    /// One reply object with this id.
    Reply(Value),
    /// One array of replies with these ids, in any order.
    Batch(Vec<Value>),
}

/// The text of a frame (with fresh ids), and the reply it must get.
fn encode(frame: &Frame, next_id: &mut u64) -> (String, Expected) {
    match frame {
        Frame::Text(text) => (text.clone(), expected_for_text(text)),
        Frame::Json(value) => (value.to_string(), expected_for_text(&value.to_string())),
        Frame::Request(request) => {
            let value = request_json(request, next_id);
            let text = value.to_string();
            (text, expected_for_value(&value))
        }
        Frame::Batch(items) => {
            let items: Vec<Value> = (items.iter())
                .map(|item| match item {
                    Item::Request(request) => request_json(request, next_id),
                    Item::Json(value) => value.clone(),
                    Item::Array(request) => {
                        let members = request_json(request, next_id);
                        let order = ["jsonrpc", "method", "params", "id"];
                        Value::Array(
                            order
                                .iter()
                                .filter_map(|k| members.get(*k).cloned())
                                .collect(),
                        )
                    }
                })
                .collect();
            let value = Value::Array(items);
            let text = value.to_string();
            (text, expected_for_value(&value))
        }
    }
}

fn request_json(request: &Request, next_id: &mut u64) -> Value {
    let mut object = Map::new();
    let members = [
        ("jsonrpc", request.jsonrpc.clone()),
        ("method", request.method.clone()),
        ("params", request.params.clone()),
    ];
    for (name, value) in members {
        if let Some(value) = value {
            object.insert(name.to_owned(), value);
        }
    }
    *next_id += 1;
    let id = match &request.id {
        Id::Absent => None,
        Id::Number => Some(json!(*next_id)),
        Id::Text => Some(json!(format!("id-{next_id}"))),
        Id::Null => Some(Value::Null),
        Id::Invalid(value) => Some(value.clone()),
    };
    if let Some(id) = id {
        object.insert("id".to_owned(), id);
    }
    Value::Object(object)
}

fn expected_for_text(text: &str) -> Expected {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => expected_for_value(&value),
        Err(_) => Expected::Reply(Value::Null),
    }
}

fn expected_for_value(value: &Value) -> Expected {
    match value {
        Value::Array(items) if items.is_empty() => Expected::Reply(Value::Null),
        Value::Array(items) => {
            let ids: Vec<Value> = items.iter().filter_map(reply_id).collect();
            if ids.is_empty() {
                Expected::Nothing
            } else {
                Expected::Batch(ids)
            }
        }
        other => reply_id(other).map_or(Expected::Nothing, Expected::Reply),
    }
}

/// The id of the reply to one request, None for a notification that gets none.
fn reply_id(request: &Value) -> Option<Value> {
    let Some(object) = request.as_object() else {
        return Some(Value::Null);
    };
    match object.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id.clone()),
        Some(_) => Some(Value::Null),
        None => {
            let valid = object.get("jsonrpc") == Some(&json!("2.0"))
                && object.get("method").is_some_and(Value::is_string);
            (!valid).then_some(Value::Null)
        }
    }
}

fn check_reply(reply: &Value) -> Result<(), String> {
    let object = reply.as_object().ok_or("a reply is not an object")?;
    if object.get("jsonrpc") != Some(&json!("2.0")) {
        return Err("jsonrpc is not \"2.0\"".into());
    }
    if !object.contains_key("id") {
        return Err("no id".into());
    }
    match (object.get("result"), object.get("error")) {
        (Some(_), None) => {}
        (None, Some(error)) => {
            let well_formed = error["code"].is_i64()
                && error["message"].is_string()
                && error.as_object().is_some_and(|e| e.len() == 2);
            if !well_formed {
                return Err(format!("malformed error {error}"));
            }
        }
        _ => return Err("not exactly one of result and error".into()),
    }
    if object.len() != 3 {
        return Err("members other than jsonrpc, result or error, id".into());
    }
    Ok(())
}

/// The next frame that is not a push; an error if none comes or the socket closed.
async fn next_reply(client: &mut Client) -> Result<Value, String> {
    loop {
        match client.next_frame(Duration::from_secs(10)).await {
            Some(Incoming::Text(text)) => {
                let frame: Value =
                    serde_json::from_str(&text).map_err(|e| format!("not JSON ({e}): {text}"))?;
                if frame.get("method").is_none() {
                    return Ok(frame);
                }
            }
            other => return Err(format!("no reply: {other:?}")),
        }
    }
}

async fn run_case(client: &mut Client, text: String, expected: Expected) -> Result<(), String> {
    client.send_raw(text);
    match expected {
        Expected::Nothing => Ok(()),
        Expected::Reply(id) => {
            let reply = next_reply(client).await?;
            check_reply(&reply).map_err(|e| format!("{e}: {reply}"))?;
            if reply["id"] != id {
                return Err(format!("expected id {id}, got {reply}"));
            }
            Ok(())
        }
        Expected::Batch(mut ids) => {
            let reply = next_reply(client).await?;
            let replies = reply
                .as_array()
                .ok_or(format!("not a batch reply: {reply}"))?;
            for item in replies {
                check_reply(item).map_err(|e| format!("{e}: {item}"))?;
                let i = (ids.iter().position(|id| *id == item["id"]))
                    .ok_or(format!("unexpected reply {item} in {reply}"))?;
                ids.remove(i);
            }
            if !ids.is_empty() {
                return Err(format!("no replies for ids {ids:?} in {reply}"));
            }
            Ok(())
        }
    }
}

fn cases() -> u32 {
    std::env::var("MPR_FUZZ_CASES").map_or(200, |n| n.parse().expect("a number"))
}

fn json_depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

proptest! {
    #![proptest_config(Config { cases: cases(), failure_persistence: None, ..Config::default() })]

    /// addMessage's measure of a payload: its depth, and a BSON size never below the size of
    /// the document the mover makes of it.
    #[test]
    fn the_payload_measure_bounds_its_bson(members in prop::collection::btree_map(".{0,6}", any_json(), 0..6)) {
        let payload = Value::Object(members.into_iter().collect());
        let json = payload.to_string();
        let shape = mpr::payload::measure(&json, 1000);
        prop_assert_eq!(shape.depth, json_depth(&payload));
        // What does not convert (a u64 past i64, a NUL in a key) is the mover's to refuse.
        let bson = serde_json::from_str::<bson::Document>(&json).ok().and_then(|d| d.to_vec().ok());
        if let Some(bson) = bson {
            prop_assert!(shape.bson_bytes >= bson.len() as u64, "{} < {}", shape.bson_bytes, bson.len());
        }
    }
}

#[test]
fn every_frame_gets_exactly_the_replies_json_rpc_asks_for() {
    let cases = cases();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let redis = Redis::start();
    let server = runtime.block_on(Server::start(&redis, &[]));
    let client = RefCell::new(runtime.block_on(Client::connect(&server.url())));
    let next_id = RefCell::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 500,
        ..Config::default()
    });
    let outcome = runner.run(&frame(), |frame| {
        let (text, expected) = encode(&frame, &mut next_id.borrow_mut());
        let mut client = client.borrow_mut();
        runtime
            .block_on(run_case(&mut client, text.clone(), expected))
            .map_err(|e| TestCaseError::fail(format!("{e}\nframe: {text}")))
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    // Nothing was left unanswered or answered twice: the next reply is the last request's.
    let mut client = client.into_inner();
    runtime
        .block_on(run_case(
            &mut client,
            r#"{"jsonrpc":"2.0","method":"ping","id":"last"}"#.into(),
            Expected::Reply(json!("last")),
        ))
        .unwrap();
}
