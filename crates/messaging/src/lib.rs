//! How the services exchange domain events: AMQP sessions, the transactional outbox and its
//! relay, the inbox worker that consumes a queue, the in-process event bus of the standalone
//! mode and the CloudEvents envelope. Knows nothing of calls: events arrive as bytes and leave as
//! rows someone else wrote.

#![forbid(unsafe_code)]

pub mod amqp;
pub mod cloud_event;
pub mod consumer_metrics;
pub mod inbound;
pub mod inbox_worker;
pub mod local_events;
pub mod outbox;
pub mod outbox_relay;

/// W3C trace context helpers (re-exported for crates that carry events but not the runtime).
pub use videocall_runtime::telemetry::trace_context;
