//! Message Pickup Repository: a WebSocket JSON-RPC server on Redis for DIDComm mediators.
//!
//! The path of a call: [`ws`] accepts a socket and owns its framing, [`rpc`] decodes a frame and
//! dispatches it to one method in [`rpc::methods`], which calls the message service
//! ([`messages`]); the service uses [`store`], the only module that talks to Redis, and [`cold`]
//! (MongoDB). Messages for live sessions flow from [`store`] through [`live`] to whichever peer
//! holds the session. [`tiering`] moves old messages to MongoDB and applies retention;
//! [`migrate`] imports a Node MPR's data; [`socketdock`] serves agents whose
//! sockets SocketDock holds. [`config`], [`model`], [`payload`] and [`progress`] are leaves.

pub mod auth;
pub mod cold;
pub mod config;
pub mod http;
pub mod live;
pub mod messages;
pub mod migrate;
pub mod model;
pub mod payload;
pub mod progress;
pub mod push;
pub mod rpc;
pub mod server;
pub mod socketdock;
pub mod store;
pub mod telemetry;
pub mod tiering;
pub mod tls;
pub mod ws;
