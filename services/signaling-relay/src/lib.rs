//! signaling-relay: the WebSocket edge for browsers and agents. It authenticates before the
//! upgrade, forwards call control to the api-gateway over gRPC, relays WebRTC signals between the
//! two parties of a live call through Redis (any relay instance reaches any user), replays what a
//! late or reconnecting party missed, and enforces frame size, rate and connection limits.

#![forbid(unsafe_code)]

pub mod config;
pub mod connection;
pub mod frames;
pub mod metrics;
pub mod protocol;
pub mod startup;

pub use config::{RelayArgs, RelayConfig};
pub use startup::Application;
