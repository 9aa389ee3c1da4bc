//! How signals and server frames reach the parties of a call: the signal bus (Redis or
//! in-process), its keys, the subscriber hub, and the rules a signal must pass. Frames are any
//! serialisable value addressed to users: this crate knows nothing of calls' storage.

#![forbid(unsafe_code)]

pub mod redis_keys;
pub mod signal_bus;
pub mod signals;
