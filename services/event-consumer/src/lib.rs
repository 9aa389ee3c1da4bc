//! event-consumer: consumes `UserOffline` and `SupportTicketCreated` from upstream exchanges.
//! A user who went offline has their live calls closed (ended `user_offline`, or missed when they
//! were being called); a new support ticket becomes a video support offer, announced on the
//! customer's Redis channel. Each message is applied at most once (its id is recorded in
//! `processed_messages` in the effect's transaction) and acknowledged only after the commit;
//! malformed ones go to a dead-letter queue with the reason; transient faults are retried a
//! bounded number of times.

#![forbid(unsafe_code)]

pub mod config;
pub mod consumer;
pub mod effects;
pub mod messages;
pub mod startup;

pub use config::{ConsumerArgs, ConsumerConfig, QueueBinding};
pub use effects::{Effects, Kind, Outcome};
pub use startup::Application;
