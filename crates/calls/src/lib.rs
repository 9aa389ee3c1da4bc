//! The calls application's shared floor: the call store (a call's record, its transactions, the
//! events they emit, the history query), recordings, quality samples, and what clients see of
//! them (views and the frames pushed to both parties). Services change calls only through here.

#![forbid(unsafe_code)]

pub mod desk;
pub mod events;
pub mod history;
pub mod metrics;
pub mod push;
pub mod quality_sample;
pub mod record;
pub mod recordings;
pub mod store;
pub mod transfer;
pub mod view;

pub use history::{HistoryPage, HistoryQuery};
pub use metrics::CallMetrics;
pub use record::{Actor, CallRecord, Initiated, NewCall, StoreError};
pub use store::CallStore;
