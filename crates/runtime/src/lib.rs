//! What every Videocall process runs on, whatever it does: configuration checks, telemetry,
//! shutdown, the ops endpoints, the database pool (feature `db`), auth, ICE credentials and
//! backoff. The lowest shared floor: it knows nothing of events, signals or calls.

#![forbid(unsafe_code)]

pub mod auth;
pub mod backoff;
pub mod config;
#[cfg(feature = "db")]
pub mod db;
pub mod ice;
pub mod ops;
pub mod service;
pub mod shutdown;
pub mod supervisor;
pub mod telemetry;
pub mod tokens;
