//! What the Videocall services share at runtime. Each module is one concern; services compose them.

#![forbid(unsafe_code)]

pub mod amqp;
pub mod auth;
pub mod backoff;
pub mod call_store;
pub mod config;
pub mod db;
pub mod events;
pub mod ice;
pub mod inbox_worker;
pub mod local_events;
pub mod local_signal_bus;
pub mod ops;
pub mod outbox_relay;
pub mod quality_sample;
pub mod recordings;
pub mod redis_keys;
pub mod shutdown;
pub mod signal_bus;
pub mod signals;
pub mod telemetry;
