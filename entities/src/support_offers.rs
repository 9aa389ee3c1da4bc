//! `support_offers`: a video call offered to a customer who opened a support ticket.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "support_offers")]
pub struct Model {
    /// UUID v7; the `subject` of the SupportVideoOffered event.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The upstream ticket; unique, so a redelivered ticket makes one offer.
    #[sea_orm(unique)]
    pub ticket_id: String,
    pub customer_id: String,
    /// The agent the ticket is assigned to, when upstream knows it.
    pub agent_id: Option<String>,
    pub subject: Option<String>,
    /// `offered` | `accepted` | `expired`
    pub status: String,
    /// The call that took the offer up, once one did.
    pub call_id: Option<Uuid>,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
