//! The outbox relay: events wait in the outbox until the broker confirms them, and several
//! gateway replicas publish each event once.

use std::{collections::HashSet, time::Duration};

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use uuid::Uuid;
use videocall_entities::outbox;
use videocall_proto::v1::{self as pb, CallType};

use crate::helpers::{EventTap, fresh_database, spawn_app, spawn_app_on, spawn_app_on_with};

fn call_to(callee: &str) -> pb::InitiateCallRequest {
    pb::InitiateCallRequest { callee_id: callee.into(), call_type: CallType::Support as i32, ..Default::default() }
}

#[tokio::test]
async fn events_nobody_is_bound_for_are_confirmed_into_the_bounded_unrouted_queue() {
    let exchange = format!("videocall.events.test.{}", Uuid::now_v7().simple());
    let elsewhere = EventTap::bind(&format!("{exchange}.unused")).await;
    let retention = videocall_messaging::amqp::UnroutedRetention {
        max_messages: 100,
        ttl: Duration::from_secs(600),
        ..Default::default()
    };
    let app = spawn_app_on_with(fresh_database().await, exchange.clone(), elsewhere, |c| c.unrouted = retention).await;
    let mut client = app.client().await;

    // A new deployment: no consumer is bound for any of these events yet.
    const CALLS: usize = 150;
    for i in 0..CALLS {
        let (caller, callee) = (format!("caller-{i}"), format!("callee-{i}"));
        let call = client.initiate_call(app.as_user(&caller, call_to(&callee))).await.expect("initiate").into_inner();
        let call_id = call.call.expect("call").id;
        client.ring_call(app.as_user(&callee, pb::RingCallRequest { call_id: call_id.clone() })).await.expect("ring");
        client
            .answer_call(app.as_user(&callee, pb::AnswerCallRequest { call_id: call_id.clone() }))
            .await
            .expect("answer");
        client.end_call(app.as_user(&caller, pb::EndCallRequest { call_id, reason: 0 })).await.expect("end");
    }
    // Every event is confirmed (into the unrouted queue) and leaves the outbox without a retry.
    let mut backlog = u64::MAX;
    for _ in 0..200 {
        backlog = videocall_messaging::outbox_relay::backlog(&app.db).await.expect("backlog");
        if backlog == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(backlog, 0, "the outbox drained");
    let rows = outbox::Entity::find().all(&app.db).await.expect("outbox");
    assert_eq!(rows.len(), CALLS * 4);
    assert!(rows.iter().all(|r| r.attempts == 0 && r.last_error.is_none()), "nothing came back unroutable");
    // The unrouted queue keeps the newest events, never more than its bound.
    let unrouted = videocall_messaging::amqp::unrouted_name(&exchange);
    let kept = queue_depth(&unrouted).await;
    assert_eq!(kept, 100, "bounded at 100 of {} events", CALLS * 4);
    app.stop().await.expect("clean stop");
}

/// Messages waiting in `queue` (a passive declare).
async fn queue_depth(queue: &str) -> u32 {
    use lapin::{Connection, ConnectionProperties, options::QueueDeclareOptions, types::FieldTable};
    let connection =
        Connection::connect(&videocall_testkit::amqp_url(), ConnectionProperties::default()).await.expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let queue = channel.queue_declare(queue.into(), passive, FieldTable::default()).await.expect("the queue exists");
    let _ = connection.close(200, "done".into()).await;
    queue.message_count()
}

#[tokio::test]
async fn unroutable_events_stay_in_the_outbox_until_a_queue_is_bound() {
    let exchange = format!("videocall.events.test.{}", Uuid::now_v7().simple());
    // An exchange an older deployment made, without the alternate exchange: the outbox keeps
    // what no queue takes, as it always did.
    declare_plain_exchange(&exchange).await;
    let elsewhere = EventTap::bind(&format!("{exchange}.unused")).await;
    let app = spawn_app_on(fresh_database().await, exchange.clone(), elsewhere).await;
    let mut client = app.client().await;
    client.initiate_call(app.as_user("alice", call_to("bob"))).await.expect("initiate");

    // Nothing is bound to the exchange: the broker returns the message, the row stays pending.
    let mut row = None;
    for _ in 0..50 {
        let r = outbox::Entity::find().one(&app.db).await.expect("read outbox").expect("one row");
        if r.attempts > 0 {
            row = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let row = row.expect("the relay tried to publish");
    assert!(row.published_at.is_none(), "an unroutable event is not marked sent");
    assert!(row.last_error.as_deref().is_some_and(|e| e.starts_with("unroutable")), "{:?}", row.last_error);

    // Bind a queue: the retry delivers it, and only then is it marked sent.
    let mut tap = EventTap::bind(&exchange).await;
    let event = tap.next(Duration::from_secs(15)).await.expect("event delivered after the retry");
    assert_eq!(event.message_id, Some(row.id.to_string()));
    assert_eq!(event.routing_key, "call.initiated");
    let mut sent = false;
    for _ in 0..50 {
        let r = outbox::Entity::find_by_id(row.id).one(&app.db).await.expect("read").expect("row");
        if r.published_at.is_some() {
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sent, "marked sent after the clean ack");
    app.stop().await.expect("clean stop");
}

/// A durable topic exchange with no arguments, as releases before the alternate exchange made it.
async fn declare_plain_exchange(exchange: &str) {
    use lapin::{Connection, ConnectionProperties, ExchangeKind, options::ExchangeDeclareOptions, types::FieldTable};
    let connection =
        Connection::connect(&videocall_testkit::amqp_url(), ConnectionProperties::default()).await.expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel
        .exchange_declare(exchange.into(), ExchangeKind::Topic, durable, FieldTable::default())
        .await
        .expect("declared");
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn two_gateway_replicas_publish_every_event_exactly_once() {
    let mut a = spawn_app().await;
    let dummy = EventTap::bind(&format!("{}.unused", a.exchange)).await;
    let b = spawn_app_on(a.database_url.clone(), a.exchange.clone(), dummy).await;
    let (ca, cb) = (a.client().await, b.client().await);
    const CALLS: usize = 60;

    let mut tasks = Vec::new();
    for i in 0..CALLS {
        let mut client = if i % 2 == 0 { ca.clone() } else { cb.clone() };
        let req = a.as_user(&format!("c{i}"), call_to(&format!("a{i}")));
        tasks.push(tokio::spawn(async move { client.initiate_call(req).await }));
    }
    for t in tasks {
        t.await.expect("task").expect("initiate");
    }
    let events = a.events.take(CALLS).await;
    let ids: HashSet<_> = events.iter().map(|e| e.message_id.clone().expect("message id")).collect();
    assert_eq!(ids.len(), CALLS, "no event published twice");
    let pending =
        outbox::Entity::find().filter(outbox::Column::PublishedAt.is_null()).all(&a.db).await.expect("outbox");
    assert!(pending.is_empty(), "no row left behind: {pending:?}");
    b.stop().await.expect("b stops");
    a.stop().await.expect("a stops");
}
