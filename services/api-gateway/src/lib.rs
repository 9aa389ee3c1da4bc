//! api-gateway: the gRPC front of the call lifecycle. It validates and authorises commands, applies
//! them through the call store (state + audit + outbox in one transaction), mints ICE servers, and
//! runs the outbox relay that publishes the events to RabbitMQ.

#![forbid(unsafe_code)]

pub mod config;
pub mod convert;
pub mod deadline;
pub mod desk;
pub mod error;
pub mod health;
pub mod policy;
pub mod quality;
pub mod recording;
pub mod service;
pub mod signaling;
pub mod startup;
pub mod transfer;

pub use config::{DeskTimeouts, GatewayArgs, GatewayConfig, RingTimeouts};
pub use policy::CallPolicy;
pub use startup::Application;
