//! The event consumer end to end: real AMQP messages in, rows, outbox events, dead letters and
//! Redis notices out.

mod common;

use common::{Harness, eventually, first_message, header};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
use serde_json::json;
use uuid::Uuid;
use videocall_domain::{CallStatus, Command, EndReason};
use videocall_entities::{call_transitions, outbox, processed_messages, support_offers};

/// Outbox routing keys of `call`, oldest first.
async fn events_of(h: &Harness, call: Uuid) -> Vec<(String, serde_json::Value)> {
    outbox::Entity::find()
        .filter(outbox::Column::AggregateId.eq(call))
        .order_by_asc(outbox::Column::Id)
        .all(&h.db)
        .await
        .expect("outbox")
        .into_iter()
        .map(|row| (row.routing_key, serde_json::from_str(&row.payload).expect("JSON payload")))
        .collect()
}

async fn wait_status(h: &Harness, call: Uuid, status: CallStatus) {
    eventually(&format!("call {call} {status:?}"), || async {
        (h.store.get(call).await.expect("call").status == status).then_some(())
    })
    .await;
}

#[tokio::test]
async fn user_offline_ends_active_calls_and_misses_or_ends_unanswered_ones() {
    let h = Harness::start(&[]).await;
    let active = h.call("alice", "bob", &[Command::Answer]).await;
    let ringing_callee_offline = h.call("carol", "dave", &[Command::Ring]).await;
    let initiated_caller_offline = h.call("erin", "frank", &[]).await;
    let bystander = h.call("gina", "hank", &[Command::Ring]).await;
    // bob's connections (on any relay) hear at once that alice's going offline ended their call.
    let redis = redis::Client::open(common::redis_url()).expect("redis url");
    let mut bob = redis.get_async_pubsub().await.expect("Redis reachable");
    bob.subscribe(videocall_signaling::redis_keys::user_channel(&h.config.common.cell_id, "bob")).await.expect("sub");

    // CloudEvents with its id in the body only; plain objects with the message_id property.
    h.user_offline(
        None,
        &json!({"specversion":"1.0","id":"evt-1","source":"/presence","type":"UserOffline","data":{"user_id":"alice"}}),
    )
    .await;
    h.user_offline(Some("m-dave"), &json!({"user_id":"dave"})).await;
    h.user_offline(Some("m-erin"), &json!({"user_id":"erin"})).await;
    h.user_offline(Some("m-nobody"), &json!({"user_id":"nobody-has-calls"})).await;
    h.wait_processed(4).await;

    let c = h.store.get(active).await.expect("call");
    assert_eq!((c.status, c.end_reason), (CallStatus::Ended, Some(EndReason::UserOffline)));
    assert_eq!(c.ended_by.as_deref(), Some("event-consumer"));
    let pushed = first_message(&mut bob).await;
    assert_eq!(pushed["type"], "call_state", "{pushed}");
    assert_eq!(pushed["call"]["id"], active.to_string());
    assert_eq!(
        (pushed["call"]["status"].as_str(), pushed["call"]["end_reason"].as_str()),
        (Some("ended"), Some("user_offline"))
    );
    let c = h.store.get(ringing_callee_offline).await.expect("call");
    assert_eq!(c.status, CallStatus::Missed, "the offline callee never answered");
    assert_eq!(c.ended_by.as_deref(), Some("event-consumer"));
    let c = h.store.get(initiated_caller_offline).await.expect("call");
    assert_eq!((c.status, c.end_reason), (CallStatus::Ended, Some(EndReason::UserOffline)));
    assert_eq!(h.store.get(bystander).await.expect("call").status, CallStatus::Ringing, "others' calls stay");

    let events = events_of(&h, active).await;
    let keys: Vec<_> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["call.initiated", "call.answered", "call.ended"]);
    let (_, ended) = &events[2];
    assert_eq!(ended["type"], "CallEnded");
    assert_eq!(ended["data"]["end_reason"], "user_offline");
    assert_eq!(ended["data"]["previous_status"], "active");
    assert!(ended["source"].as_str().is_some_and(|s| s.ends_with("/event-consumer")), "{ended}");
    let keys: Vec<_> = events_of(&h, ringing_callee_offline).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["call.initiated", "call.ringing", "call.missed"]);
    let keys: Vec<_> = events_of(&h, initiated_caller_offline).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["call.initiated", "call.ended"]);

    // The parties are free again: alice can call bob anew.
    h.call("alice", "bob-2", &[]).await;
    h.stop().await;
}

#[tokio::test]
async fn the_same_message_id_twice_applies_once() {
    let h = Harness::start(&[]).await;
    let call = h.call("ivy", "jack", &[Command::Answer]).await;
    let sentinel = h.call("kate", "liam", &[Command::Answer]).await;

    h.user_offline(Some("dup-1"), &json!({"user_id":"ivy"})).await;
    // The redelivery carries its id in the CloudEvents body instead: same id, same message.
    h.user_offline(None, &json!({"specversion":"1.0","id":"dup-1","type":"UserOffline","data":{"user_id":"ivy"}}))
        .await;
    h.user_offline(Some("dup-1"), &json!({"user_id":"ivy"})).await;
    // Handled after the duplicates (one consumer, one queue, in order).
    h.user_offline(Some("after"), &json!({"user_id":"kate"})).await;
    wait_status(&h, sentinel, CallStatus::Ended).await;
    let (ready, _) = h.queue_counts(&h.config.user_offline.queue).await.expect("queue");
    assert_eq!(ready, 0, "every message was consumed");

    let transitions = call_transitions::Entity::find()
        .filter(call_transitions::Column::CallId.eq(call))
        .filter(call_transitions::Column::ToStatus.eq("ended"))
        .count(&h.db)
        .await
        .expect("count");
    assert_eq!(transitions, 1, "one transition");
    let ended: Vec<_> = events_of(&h, call).await.into_iter().filter(|(k, _)| k == "call.ended").collect();
    assert_eq!(ended.len(), 1, "one outbox row");
    let inbox = processed_messages::Entity::find()
        .filter(processed_messages::Column::MessageId.eq("dup-1"))
        .all(&h.db)
        .await
        .expect("inbox");
    assert_eq!(inbox.len(), 1, "one processed_messages row");
    assert_eq!(inbox[0].consumer, "event-consumer.user-offline");
    assert_eq!(h.processed_count().await, 2);
    h.stop().await;
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_with_their_reason_and_the_next_message_still_applies() {
    let h = Harness::start(&[]).await;
    let call = h.call("mia", "noah", &[Command::Answer]).await;
    let queue = h.config.user_offline.queue.clone();

    let b = &h.config.user_offline;
    h.publish(&b.exchange, &b.routing_key, Some("poison-1"), b"{not json").await;
    h.user_offline(None, &json!({"user_id":"mia"})).await; // neither message_id nor CloudEvents id
    h.user_offline(Some("good"), &json!({"user_id":"mia"})).await;
    wait_status(&h, call, CallStatus::Ended).await;

    let first = h.next_dead_letter(&queue).await;
    assert_eq!(first.delivery.data, b"{not json", "the body is kept as it came");
    assert_eq!(first.delivery.properties.message_id().as_ref().map(|s| s.as_str()), Some("poison-1"));
    let reason = header(&first, "x-death-reason").expect("reason header");
    assert!(reason.starts_with("malformed: body is not JSON"), "{reason}");
    assert_eq!(header(&first, "x-original-routing-key").as_deref(), Some(b.routing_key.as_str()));
    let second = h.next_dead_letter(&queue).await;
    let reason = header(&second, "x-death-reason").expect("reason header");
    assert!(reason.starts_with("malformed: no message id"), "{reason}");
    assert_eq!(h.processed_count().await, 1, "only the good message was recorded");
    h.stop().await;
}

#[tokio::test]
async fn a_support_ticket_makes_one_offer_one_event_and_a_notice_to_the_customer() {
    let h = Harness::start(&[]).await;
    let redis = redis::Client::open(common::redis_url()).expect("redis url");
    let mut pubsub = redis.get_async_pubsub().await.expect("Redis reachable");
    let channel = videocall_signaling::redis_keys::user_channel(&h.config.common.cell_id, "carol");
    pubsub.subscribe(&channel).await.expect("subscribe");

    let ticket = json!({
        "specversion":"1.0","id":"ticket-evt-1","source":"/support","type":"SupportTicketCreated",
        "data":{"ticket_id":"T-42","customer_id":"carol","agent_id":"agent-7","subject":"camera does not start"}
    });
    h.ticket_created(None, &ticket).await;
    let notice = first_message(&mut pubsub).await;
    // Upstream redelivers the ticket under a new message id: still one offer.
    h.ticket_created(Some("ticket-evt-1-again"), &json!({"ticket_id":"T-42","customer_id":"carol"})).await;
    h.wait_processed(2).await;

    let offers = support_offers::Entity::find().all(&h.db).await.expect("offers");
    assert_eq!(offers.len(), 1, "one offer per ticket");
    let offer = &offers[0];
    assert_eq!((offer.ticket_id.as_str(), offer.customer_id.as_str()), ("T-42", "carol"));
    assert_eq!(offer.agent_id.as_deref(), Some("agent-7"));
    assert_eq!(offer.subject.as_deref(), Some("camera does not start"));
    assert_eq!(offer.status, "offered");
    assert_eq!(offer.call_id, None);
    assert_eq!((offer.expires_at - offer.created_at).num_seconds(), 900, "SUPPORT_OFFER_TTL_SECS default");

    let rows = outbox::Entity::find().all(&h.db).await.expect("outbox");
    assert_eq!(rows.len(), 1, "one event");
    assert_eq!(rows[0].routing_key, "support.video_offered");
    assert_eq!(rows[0].event_type, "SupportVideoOffered");
    assert_eq!(rows[0].aggregate_id, offer.id);
    let event: serde_json::Value = serde_json::from_str(&rows[0].payload).expect("JSON");
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], "SupportVideoOffered");
    assert_eq!(event["id"], rows[0].id.to_string());
    assert_eq!(event["subject"], offer.id.to_string());
    assert_eq!(event["data"]["ticket_id"], "T-42");
    assert_eq!(event["data"]["customer_id"], "carol");
    assert_eq!(event["data"]["status"], "offered");

    assert_eq!(notice["type"], "video_support_offered");
    assert_eq!(notice["offer_id"], offer.id.to_string());
    assert_eq!(notice["ticket_id"], "T-42");
    assert_eq!(notice["agent_id"], "agent-7");
    let expires = notice["expires_at"].as_str().expect("expires_at");
    let expires = chrono::DateTime::parse_from_rfc3339(expires).expect("RFC 3339");
    assert_eq!(expires.timestamp_millis(), offer.expires_at.timestamp_millis());
    h.stop().await;
}

#[tokio::test]
async fn bad_payloads_change_nothing_and_say_why() {
    let h = Harness::start(&[]).await;
    let call = h.call("olga", "pete", &[Command::Ring]).await;
    let long = "x".repeat(129);
    let offline_bad = [
        (Some("b1"), json!({"user_id": ""})),
        (Some("b2"), json!({"user_id": long})),
        (Some("b3"), json!({"user_id": 42})),
        (Some("b4"), json!({"user": "olga"})),
        (None, json!({"specversion":"1.0","id":"b5","type":"UserOnline","data":{"user_id":"olga"}})),
        (None, json!({"specversion":"0.3","id":"b6","type":"UserOffline","data":{"user_id":"olga"}})),
        (Some("b7"), json!(["olga"])),
    ];
    for (id, body) in &offline_bad {
        h.user_offline(*id, body).await;
    }
    let ticket_bad = [
        (Some("t1"), json!({"ticket_id":"T-1"})),
        (Some("t2"), json!({"ticket_id":"","customer_id":"olga"})),
        (Some("t3"), json!({"ticket_id":"T-3","customer_id":"olga","agent_id":long})),
        (Some("t4"), json!({"ticket_id":"T-4","customer_id":"olga","subject":"s".repeat(513)})),
        (None, json!({"ticket_id":"T-5","customer_id":"olga"})),
    ];
    for (id, body) in &ticket_bad {
        h.ticket_created(*id, body).await;
    }
    let mut reasons = Vec::new();
    for _ in &offline_bad {
        let m = h.next_dead_letter(&h.config.user_offline.queue).await;
        reasons.push(header(&m, "x-death-reason").expect("reason"));
    }
    for _ in &ticket_bad {
        let m = h.next_dead_letter(&h.config.ticket_created.queue).await;
        reasons.push(header(&m, "x-death-reason").expect("reason"));
    }
    let expected = [
        "data.user_id must be 1-128 bytes, got 0",
        "data.user_id must be 1-128 bytes, got 129",
        "data: invalid type: integer `42`",
        "data: missing field `user_id`",
        "event type `UserOnline` is not UserOffline",
        "unsupported CloudEvents specversion",
        "body is not a JSON object",
        "data: missing field `customer_id`",
        "data.ticket_id must be 1-128 bytes",
        "data.agent_id must be 1-128 bytes",
        "data.subject has 513 bytes",
        "no message id",
    ];
    for (reason, want) in reasons.iter().zip(expected) {
        assert!(reason.contains(want), "reason `{reason}` should say `{want}`");
    }

    assert_eq!(h.store.get(call).await.expect("call").status, CallStatus::Ringing);
    assert_eq!(h.processed_count().await, 0);
    assert_eq!(support_offers::Entity::find().count(&h.db).await.expect("count"), 0);
    let events = outbox::Entity::find().count(&h.db).await.expect("count");
    assert_eq!(events, 2, "only the call's own initiated and ringing events");
    h.stop().await;
}

/// Makes the first `failures` inserts into support_offers fail as a database fault would; the
/// sequence counts every attempt, even those rolled back.
async fn inject_offer_faults(h: &Harness, failures: i64) {
    for sql in [
        "CREATE SEQUENCE offer_attempts".to_owned(),
        format!(
            "CREATE FUNCTION fail_offers() RETURNS trigger AS $$ BEGIN \
             IF nextval('offer_attempts') <= {failures} THEN RAISE EXCEPTION 'injected fault'; END IF; \
             RETURN NEW; END $$ LANGUAGE plpgsql"
        ),
        "CREATE TRIGGER fail_offers BEFORE INSERT ON support_offers FOR EACH ROW EXECUTE FUNCTION fail_offers()"
            .to_owned(),
    ] {
        h.db.execute_unprepared(&sql).await.expect("fault injection");
    }
}

async fn offer_attempts(h: &Harness) -> i64 {
    let row =
        h.db.query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT last_value FROM offer_attempts",
        ))
        .await
        .expect("query")
        .expect("row");
    row.try_get("", "last_value").expect("last_value")
}

#[tokio::test]
async fn database_faults_are_retried_a_bounded_number_of_times_then_dead_lettered() {
    retried_then_dead_lettered("--queue-type=quorum").await;
}

#[tokio::test]
async fn database_faults_are_retried_by_republishing_on_classic_queues_too() {
    retried_then_dead_lettered("--queue-type=classic").await;
}

/// With quorum queues the broker counts the retries (`x-delivery-count`), with classic ones the
/// republished `x-attempt`: the dead letter says the same either way.
async fn retried_then_dead_lettered(queue_type: &str) {
    let h = Harness::start(&["--max-retries=2", queue_type]).await;
    inject_offer_faults(&h, 1_000_000).await;
    h.ticket_created(Some("flaky-1"), &json!({"ticket_id":"T-9","customer_id":"quinn"})).await;
    let dead = h.next_dead_letter(&h.config.ticket_created.queue).await;
    let reason = header(&dead, "x-death-reason").expect("reason");
    assert!(reason.starts_with("gave up after 3 attempts: database:"), "{reason}");
    assert!(reason.contains("injected fault"), "{reason}");
    assert_eq!(header(&dead, "x-attempt").as_deref(), Some("2"));
    assert_eq!(offer_attempts(&h).await, 3, "the first try and MAX_RETRIES=2 retries");
    assert_eq!(h.processed_count().await, 0, "the failed transactions left no inbox row");

    // Once the database is healthy again the consumer carries on.
    h.db.execute_unprepared("DROP TRIGGER fail_offers ON support_offers").await.expect("heal");
    h.ticket_created(Some("healthy-1"), &json!({"ticket_id":"T-10","customer_id":"quinn"})).await;
    h.wait_processed(1).await;
    assert_eq!(support_offers::Entity::find().count(&h.db).await.expect("count"), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_fault_that_heals_during_the_retries_applies_the_message_once() {
    let h = Harness::start(&["--max-retries=5"]).await;
    inject_offer_faults(&h, 2).await;
    h.ticket_created(Some("heals-1"), &json!({"ticket_id":"T-11","customer_id":"rosa"})).await;
    h.wait_processed(1).await;
    assert_eq!(offer_attempts(&h).await, 3, "two failed attempts, then the one that applied");
    assert_eq!(support_offers::Entity::find().count(&h.db).await.expect("count"), 1);
    assert_eq!(outbox::Entity::find().count(&h.db).await.expect("count"), 1, "one event");
    let dlq = format!("{}.dlq", h.config.ticket_created.queue);
    let (dead, _) = h.queue_counts(&dlq).await.expect("dlq");
    assert_eq!(dead, 0, "nothing was dead-lettered");
    h.stop().await;
}

#[tokio::test]
async fn a_lost_queue_is_redeclared_after_reconnecting_and_consumption_resumes() {
    let h = Harness::start(&[]).await;
    let call = h.call("sam", "tina", &[Command::Answer]).await;
    let queue = h.config.user_offline.queue.clone();
    // Deleting the queue cancels the consumer on the broker's side: the session ends.
    let admin = h.amqp.create_channel().await.expect("channel");
    admin.queue_delete(queue.as_str().into(), Default::default()).await.expect("delete queue");
    eventually("the queue declared and consumed again", || async {
        h.queue_counts(&queue).await.filter(|(_, consumers)| *consumers > 0)
    })
    .await;
    h.user_offline(Some("after-reconnect"), &json!({"user_id":"sam"})).await;
    wait_status(&h, call, CallStatus::Ended).await;
    h.stop().await;
}

#[tokio::test]
async fn offers_are_recorded_while_redis_is_down() {
    // Nothing listens on port 1: every notice fails, the offer does not.
    let h = Harness::start(&["--redis-url=redis://127.0.0.1:1"]).await;
    h.ticket_created(Some("no-redis"), &json!({"ticket_id":"T-77","customer_id":"uma"})).await;
    h.wait_processed(1).await;
    let offers = support_offers::Entity::find().all(&h.db).await.expect("offers");
    assert_eq!(offers.len(), 1);
    assert_eq!(outbox::Entity::find().count(&h.db).await.expect("count"), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_burst_of_tickets_makes_exactly_one_offer_each() {
    const TICKETS: usize = 500;
    let h = Harness::start(&[]).await;
    let started = std::time::Instant::now();
    for i in 0..TICKETS {
        let body = json!({"ticket_id": format!("T-{i}"), "customer_id": format!("c-{}", i % 50)});
        h.ticket_created(Some(&format!("burst-{i}")), &body).await;
        if i % 5 == 0 {
            // a redelivery of an earlier ticket under a new message id
            h.ticket_created(Some(&format!("burst-{i}-again")), &body).await;
        }
    }
    let published = started.elapsed();
    h.wait_processed((TICKETS + TICKETS / 5) as u64).await;
    let done = started.elapsed();
    eprintln!("{TICKETS} tickets (+{} redeliveries): published in {published:?}, applied in {done:?}", TICKETS / 5);
    assert_eq!(support_offers::Entity::find().count(&h.db).await.expect("count"), TICKETS as u64);
    assert_eq!(outbox::Entity::find().count(&h.db).await.expect("count"), TICKETS as u64);
    h.stop().await;
}

#[tokio::test]
async fn readiness_and_metrics_follow_the_messages() {
    let port = videocall_testkit::free_port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let h = Harness::start(&[&format!("--ops-listen-addr={addr}")]).await;
    eventually("ready", || async { (videocall_testkit::http_get(addr, "/readyz").await?.0 == 200).then_some(()) })
        .await;
    // A CloudEvent made 2 s ago: its lag is measured from its `time`.
    let made = (chrono::Utc::now() - chrono::Duration::seconds(2)).to_rfc3339();
    h.user_offline(
        Some("m-ok"),
        &json!({"specversion":"1.0","id":"m-ok","type":"UserOffline","time":made,"data":{"user_id":"nobody"}}),
    )
    .await;
    h.user_offline(Some("m-bad"), &json!({"user": "nobody"})).await;
    let queue = h.config.user_offline.queue.clone();
    let metrics = eventually("both messages counted", || async {
        let (_, body) = videocall_testkit::http_get(addr, "/metrics").await?;
        let applied = format!("videocall_consumer_messages_total{{queue=\"{queue}\",outcome=\"applied\"}} 1");
        let dead = format!("videocall_consumer_messages_total{{queue=\"{queue}\",outcome=\"dead_lettered\"}} 1");
        (body.contains(&applied) && body.contains(&dead)).then_some(body)
    })
    .await;
    assert!(metrics.contains("# TYPE videocall_consumer_messages counter"), "{metrics}");
    // Only the message that says when it was made is timed (no CloudEvents time, no AMQP
    // timestamp on the other).
    let lag = format!("videocall_queue_lag_seconds_count{{queue=\"{queue}\"}} 1");
    assert!(metrics.contains(&lag), "{metrics}");
    let sum_prefix = format!("videocall_queue_lag_seconds_sum{{queue=\"{queue}\"}} ");
    let sum: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(sum_prefix.as_str()))
        .and_then(|v| v.parse().ok())
        .expect("a lag sum");
    assert!(sum >= 2.0, "lag counts from the event's time, 2 s before it was sent: {sum}");
    h.stop().await;
}

/// UserOffline of an agent a desk call rings puts the call back in its queue (the next agent gets
/// it) and makes the agent unavailable; a customer going offline while queued ends their call.
#[tokio::test]
async fn user_offline_of_a_ringing_agent_requeues_the_desk_call_and_makes_them_unavailable() {
    use videocall_domain::CallType;
    let h = Harness::start(&[]).await;
    let new_call = |caller: &str, request: &str| videocall_calls::NewCall {
        request_id: request.into(),
        caller_id: caller.into(),
        callee_id: String::new(),
        call_type: CallType::Support,
        metadata: Default::default(),
        ring_timeout_secs: 300,
    };
    h.store.set_availability("agent-x", true, &[CallType::Support]).await.expect("available");
    let desk = h.store.initiate(new_call("quinn", "q1"), "quinn").await.expect("queued").call;
    let waiting = h.store.initiate(new_call("rita", "r1"), "rita").await.expect("queued").call;
    let routed =
        h.store.route_next(CallType::Support, chrono::Duration::seconds(20), "test-router").await.expect("route");
    assert_eq!(routed.map(|c| (c.id, c.callee_id)), Some((desk.id, "agent-x".to_owned())), "the oldest call");

    h.user_offline(Some("off-agent"), &json!({"user_id":"agent-x"})).await;
    h.user_offline(Some("off-rita"), &json!({"user_id":"rita"})).await;
    h.wait_processed(2).await;
    let c = h.store.get(desk.id).await.expect("call");
    assert_eq!((c.status, c.callee_id.as_str()), (CallStatus::Queued, ""), "back in the queue for the next agent");
    let attempts = h.store.attempts(desk.id).await.expect("attempts");
    assert_eq!(attempts.iter().map(|a| a.outcome.as_deref()).collect::<Vec<_>>(), [Some("no_answer")]);
    let agent = h.store.agent("agent-x").await.expect("read").expect("agent");
    assert!(!agent.available, "an offline agent takes no desk calls");
    assert!(
        h.store
            .route_next(CallType::Support, chrono::Duration::seconds(20), "test-router")
            .await
            .expect("route")
            .is_none()
    );
    let c = h.store.get(waiting.id).await.expect("call");
    assert_eq!((c.status, c.end_reason), (CallStatus::Ended, Some(EndReason::UserOffline)));
    let keys: Vec<_> = events_of(&h, desk.id).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["call.queued", "call.routed", "call.queued"]);
    h.stop().await;
}

#[tokio::test]
async fn user_offline_of_a_transfer_target_fails_the_transfer_and_of_the_first_agent_ends_the_call() {
    use videocall_calls::{
        Actor,
        transfer::{Target, status},
    };
    use videocall_entities::call_transfers;
    let h = Harness::start(&[]).await;
    let agent_1 = Actor { id: "agent-1".into(), is_service: false };
    let ring = chrono::Duration::seconds(60);
    let call = h.call("carol", "agent-1", &[Command::Answer]).await;
    // agent-2 rings for the transfer, then goes offline: the transfer fails, the call stays.
    let mut target =
        redis::Client::open(common::redis_url()).expect("redis url").get_async_pubsub().await.expect("Redis");
    target
        .subscribe(videocall_signaling::redis_keys::user_channel(&h.config.common.cell_id, "agent-2"))
        .await
        .expect("sub");
    h.store.request_transfer(call, Target::Agent("agent-2".into()), &agent_1, ring).await.expect("transfer");
    h.user_offline(Some("m-agent-2"), &json!({"user_id":"agent-2"})).await;
    h.wait_processed(1).await;
    let c = h.store.get(call).await.expect("call");
    assert_eq!((c.status, c.callee_id.as_str()), (CallStatus::Active, "agent-1"));
    let frame = first_message(&mut target).await;
    assert_eq!(
        (frame["type"].as_str(), frame["transfer"]["reason"].as_str()),
        (Some("transfer"), Some("target_offline"))
    );

    // agent-3 rings, and agent-1 goes offline: the call ends, and the transfer with it.
    let mut target =
        redis::Client::open(common::redis_url()).expect("redis url").get_async_pubsub().await.expect("Redis");
    target
        .subscribe(videocall_signaling::redis_keys::user_channel(&h.config.common.cell_id, "agent-3"))
        .await
        .expect("sub");
    h.store.request_transfer(call, Target::Agent("agent-3".into()), &agent_1, ring).await.expect("transfer");
    h.user_offline(Some("m-agent-1"), &json!({"user_id":"agent-1"})).await;
    h.wait_processed(2).await;
    let c = h.store.get(call).await.expect("call");
    assert_eq!((c.status, c.end_reason), (CallStatus::Ended, Some(EndReason::UserOffline)));
    let frame = loop {
        let frame = first_message(&mut target).await;
        if frame["type"] == "transfer" && frame["transfer"]["status"] != "ringing" {
            break frame;
        }
    };
    assert_eq!(frame["transfer"]["reason"], "call_ended", "agent-3 stops ringing: {frame}");
    let transfers = call_transfers::Entity::find()
        .filter(call_transfers::Column::CallId.eq(call))
        .order_by_asc(call_transfers::Column::RequestedAt)
        .all(&h.db)
        .await
        .expect("transfers");
    let outcomes: Vec<(&str, &str, Option<&str>)> =
        transfers.iter().map(|t| (t.to_agent_id.as_str(), t.status.as_str(), t.reason.as_deref())).collect();
    assert_eq!(
        outcomes,
        [("agent-2", status::FAILED, Some("target_offline")), ("agent-3", status::FAILED, Some("call_ended"))]
    );
    // Each step once, in order, in the outbox.
    let keys: Vec<String> = events_of(&h, call).await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "call.initiated",
            "call.answered",
            "call.transfer_requested",
            "call.transfer_failed",
            "call.transfer_requested",
            "call.ended",
            "call.transfer_failed"
        ]
    );
    h.stop().await;
}

#[tokio::test]
async fn a_transfer_answered_while_the_first_agent_goes_offline_ends_one_way_each_time() {
    use videocall_calls::{Actor, transfer::Target};
    let h = Harness::start(&[]).await;
    const N: usize = 10;
    let mut calls = Vec::new();
    for i in 0..N {
        let agent = format!("agent-r{i}");
        let call = h.call(&format!("carol-r{i}"), &agent, &[Command::Answer]).await;
        let actor = Actor { id: agent, is_service: false };
        let target = Target::Agent(format!("target-r{i}"));
        h.store.request_transfer(call, target, &actor, chrono::Duration::seconds(60)).await.expect("transfer");
        calls.push(call);
    }
    let mut answers = Vec::new();
    for (i, call) in calls.iter().enumerate() {
        let (store, call) = (h.store.clone(), *call);
        // Answers spread over the time the offline message takes, so both orders happen.
        let after = std::time::Duration::from_millis(6 * i as u64);
        answers.push(tokio::spawn(async move {
            tokio::time::sleep(after).await;
            store.accept_transfer(call, &format!("target-r{i}")).await
        }));
        h.user_offline(Some(&format!("m-r{i}")), &json!({"user_id": format!("agent-r{i}")})).await;
    }
    h.wait_processed(N as u64).await;
    let mut transferred = 0;
    for (i, answer) in answers.into_iter().enumerate() {
        let answered = answer.await.expect("task");
        let c = h.store.get(calls[i]).await.expect("call");
        let keys: Vec<String> = events_of(&h, calls[i]).await.into_iter().map(|(k, _)| k).collect();
        match answered {
            Ok(Some(step)) => {
                transferred += 1;
                // The answer won: the call is the target's, and the first agent's going offline
                // touches it no more.
                assert_eq!((c.status, c.callee_id.as_str()), (CallStatus::Active, step.transfer.to_agent_id.as_str()));
                assert_eq!(keys[2..], ["call.transfer_requested", "call.transferred"]);
            }
            Ok(None) => panic!("the transfer rang target-r{i}"),
            Err(lost) => {
                assert_eq!(lost.to_string(), "the transfer to you is over: call_ended");
                assert_eq!((c.status, c.end_reason), (CallStatus::Ended, Some(EndReason::UserOffline)));
                assert_eq!(keys[2..], ["call.transfer_requested", "call.ended", "call.transfer_failed"]);
            }
        }
    }
    eprintln!("{transferred} of {N} answers won against the first agent going offline");
    h.stop().await;
}
