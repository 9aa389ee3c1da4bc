//! Telling both parties of a call what changed, over the signal bus: best effort, each push
//! bounded to 3 s and a failure logged — a client that missed a frame sees the state on its next
//! read, and the relay resends live calls when a socket connects.

use serde::Serialize;
use videocall_signaling::signal_bus::{BusError, SignalBus};

use crate::{
    record::CallRecord,
    recordings::{RecordingFrame, RecordingView},
    view::CallStateFrame,
};

/// A `call_state` frame with the call as it is now.
pub async fn call_state(bus: &SignalBus, call: &CallRecord) {
    to_parties(bus, call, &CallStateFrame::new(call)).await;
}

/// A `recording` frame: the call's recording changed.
pub async fn recording(bus: &SignalBus, call: &CallRecord, recording: &RecordingView) {
    to_parties(bus, call, &RecordingFrame::new(recording)).await;
}

async fn to_parties<T: Serialize>(bus: &SignalBus, call: &CallRecord, frame: &T) {
    match bus.push_to_parties(&call.parties(), frame).await {
        Ok(()) => {}
        Err(BusError::TimedOut) => {
            tracing::warn!(call_id = %call.id, "frame not pushed to the parties (signal bus timed out)")
        }
        Err(error) => tracing::warn!(%error, call_id = %call.id, "frame not pushed to the parties"),
    }
}
