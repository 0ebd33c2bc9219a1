//! Message Pickup Repository: a WebSocket JSON-RPC server on Redis for DIDComm mediators.
//!
//! The path of a call: [`ws`] accepts a socket and owns its framing, [`rpc`] decodes a frame and
//! dispatches it to one method in [`rpc::methods`], which touches [`store`] and replies. Events
//! for live sessions flow from [`store`] through [`live`] to the instance that owns the socket.
//! [`cold`] keeps the bodies of old messages in MongoDB and moves them there.

pub mod cold;
pub mod config;
pub mod http;
pub mod live;
pub mod push;
pub mod rpc;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod ws;
