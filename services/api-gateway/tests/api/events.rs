//! The outbox relay: events wait in the outbox until the broker confirms them, and several
//! gateway replicas publish each event once.

use std::{collections::HashSet, time::Duration};

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use uuid::Uuid;
use videocall_entities::outbox;
use videocall_proto::v1::{self as pb, CallType};

use crate::helpers::{EventTap, fresh_database, spawn_app, spawn_app_on};

fn call_to(callee: &str) -> pb::InitiateCallRequest {
    pb::InitiateCallRequest { callee_id: callee.into(), call_type: CallType::Support as i32, ..Default::default() }
}

#[tokio::test]
async fn unroutable_events_stay_in_the_outbox_until_a_queue_is_bound() {
    let exchange = format!("videocall.events.test.{}", Uuid::now_v7().simple());
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
