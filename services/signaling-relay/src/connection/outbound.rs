//! What of the user's channel goes out on this socket: signals not yet delivered (by seq), and
//! call states, which keep the connection's call cache current.

use std::borrow::Cow;

use videocall_domain::CallStatus;
use videocall_signaling::signals::RECORDER_PEER;

use super::{KnownCall, State};

impl State {
    /// Decides whether a frame from the user's channel goes out: drops signals already delivered
    /// (by seq) and keeps the call cache current from call_state frames.
    pub(super) fn filter_outbound(&mut self, frame: &str) -> Option<String> {
        // Borrowed where the JSON string has no escapes (ids and types never do).
        #[derive(serde::Deserialize)]
        struct Head<'a> {
            #[serde(rename = "type", borrow)]
            frame_type: Cow<'a, str>,
            seq: Option<u64>,
            #[serde(borrow)]
            call_id: Option<Cow<'a, str>>,
            #[serde(borrow)]
            from: Option<Cow<'a, str>>,
            call: Option<CallHead>,
            recording: Option<RecordingHead>,
        }
        #[derive(serde::Deserialize)]
        struct RecordingHead {
            status: String,
        }
        #[derive(serde::Deserialize)]
        struct CallHead {
            id: String,
            caller_id: String,
            callee_id: String,
            status: String,
        }
        let head: Head = serde_json::from_str(frame).ok()?;
        if head.frame_type == "recording"
            && let (Some(call_id), Some(recording)) = (head.call_id.as_deref(), head.recording.as_ref())
        {
            if let Some(known) = self.calls.get_mut(call_id) {
                known.recording = matches!(recording.status.as_str(), "starting" | "active");
            }
        } else if let (Some(seq), Some(call_id)) = (head.seq, head.call_id.as_deref()) {
            if !self.calls.contains_key(call_id) {
                let from = head.from.as_deref().unwrap_or_default();
                let known = KnownCall {
                    // The recorder is never the other party; the call's details come with GetCall.
                    other: if from == RECORDER_PEER { String::new() } else { from.to_owned() },
                    live: true,
                    status: CallStatus::Initiated,
                    caller: false,
                    last_seq: 0,
                    sent: false,
                    last_sent_seq: 0,
                    recording: false,
                };
                self.calls.insert(call_id.to_owned(), known);
            }
            let known = self.calls.get_mut(call_id)?;
            if seq <= known.last_seq {
                return None;
            }
            known.last_seq = seq;
        } else if head.frame_type == "call_state"
            && let Some(call) = head.call
        {
            let caller = call.caller_id == self.user_id;
            let party = caller || call.callee_id == self.user_id;
            let other = if caller { call.callee_id } else { call.caller_id };
            let status: CallStatus = call.status.parse().unwrap_or(CallStatus::Ended);
            // An agent a desk call was taken back from (back to the queue) is no party of it.
            let live = !status.is_terminal() && party;
            let known = self.calls.entry(call.id).or_insert_with(|| KnownCall::new(&other, status, caller, false));
            known.other = other;
            known.live = live;
            known.status = status;
            known.caller = caller;
        }
        Some(frame.to_owned())
    }
}
