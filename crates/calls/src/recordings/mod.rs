//! A call's optional server-side recording: the consent of both parties, the claim of a recorder
//! worker (under a lease it renews), and the status it moves through —
//! `requested` (one party asked; waiting for the other's consent) → `starting` (both consented; a
//! recorder joins once the call is active) → `active` (media of both parties reaches the recorder)
//! → `complete` | `failed`. Every change is a conditional UPDATE on the row's version; the status
//! changes the outside world cares about (active, complete, failed) write their event to the outbox
//! in the same transaction.

mod store;

pub use store::RecordingStore;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use videocall_entities::recordings;

use crate::record::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordingStatus {
    Requested,
    Starting,
    Active,
    Complete,
    Failed,
}

impl RecordingStatus {
    pub const ALL: [RecordingStatus; 5] = [
        RecordingStatus::Requested,
        RecordingStatus::Starting,
        RecordingStatus::Active,
        RecordingStatus::Complete,
        RecordingStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RecordingStatus::Requested => "requested",
            RecordingStatus::Starting => "starting",
            RecordingStatus::Active => "active",
            RecordingStatus::Complete => "complete",
            RecordingStatus::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, RecordingStatus::Complete | RecordingStatus::Failed)
    }

    /// Recording or about to: the parties' clients keep a recording leg open.
    pub fn is_running(self) -> bool {
        matches!(self, RecordingStatus::Starting | RecordingStatus::Active)
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// One file the recorder wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedFile {
    /// File name inside the recording's directory, e.g. `caller-video.ivf`.
    pub name: String,
    /// The party whose track it holds: `caller` | `callee`.
    pub party: String,
    /// `audio` | `video`
    pub kind: String,
    /// `vp8` | `opus`
    pub codec: String,
    pub frames: u64,
    pub duration_ms: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// A recording as clients and events see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordingView {
    pub id: Uuid,
    pub call_id: Uuid,
    pub status: RecordingStatus,
    pub caller_consent: bool,
    pub callee_consent: bool,
    pub requested_by: String,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_ms: i64,
    pub size_bytes: i64,
    pub sha256: String,
    pub files: Vec<RecordedFile>,
    pub error: Option<String>,
    pub version: i64,
    #[serde(skip)]
    pub stop_requested: bool,
    #[serde(skip)]
    pub worker_id: Option<String>,
}

impl RecordingView {
    pub fn from_model(m: recordings::Model) -> Result<Self, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt { id: m.call_id, detail };
        let status =
            RecordingStatus::parse(&m.status).ok_or_else(|| corrupt(format!("recording status {}", m.status)))?;
        let files = serde_json::from_value(m.files.clone()).map_err(|e| corrupt(format!("recording files: {e}")))?;
        Ok(Self {
            id: m.id,
            call_id: m.call_id,
            status,
            caller_consent: m.caller_consent,
            callee_consent: m.callee_consent,
            requested_by: m.requested_by,
            started_at: m.started_at,
            ended_at: m.ended_at,
            duration_ms: m.duration_ms,
            size_bytes: m.size_bytes,
            sha256: m.sha256,
            files,
            error: m.error,
            version: m.version,
            stop_requested: m.stop_requested,
            worker_id: m.worker_id,
        })
    }
}

/// The frame both parties get when their call's recording changes:
/// `{"type":"recording","call_id":"…","recording":{…}}`.
#[derive(Debug, Clone, Serialize)]
pub struct RecordingFrame<'a> {
    #[serde(rename = "type")]
    pub frame_type: &'static str,
    pub call_id: Uuid,
    pub recording: &'a RecordingView,
}

impl<'a> RecordingFrame<'a> {
    pub fn new(recording: &'a RecordingView) -> Self {
        Self { frame_type: "recording", call_id: recording.call_id, recording }
    }
}

/// CloudEvents type and routing key of the event a recording entering `status` emits, if any.
pub fn recording_event_names(status: RecordingStatus) -> Option<(&'static str, &'static str)> {
    match status {
        RecordingStatus::Active => Some(("RecordingStarted", "recording.started")),
        RecordingStatus::Complete => Some(("RecordingCompleted", "recording.completed")),
        RecordingStatus::Failed => Some(("RecordingFailed", "recording.failed")),
        RecordingStatus::Requested | RecordingStatus::Starting => None,
    }
}

/// How a recorder ends a recording it owns.
#[derive(Debug, Clone)]
pub enum Outcome {
    Complete { files: Vec<RecordedFile>, duration_ms: i64, reason: Option<String> },
    Failed { files: Vec<RecordedFile>, error: String },
}

/// The checksum of a recording: SHA-256 over `<sha256>  <name>\n` of each file, in name order
/// (what `sha256sum` prints for the directory's files, sorted).
pub fn manifest_sha256(files: &[RecordedFile]) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&RecordedFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut hasher = Sha256::new();
    for f in sorted {
        hasher.update(format!("{}  {}\n", f.sha256, f.name));
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, sha: &str) -> RecordedFile {
        RecordedFile {
            name: name.into(),
            party: "caller".into(),
            kind: "video".into(),
            codec: "vp8".into(),
            frames: 1,
            duration_ms: 1,
            bytes: 1,
            sha256: sha.into(),
        }
    }

    #[test]
    fn manifest_checksum_is_sha256sum_output_in_name_order() {
        use sha2::{Digest, Sha256};
        let a = file("b.ivf", &"1".repeat(64));
        let b = file("a.ogg", &"2".repeat(64));
        let expected: String = Sha256::digest(format!("{}  a.ogg\n{}  b.ivf\n", "2".repeat(64), "1".repeat(64)))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(manifest_sha256(&[a.clone(), b.clone()]), expected);
        assert_eq!(manifest_sha256(&[b, a]), expected, "order of the list does not matter");
    }

    #[test]
    fn only_visible_status_changes_emit_events() {
        assert_eq!(recording_event_names(RecordingStatus::Requested), None);
        assert_eq!(recording_event_names(RecordingStatus::Starting), None);
        assert_eq!(recording_event_names(RecordingStatus::Active), Some(("RecordingStarted", "recording.started")));
        assert_eq!(
            recording_event_names(RecordingStatus::Complete),
            Some(("RecordingCompleted", "recording.completed"))
        );
        assert_eq!(recording_event_names(RecordingStatus::Failed), Some(("RecordingFailed", "recording.failed")));
        for s in RecordingStatus::ALL {
            assert_eq!(RecordingStatus::parse(s.as_str()), Some(s));
        }
    }
}
