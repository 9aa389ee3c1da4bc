//! `quality_alerts`: the episodes of poor quality on one media path of a call (sender → receiver),
//! opened and closed by the quality-aggregator. At most one open episode per path.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "quality_alerts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub call_id: Uuid,
    /// The party whose media degraded: its uplink is the likely cause.
    pub sender_id: String,
    /// The party that receives (and, for an inbound sample, measured) it.
    pub receiver_id: String,
    /// `reported_at` of the newest sample of the window that opened the episode.
    pub started_at: DateTimeUtc,
    /// Averages over the window that opened the episode.
    pub mos: f64,
    pub packet_loss_percent: f64,
    pub rtt_ms: f64,
    /// Lowest window average MOS while it lasted.
    pub worst_mos: f64,
    pub ended_at: Option<DateTimeUtc>,
    /// `recovered` | `call_ended`; empty while it lasts.
    pub end_reason: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
