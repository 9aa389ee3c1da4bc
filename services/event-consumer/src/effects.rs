//! What each message does to Videocall, committed in one transaction with its `processed_messages`
//! row, so a redelivered message (same id) changes nothing.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, DatabaseConnection, DbBackend, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait, TryInsertResult, sea_query::LockType,
};
use serde::Serialize;
use tokio::sync::Notify;
use uuid::Uuid;
use videocall_calls::{CallMetrics, CallRecord, CallStore};
use videocall_domain::{CallStatus, Command, Decision, EndReason, Party, Routing, decide_for};
use videocall_entities::{calls, support_offers};
use videocall_messaging::{
    cloud_event::event_source,
    inbound::{Failure, record_message},
    outbox::{NewEvent, write_event},
};
use videocall_signaling::signal_bus::SignalBus;

use crate::messages::{self, SupportTicketCreated, UserOffline};

/// `processed_messages.consumer` of each queue: fixed names, so replicas (whatever their
/// SERVICE_NAME) and renamed queues share one inbox.
pub const USER_OFFLINE_CONSUMER: &str = "event-consumer.user-offline";
pub const TICKET_CREATED_CONSUMER: &str = "event-consumer.ticket-created";

/// CloudEvents `type` and routing key of a new support offer.
pub const SUPPORT_VIDEO_OFFERED: (&str, &str) = ("SupportVideoOffered", "support.video_offered");

/// Which queue a message came from, hence how to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    UserOffline,
    TicketCreated,
}

/// What applying a message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// UserOffline: how many of the user's live calls ended and how many became missed.
    CallsClosed { ended: u32, missed: u32 },
    /// SupportTicketCreated: a new offer (and its outbox row) was recorded.
    Offered { offer_id: Uuid },
    /// SupportTicketCreated for a ticket that already has an offer (new message id, same ticket).
    AlreadyOffered,
    /// This message id was applied before; nothing changed.
    Duplicate,
}

/// Applies messages. Cheap to clone.
#[derive(Clone)]
pub struct Effects {
    store: CallStore,
    /// `ended_by` / audit actor of the transitions we make: the service name.
    actor: String,
    event_source: String,
    cell_id: String,
    bus: SignalBus,
    offer_ttl: Duration,
}

impl std::fmt::Debug for Effects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Effects").field("actor", &self.actor).field("cell_id", &self.cell_id).finish_non_exhaustive()
    }
}

impl Effects {
    pub fn new(db: DatabaseConnection, cell_id: &str, service_name: &str, bus: SignalBus, offer_ttl: Duration) -> Self {
        let source = event_source(cell_id, service_name);
        // Nothing in this process relays the outbox; the gateway's relay polls it.
        let store = CallStore::new(db, source.clone(), Arc::new(Notify::new()));
        Self {
            store,
            actor: service_name.to_owned(),
            event_source: source,
            cell_id: cell_id.to_owned(),
            bus,
            offer_ttl,
        }
    }

    /// Counts the calls it closes into `metrics` (`videocall_call_transitions_total`).
    pub fn with_metrics(mut self, metrics: CallMetrics) -> Self {
        self.store = self.store.with_metrics(metrics);
        self
    }

    /// Parses and applies one message body.
    pub async fn apply(&self, kind: Kind, message_id: Option<&str>, body: &[u8]) -> Result<Outcome, Failure> {
        match kind {
            Kind::UserOffline => {
                let msg = messages::parse::<UserOffline>(message_id, body)?;
                self.user_offline(&msg.message_id, &msg.data).await
            }
            Kind::TicketCreated => {
                let msg = messages::parse::<SupportTicketCreated>(message_id, body)?;
                self.ticket_created(&msg.message_id, &msg.data).await
            }
        }
    }

    /// Ends the user's live calls: active ones `ended` (user_offline); unanswered ones `missed` when
    /// the user was the callee, `ended` (user_offline) when the caller. The calls are locked
    /// (`FOR UPDATE`) so a racing command waits and then sees the outcome.
    #[tracing::instrument(skip_all, fields(user_id = %event.user_id), err)]
    async fn user_offline(&self, message_id: &str, event: &UserOffline) -> Result<Outcome, Failure> {
        let db = self.store.db();
        let txn = db.begin().await?;
        if !record_message(&txn, USER_OFFLINE_CONSUMER, message_id).await? {
            txn.rollback().await?;
            return Ok(Outcome::Duplicate);
        }
        let user = event.user_id.as_str();
        let live = [CallStatus::Queued, CallStatus::Initiated, CallStatus::Ringing, CallStatus::Active]
            .map(CallStatus::as_str);
        let mut select = calls::Entity::find()
            .filter(Condition::any().add(calls::Column::CallerId.eq(user)).add(calls::Column::CalleeId.eq(user)))
            .filter(calls::Column::Status.is_in(live))
            .order_by_asc(calls::Column::Id); // one lock order for every replica: no deadlocks
        if db.get_database_backend() == DbBackend::Postgres {
            select = select.lock(LockType::Update);
        }
        let (mut ended, mut missed) = (0, 0);
        let mut closed = Vec::new();
        for row in select.all(&txn).await? {
            let call = CallRecord::from_model(row)?;
            let command = match call.status {
                // The agent a desk call rings went offline: the next agent gets it.
                CallStatus::Initiated | CallStatus::Ringing
                    if call.callee_id == user && call.routing() == Routing::Desk =>
                {
                    Command::Requeue
                }
                CallStatus::Initiated | CallStatus::Ringing if call.callee_id == user => Command::Miss,
                _ => Command::End(Some(EndReason::UserOffline)),
            };
            match decide_for(call.routing(), call.status, command, Party::Service) {
                Decision::Apply(effect) => match self.store.transition_in(&txn, &call, effect, &self.actor).await? {
                    Some(changed) => {
                        if changed.status == CallStatus::Missed {
                            missed += 1;
                        } else if changed.status.is_terminal() {
                            ended += 1;
                        }
                        closed.push(changed);
                    }
                    // Impossible under the row lock; on SQLite (one process) equally so.
                    None => tracing::warn!(call_id = %call.id, "call moved under its lock; left alone"),
                },
                other => tracing::warn!(call_id = %call.id, ?other, "no transition for an offline party"),
            }
        }
        // An offline agent takes no desk calls until they say they are available again, and a
        // transfer ringing them fails.
        self.store.make_unavailable(&txn, &[user.to_owned()]).await?;
        let transfers = self.store.fail_transfers_to(&txn, user).await?;
        txn.commit().await?;
        self.store.wake_outbox();
        for step in &transfers {
            videocall_calls::transfer::tell(&self.bus, step).await;
        }
        if ended + missed > 0 {
            tracing::info!(ended, missed, "calls of an offline user closed");
        }
        for call in &closed {
            self.store.count_committed(call);
            videocall_calls::push::call_state(&self.bus, call).await;
            // A transfer that rang for an ended call: its target stops ringing.
            self.store.tell_transfer_ended_with(&self.bus, call).await;
        }
        Ok(Outcome::CallsClosed { ended, missed })
    }

    /// Records one offer per ticket, with its SupportVideoOffered outbox row, then tells the
    /// customer through Redis (best effort: the row is the record).
    #[tracing::instrument(skip_all, fields(ticket_id = %event.ticket_id, customer_id = %event.customer_id), err)]
    async fn ticket_created(&self, message_id: &str, event: &SupportTicketCreated) -> Result<Outcome, Failure> {
        let txn = self.store.db().begin().await?;
        if !record_message(&txn, TICKET_CREATED_CONSUMER, message_id).await? {
            txn.rollback().await?;
            return Ok(Outcome::Duplicate);
        }
        let now = Utc::now().trunc_subsecs(6);
        let ttl = chrono::Duration::from_std(self.offer_ttl).map_err(|e| Failure::Permanent(e.to_string()))?;
        let offer = OfferData {
            offer_id: Uuid::now_v7(),
            ticket_id: event.ticket_id.clone(),
            customer_id: event.customer_id.clone(),
            agent_id: event.agent_id.clone(),
            subject: event.subject.clone(),
            status: "offered",
            call_id: None,
            created_at: now,
            expires_at: now + ttl,
        };
        let inserted = support_offers::Entity::insert(support_offers::ActiveModel {
            id: Set(offer.offer_id),
            ticket_id: Set(offer.ticket_id.clone()),
            customer_id: Set(offer.customer_id.clone()),
            agent_id: Set(offer.agent_id.clone()),
            subject: Set(offer.subject.clone()),
            status: Set(offer.status.to_owned()),
            call_id: Set(None),
            created_at: Set(offer.created_at),
            expires_at: Set(offer.expires_at),
        })
        .on_conflict_do_nothing_on([support_offers::Column::TicketId])
        .exec_without_returning(&txn)
        .await?;
        if !matches!(inserted, TryInsertResult::Inserted(n) if n > 0) {
            txn.commit().await?; // the message is processed: the ticket has its offer already
            return Ok(Outcome::AlreadyOffered);
        }
        let subject = offer.offer_id.to_string();
        let event = NewEvent {
            source: &self.event_source,
            names: SUPPORT_VIDEO_OFFERED,
            subject: &subject,
            aggregate_id: offer.offer_id,
            time: now,
            data: &offer,
        };
        write_event(&txn, event).await?;
        txn.commit().await?;
        tracing::info!(offer_id = %offer.offer_id, "video support offered");
        self.notify_customer(&offer).await;
        Ok(Outcome::Offered { offer_id: offer.offer_id })
    }

    /// Publishes the offer notice on the customer's signal-bus channel; a failure is logged, not retried.
    async fn notify_customer(&self, offer: &OfferData) {
        let notice = OfferNotice {
            frame_type: "video_support_offered",
            offer_id: offer.offer_id,
            ticket_id: &offer.ticket_id,
            expires_at: offer.expires_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            agent_id: offer.agent_id.as_deref(),
        };
        let Ok(json) = serde_json::to_string(&notice) else {
            tracing::warn!("offer notice not encodable");
            return;
        };
        let publish = self.bus.publish_json_to_user(&offer.customer_id, json);
        match tokio::time::timeout(Duration::from_secs(3), publish).await {
            Ok(Ok(())) => tracing::debug!("offer notice published"),
            Ok(Err(error)) => tracing::warn!(%error, offer_id = %offer.offer_id, "offer notice not published"),
            Err(_) => tracing::warn!(offer_id = %offer.offer_id, "offer notice not published (signal bus timed out)"),
        }
    }
}

/// `data` of SupportVideoOffered: the offer as recorded.
#[derive(Debug, Serialize)]
struct OfferData {
    offer_id: Uuid,
    ticket_id: String,
    customer_id: String,
    agent_id: Option<String>,
    subject: Option<String>,
    status: &'static str,
    call_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

/// The frame a customer's relay delivers to their sockets.
#[derive(Debug, Serialize)]
struct OfferNotice<'a> {
    #[serde(rename = "type")]
    frame_type: &'static str,
    offer_id: Uuid,
    ticket_id: &'a str,
    expires_at: String,
    agent_id: Option<&'a str>,
}
