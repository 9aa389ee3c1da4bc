//! Taking up a video support offer: InitiateCall with `support_offer_id` makes a support call to
//! the ticket's agent and marks the offer accepted in the same transaction — once.

use chrono::{Duration, Utc};
use sea_orm::{ActiveValue::Set, EntityTrait};
use tonic::Code;
use uuid::Uuid;
use videocall_entities::{calls, support_offers};
use videocall_proto::v1::{self as pb, CallType};

use crate::helpers::{TestApp, spawn_app};

async fn offer(app: &TestApp, customer: &str, agent: Option<&str>, expires_in: Duration) -> Uuid {
    let id = Uuid::now_v7();
    support_offers::Entity::insert(support_offers::ActiveModel {
        id: Set(id),
        ticket_id: Set(format!("T-{}", id.simple())),
        customer_id: Set(customer.into()),
        agent_id: Set(agent.map(str::to_owned)),
        subject: Set(Some("Printer on fire".into())),
        status: Set("offered".into()),
        call_id: Set(None),
        created_at: Set(Utc::now()),
        expires_at: Set(Utc::now() + expires_in),
    })
    .exec_without_returning(&app.db)
    .await
    .expect("insert offer");
    id
}

fn take(offer: Uuid) -> pb::InitiateCallRequest {
    pb::InitiateCallRequest { support_offer_id: offer.to_string(), ..Default::default() }
}

#[tokio::test]
async fn a_customer_takes_up_an_offer_once() {
    let app = spawn_app().await;
    let mut client = app.client().await;
    let id = offer(&app, "carol", Some("agent-7"), Duration::minutes(15)).await;

    let call =
        client.initiate_call(app.as_user("carol", take(id))).await.expect("take up").into_inner().call.expect("call");
    assert_eq!((call.callee_id.as_str(), call.call_type), ("agent-7", CallType::Support as i32));
    let stored = support_offers::Entity::find_by_id(id).one(&app.db).await.expect("read").expect("offer");
    assert_eq!(stored.status, "accepted");
    assert_eq!(stored.call_id.map(|c| c.to_string()), Some(call.id.clone()));
    assert_eq!(call.metadata.get("ticket_id"), Some(&stored.ticket_id), "the call is linked to the ticket");

    // Once taken, the offer cannot start another call (even after this one ends).
    client.end_call(app.as_user("carol", pb::EndCallRequest { call_id: call.id, reason: 0 })).await.expect("end");
    let again = client.initiate_call(app.as_user("carol", take(id))).await.expect_err("taken");
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(again.message().contains("is not available"), "{}", again.message());
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn expired_foreign_and_malformed_offers_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let mut client = app.client().await;
    let expired = offer(&app, "carol", Some("agent-7"), Duration::minutes(-1)).await;
    let dans = offer(&app, "dan", Some("agent-7"), Duration::minutes(15)).await;
    let no_agent = offer(&app, "carol", None, Duration::minutes(15)).await;

    for (request, code, message) in [
        (take(expired), Code::FailedPrecondition, format!("support offer {expired} is not available")),
        (take(dans), Code::FailedPrecondition, format!("support offer {dans} is not available")),
        (take(Uuid::now_v7()), Code::FailedPrecondition, "is not available".to_owned()),
        (take(no_agent), Code::InvalidArgument, "callee_id is required: the offer names no agent".to_owned()),
        (
            pb::InitiateCallRequest { call_type: CallType::Sales as i32, ..take(dans) },
            Code::InvalidArgument,
            "a call taking up a support offer is of type support".to_owned(),
        ),
        (
            pb::InitiateCallRequest { support_offer_id: "nope".into(), ..Default::default() },
            Code::InvalidArgument,
            "support_offer_id `nope` is not a UUID".to_owned(),
        ),
    ] {
        let status = client.initiate_call(app.as_user("carol", request)).await.expect_err(&message);
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(status.message().contains(&message), "{} does not contain {message}", status.message());
    }
    assert_eq!(app.count(calls::Entity).await, 0, "no call was created");
    for id in [expired, dans, no_agent] {
        let stored = support_offers::Entity::find_by_id(id).one(&app.db).await.expect("read").expect("offer");
        assert_eq!((stored.status.as_str(), stored.call_id), ("offered", None));
    }

    // With an explicit callee the agent-less offer works.
    let req = pb::InitiateCallRequest { callee_id: "agent-9".into(), ..take(no_agent) };
    let call = client
        .initiate_call(app.as_user("carol", req))
        .await
        .expect("explicit callee")
        .into_inner()
        .call
        .expect("call");
    assert_eq!(call.callee_id, "agent-9");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn retrying_the_same_request_returns_the_offer_call() {
    let app = spawn_app().await;
    let mut client = app.client().await;
    let id = offer(&app, "carol", Some("agent-7"), Duration::minutes(15)).await;
    let request = pb::InitiateCallRequest { request_id: "retry-1".into(), ..take(id) };
    let first = client.initiate_call(app.as_user("carol", request.clone())).await.expect("first").into_inner().call;
    let again = client.initiate_call(app.as_user("carol", request)).await.expect("retry").into_inner().call;
    assert_eq!(first, again, "a retry of the same request is the same call, not a refusal");
    assert_eq!(app.count(calls::Entity).await, 1);
    app.stop().await.expect("clean stop");
}

/// A ticket's agent who manages their availability: free → the offer calls them directly;
/// unavailable → the call waits on the support desk instead, with the ticket in its metadata.
#[tokio::test]
async fn an_offer_whose_agent_cannot_take_it_now_queues_on_the_support_desk() {
    let app = spawn_app().await;
    let mut client = app.client().await;
    let available = |on: bool| pb::SetAgentAvailabilityRequest {
        available: on,
        call_types: vec![CallType::Support as i32],
        agent_id: String::new(),
    };
    client.set_agent_availability(app.as_agent("agent-7", available(true))).await.expect("available");
    let first = offer(&app, "carol", Some("agent-7"), Duration::minutes(15)).await;
    let call = client
        .initiate_call(app.as_user("carol", take(first)))
        .await
        .expect("take up")
        .into_inner()
        .call
        .expect("call");
    assert_eq!((call.status(), call.callee_id.as_str()), (pb::CallStatus::Initiated, "agent-7"), "a direct call");
    assert!(call.queued_at.is_none());
    client.end_call(app.as_user("carol", pb::EndCallRequest { call_id: call.id, reason: 0 })).await.expect("end");

    client.set_agent_availability(app.as_agent("agent-7", available(false))).await.expect("unavailable");
    let second = offer(&app, "dora", Some("agent-7"), Duration::minutes(15)).await;
    let call = client
        .initiate_call(app.as_user("dora", take(second)))
        .await
        .expect("take up")
        .into_inner()
        .call
        .expect("call");
    assert_eq!((call.status(), call.callee_id.as_str()), (pb::CallStatus::Queued, ""), "on the support desk");
    assert_eq!(call.call_type, CallType::Support as i32);
    let stored = support_offers::Entity::find_by_id(second).one(&app.db).await.expect("read").expect("offer");
    assert_eq!(stored.status, "accepted");
    assert_eq!(call.metadata.get("ticket_id"), Some(&stored.ticket_id));
    app.stop().await.expect("clean stop");
}
