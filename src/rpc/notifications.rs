//! Frames the server sends unasked: `messagesReceived`, pushed to the socket that holds a live
//! session.

use crate::live::Delivery;

/// `{"jsonrpc":"2.0","method":"messagesReceived","params":{"connectionId":..,"messages":[..],"id":""}}`
pub fn messages_received(delivery: &Delivery) -> String {
    // The client's own id: a socket holds sessions of its own tenant only.
    let (_, client_id) = crate::model::split_tenant(&delivery.connection_id);
    let connection_id = serde_json::to_string(client_id).expect("a string serializes");
    let size: usize = delivery
        .messages
        .iter()
        .map(|message| message.body.len() + 1)
        .sum();
    let mut frame = String::with_capacity(size + connection_id.len() + 96);
    frame.push_str(r#"{"jsonrpc":"2.0","method":"messagesReceived","params":{"connectionId":"#);
    frame.push_str(&connection_id);
    frame.push_str(r#","messages":["#);
    for (i, message) in delivery.messages.iter().enumerate() {
        if i > 0 {
            frame.push(',');
        }
        frame.push_str(&message.body);
    }
    frame.push_str(r#"],"id":""}}"#);
    frame
}
