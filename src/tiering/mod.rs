//! Tiering: the mover, which visits connections due in the visit index, applies retention
//! (`MESSAGE_TTL`, with or without MongoDB) and moves messages older than the threshold to the
//! cold tier (MongoDB). The Redis side of it is in `store` (`tiering.rs` and its functions).

pub mod mover;

pub use mover::Mover;
