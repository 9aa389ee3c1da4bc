//! Pure rules of a 1-on-1 call: what states exist, which command may move a call where, and who may
//! issue it. No I/O here: the database, gRPC and the broker live at the edges.

#![forbid(unsafe_code)]

mod call;
mod limits;
mod transition;

pub use call::{CallStatus, CallType, EndReason, ParseEnumError, Party};
pub use limits::{
    MAX_METADATA_ENTRIES, MAX_METADATA_KEY_BYTES, MAX_METADATA_VALUE_BYTES, MAX_REQUEST_ID_BYTES, MetadataError,
    RESERVED_METADATA_KEYS, validate_metadata,
};
pub use transition::{Command, Decision, Effect, Routing, decide, decide_for};
