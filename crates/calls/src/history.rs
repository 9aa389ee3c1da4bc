//! A user's call history: filters, cursor pagination, newest first.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect, sea_query::Query};
use uuid::Uuid;
use videocall_domain::{CallStatus, CallType};
use videocall_entities::{call_transfers, calls};

use crate::{
    record::{CallRecord, StoreError},
    store::CallStore,
};

/// Filters and cursor of a history page.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub user_id: String,
    pub call_type: Option<CallType>,
    pub status: Option<CallStatus>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Only calls older than this one (the previous page's last id).
    pub before: Option<Uuid>,
    pub limit: u64,
}

#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub calls: Vec<CallRecord>,
    /// Id to pass as `before` for the next page; None on the last page.
    pub next: Option<Uuid>,
}

impl CallStore {
    /// One page of a user's calls (as caller or callee, or as an agent who transferred the call
    /// on), newest first.
    pub async fn history(&self, q: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        let handed_on = Query::select()
            .column(call_transfers::Column::CallId)
            .from(call_transfers::Entity)
            .and_where(call_transfers::Column::FromAgentId.eq(&q.user_id))
            .and_where(call_transfers::Column::Status.eq(crate::transfer::status::TRANSFERRED))
            .to_owned();
        let mut select = calls::Entity::find().filter(
            Condition::any()
                .add(calls::Column::CallerId.eq(&q.user_id))
                .add(calls::Column::CalleeId.eq(&q.user_id))
                .add(calls::Column::Id.in_subquery(handed_on)),
        );
        if let Some(t) = q.call_type {
            select = select.filter(calls::Column::CallType.eq(t.as_str()));
        }
        if let Some(s) = q.status {
            select = select.filter(calls::Column::Status.eq(s.as_str()));
        }
        if let Some(since) = q.since {
            select = select.filter(calls::Column::CreatedAt.gte(since));
        }
        if let Some(until) = q.until {
            select = select.filter(calls::Column::CreatedAt.lt(until));
        }
        if let Some(before) = q.before {
            select = select.filter(calls::Column::Id.lt(before));
        }
        let mut models = select.order_by_desc(calls::Column::Id).limit(q.limit + 1).all(self.db()).await?;
        let more = models.len() as u64 > q.limit;
        models.truncate(q.limit as usize);
        let calls = models.into_iter().map(CallRecord::from_model).collect::<Result<Vec<_>, _>>()?;
        let next = if more { calls.last().map(|c| c.id) } else { None };
        Ok(HistoryPage { calls, next })
    }
}
