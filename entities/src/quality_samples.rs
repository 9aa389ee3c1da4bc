//! `quality_samples`: one client quality report (CallQualityReported) as the aggregator received it.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "quality_samples")]
pub struct Model {
    /// The CloudEvents id of the CallQualityReported event (UUID v7).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub call_id: Uuid,
    /// The party that measured it.
    pub reporter_id: String,
    /// `inbound` (what the reporter receives: downlink) | `outbound` (what it sends: uplink)
    pub direction: String,
    pub rtt_ms: f64,
    pub jitter_ms: f64,
    pub packet_loss_percent: f64,
    pub bitrate_kbps: f64,
    pub width: i32,
    pub height: i32,
    pub fps: f64,
    /// False when the sample arrived after the summary was finalized and so did not change it.
    pub applied: bool,
    /// When the gateway accepted it.
    pub reported_at: DateTimeUtc,
    /// When the aggregator stored it.
    pub received_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
