//! One trace per call (issue 21): the fleet's processes export their spans over OTLP/gRPC to a
//! minimal receiver in this test (the collector's TraceService, from the OpenTelemetry proto
//! definitions). A call made over WebSocket is one trace from the relay's `call.initiate` frame
//! through the gateway's InitiateCall, the outbox publishing its events, to the
//! quality-aggregator consuming the call's CallEnded; the call's spans carry `call_id`.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value as AnyValue,
};
use serde_json::json;
use videocall_runtime::auth::Role;
use videocall_testkit::ws::Client;

use crate::{
    fleet::{AGGREGATOR, CONSUMER, Fleet, GATEWAY, RECORDER, RELAY, SWEEPER},
    pages::ONE_AT_A_TIME,
};

/// One received span: its service, name, trace id, and `call_id` attribute.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    call_id: Option<String>,
}

#[derive(Default, Clone)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            _ => None,
        };
        let mut spans = self.0.lock().expect("lock");
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| text(&a.value))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let call_id = span.attributes.iter().find(|a| a.key == "call_id").and_then(|a| text(&a.value));
                    spans.push(Received {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        call_id,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

async fn start_receiver() -> (Receiver, SocketAddr) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = TraceServiceServer::new(receiver.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (receiver, addr)
}

#[tokio::test]
async fn a_call_is_one_trace_from_the_relay_frame_through_the_gateway_and_outbox_to_the_consumer() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (receiver, collector) = start_receiver().await;
    let endpoint = format!("http://{collector}");
    let mut extra = Vec::new();
    for service in [GATEWAY, AGGREGATOR, CONSUMER, SWEEPER, RECORDER, RELAY] {
        extra.push((service, "OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()));
        extra.push((service, "OTEL_BSP_SCHEDULE_DELAY", "200"));
    }
    let fleet = Fleet::start(&extra).await;
    let ws = |user: &str, role: Role| format!("ws://{}/ws?token={}", fleet.http, fleet.token(user, role));
    let mut agent = Client::connect(&ws("agent-1", Role::Agent)).await.expect("agent connects");
    assert_eq!(agent.request(json!({"type": "call.history"})).await["type"], "ack", "the agent is known");
    let mut customer = Client::connect(&ws(&fleet.customer_id, Role::User)).await.expect("customer connects");
    let ack = customer.request(json!({"type": "call.initiate", "callee_id": "agent-1", "call_type": "support"})).await;
    let call_id = ack["call"]["id"].as_str().unwrap_or_else(|| panic!("a call: {ack}")).to_owned();
    assert_eq!(agent.request(json!({"type": "call.answer", "call_id": call_id})).await["type"], "ack");
    assert_eq!(customer.request(json!({"type": "call.end", "call_id": call_id})).await["type"], "ack");

    // The relay's frame span names the call; its trace reaches the gateway, the outbox and the
    // aggregator's handling of CallEnded (which the aggregator consumes to finalize the summary).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (trace, spans) = loop {
        let spans = receiver.0.lock().expect("lock").clone();
        let initiate = spans.iter().find(|s| {
            s.service == RELAY && s.name == "relay call.initiate" && s.call_id.as_deref() == Some(call_id.as_str())
        });
        if let Some(initiate) = initiate {
            let trace = initiate.trace_id.clone();
            let ours: Vec<Received> = spans.into_iter().filter(|s| s.trace_id == trace).collect();
            let seen = |service: &str, name: &str| ours.iter().any(|s| s.service == service && s.name.contains(name));
            if seen(GATEWAY, "InitiateCall") && seen(GATEWAY, "outbox.publish") && seen(AGGREGATOR, "consume") {
                break (trace, ours);
            }
        }
        if Instant::now() >= deadline {
            let summary: Vec<(String, String)> =
                receiver.0.lock().expect("lock").iter().map(|s| (s.service.clone(), s.name.clone())).collect();
            panic!("no complete trace for {call_id} after 30 s; spans received: {summary:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let names: Vec<String> = spans.iter().map(|s| format!("{}: {}", s.service, s.name)).collect();
    eprintln!(
        "trace {} has {} spans: {names:?}",
        trace.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        spans.len()
    );
    // Every command of the call went through the gateway in the call's trace or its own; the
    // call's events (initiated, answered, ended) were all published in the call's trace.
    let published = spans.iter().filter(|s| s.name == "outbox.publish").count();
    assert!(published >= 3, "CallInitiated, CallAnswered and CallEnded publish in the call's trace: {names:?}");
    let with_call_id = spans.iter().filter(|s| s.call_id.as_deref() == Some(call_id.as_str())).count();
    assert!(with_call_id >= 4, "the call's spans carry call_id: {names:?}");

    drop((agent, customer));
    let exchange = fleet.events_exchange.clone();
    fleet.stop().await;
    videocall_testkit::EventTap::bind(&exchange).await.delete_exchange(&exchange).await;
}
