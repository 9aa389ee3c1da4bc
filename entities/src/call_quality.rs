//! `call_quality`: a call's quality summary, one row per scope (`all`, `inbound`, `outbound`).
//! The running sums make an update O(1); the derived columns are what readers show.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "call_quality")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub call_id: Uuid,
    /// `all` (both directions) | `inbound` (downlink) | `outbound` (uplink)
    #[sea_orm(primary_key, auto_increment = false)]
    pub scope: String,
    pub sample_count: i64,
    pub sum_rtt_ms: f64,
    pub sum_jitter_ms: f64,
    /// Sum of squared jitter, for the jitter variance in the stability score.
    pub sum_jitter_sq: f64,
    pub sum_packet_loss: f64,
    pub max_packet_loss: f64,
    pub sum_bitrate_kbps: f64,
    /// Samples that count as a disconnect (bitrate 0 or loss >= 50 %).
    pub disconnects: i64,
    /// Histogram `{"1280x720": 3, ...}` of the video resolutions reported (0x0 not counted).
    pub resolutions: Json,
    pub avg_rtt_ms: f64,
    pub avg_jitter_ms: f64,
    pub avg_packet_loss: f64,
    pub avg_bitrate_kbps: f64,
    /// Most common resolution, `WxH`; empty when no video was reported.
    pub resolution: String,
    /// 0..1, from disconnects and jitter variance (docs/adr/0009-quality-pipeline.md).
    pub stability: f64,
    /// E-model MOS (1..4.5) from the averages.
    pub mos: f64,
    /// Samples that arrived after finalization: stored, not applied.
    pub late_samples: i64,
    /// Set when the call ended; a finalized summary no longer changes.
    pub finalized_at: Option<DateTimeUtc>,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
