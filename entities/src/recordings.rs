//! `recordings`: the optional server-side recording of a call (one per call). Consent of both
//! parties starts it; a call-recorder worker owns it under a lease while it records.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "recordings")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub call_id: Uuid,
    /// UUID v7; the `subject` of the Recording* events.
    pub id: Uuid,
    /// `requested` (waiting for both consents) | `starting` | `active` | `complete` | `failed`
    pub status: String,
    pub caller_consent: bool,
    pub callee_consent: bool,
    /// The party who asked first.
    pub requested_by: String,
    /// A party withdrew consent while it was starting or active: the recorder stops.
    pub stop_requested: bool,
    /// The recorder instance that owns it while starting/active.
    pub worker_id: Option<String>,
    /// The owner renews this; past it, the recording counts as abandoned.
    pub lease_until: Option<DateTimeUtc>,
    /// When it became active (media from both parties flowing to the recorder).
    pub started_at: Option<DateTimeUtc>,
    pub ended_at: Option<DateTimeUtc>,
    pub duration_ms: i64,
    /// Sum of the files' sizes.
    pub size_bytes: i64,
    /// SHA-256 (hex) over the files' own SHA-256 lines, `<sha256>  <name>\n` in name order.
    pub sha256: String,
    /// `[{"name","party","kind","codec","frames","duration_ms","bytes","sha256"}, ...]`
    pub files: Json,
    pub error: Option<String>,
    /// +1 per change.
    pub version: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
