//! Writing to the transactional outbox: a domain event becomes a row in the same transaction as
//! the change it reports; the [outbox relay](crate::outbox_relay) publishes it after the commit.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveValue::Set, ConnectionTrait, DbErr, EntityTrait};
use serde::Serialize;
use uuid::Uuid;
use videocall_entities::outbox;

use crate::cloud_event::CloudEvent;

/// One domain event to write.
#[derive(Debug)]
pub struct NewEvent<'a, T> {
    /// CloudEvents `source` of the writing service ([`crate::cloud_event::event_source`]).
    pub source: &'a str,
    /// CloudEvents `type` and AMQP routing key.
    pub names: (&'a str, &'a str),
    /// CloudEvents `subject`.
    pub subject: &'a str,
    /// What the event is about (the outbox row's `aggregate_id`).
    pub aggregate_id: Uuid,
    pub time: DateTime<Utc>,
    pub data: T,
}

/// Wraps `event` in a CloudEvents envelope with a new id and writes its outbox row, available at
/// once; inside the caller's transaction when `conn` is one. Returns the event id.
/// The event carries the current span's trace context (the CloudEvents `traceparent` extension).
pub async fn write_event<C: ConnectionTrait, T: Serialize>(conn: &C, event: NewEvent<'_, T>) -> Result<Uuid, DbErr> {
    let current = videocall_runtime::telemetry::trace_context::current();
    write_event_traced(conn, event, current.as_deref()).await
}

/// As [`write_event`], in the trace `traceparent` names (a call's own trace) rather than the
/// current span's; `None` falls back to the current span's.
pub async fn write_event_traced<C: ConnectionTrait, T: Serialize>(
    conn: &C,
    event: NewEvent<'_, T>,
    traceparent: Option<&str>,
) -> Result<Uuid, DbErr> {
    let event_id = Uuid::now_v7();
    let (event_type, routing_key) = event.names;
    let mut envelope = CloudEvent::new(event_id, event.source, event_type, event.subject, event.time, event.data);
    envelope.traceparent = traceparent.map(str::to_owned).or_else(videocall_runtime::telemetry::trace_context::current);
    let payload = serde_json::to_string(&envelope).map_err(|e| DbErr::Custom(format!("event encoding: {e}")))?;
    outbox::Entity::insert(outbox::ActiveModel {
        id: Set(event_id),
        aggregate_id: Set(event.aggregate_id),
        event_type: Set(event_type.to_owned()),
        routing_key: Set(routing_key.to_owned()),
        payload: Set(payload),
        created_at: Set(event.time),
        available_at: Set(event.time),
        attempts: Set(0),
        last_error: Set(None),
        published_at: Set(None),
    })
    .exec_without_returning(conn)
    .await?;
    Ok(event_id)
}
