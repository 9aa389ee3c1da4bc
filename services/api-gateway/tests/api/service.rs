//! Health, reflection, SQLite, configuration errors and shutdown.

use std::time::Duration;
use videocall_runtime::service::Service;

use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};
use videocall_proto::v1::{self as pb, CallStatus, CallType};

use crate::helpers::{config, spawn_app};

#[tokio::test]
async fn health_reports_serving_and_reflection_lists_the_service() {
    let app = crate::helpers::spawn_app_with(|c| c.grpc_reflection = true).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    let mut serving = false;
    for _ in 0..50 {
        let reply = health.check(HealthCheckRequest { service: "videocall.v1.CallService".into() }).await;
        if reply.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32) {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(serving, "health turns SERVING once the database answers");

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream =
        reflection.server_reflection_info(tokio_stream::iter([request])).await.expect("reflection").into_inner();
    let reply = stream.message().await.expect("reply").expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reply {reply:?}")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"videocall.v1.CallService".to_owned()), "{names:?}");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn reflection_is_off_unless_turned_on() {
    let app = spawn_app().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let status = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect_err("no reflection service");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_same_lifecycle_runs_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("videocall-test-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.join("calls.db").display());
    let mut cfg = config(url, "videocall.events.sqlite-test");
    cfg.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".into(); // no broker: events wait in the outbox
    let shutdown = CancellationToken::new();
    let app = api_gateway::Application::build(cfg, &shutdown).await.expect("builds on SQLite");
    let addr = app.local_addr();
    let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let mut client = videocall_proto::v1::call_service_client::CallServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let keys =
        videocall_runtime::auth::JwtKeys::new(videocall_runtime::config::Secret::new(crate::helpers::JWT_SECRET));
    let token = |user: &str| keys.mint(user, videocall_runtime::auth::Role::User, chrono::Utc::now().timestamp() + 60);

    let req =
        pb::InitiateCallRequest { callee_id: "bob".into(), call_type: CallType::Sales as i32, ..Default::default() };
    let call = client
        .initiate_call(crate::helpers::with_token(&token("alice"), req))
        .await
        .expect("initiate")
        .into_inner()
        .call
        .expect("call");
    assert_eq!(call.ring_timeout_secs, 30);
    let id = call.id;
    client
        .answer_call(crate::helpers::with_token(&token("bob"), pb::AnswerCallRequest { call_id: id.clone() }))
        .await
        .expect("answer");
    let busy = client
        .initiate_call(crate::helpers::with_token(
            &token("carol"),
            pb::InitiateCallRequest { callee_id: "bob".into(), call_type: 1, ..Default::default() },
        ))
        .await
        .expect_err("bob is busy");
    assert_eq!(busy.code(), Code::FailedPrecondition);
    let ended = client
        .end_call(crate::helpers::with_token(&token("bob"), pb::EndCallRequest { call_id: id.clone(), reason: 0 }))
        .await
        .expect("end");
    assert_eq!(ended.into_inner().call.expect("call").status, CallStatus::Ended as i32);
    let history = client
        .get_user_calls(crate::helpers::with_token(&token("alice"), pb::GetUserCallsRequest::default()))
        .await
        .expect("history");
    assert_eq!(history.into_inner().calls.len(), 1);

    shutdown.cancel();
    handle.await.expect("joins").expect("clean stop");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_binary_names_every_bad_variable_and_exits_2() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_api-gateway"))
        .env_clear()
        .env("DATABASE_URL", "mysql://nope")
        .env("JWT_SECRET", "short")
        .env("TURN_TTL_SECS", "ten")
        .env("LOG_FORMAT", "xml")
        .output()
        .expect("run api-gateway");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for var in ["DATABASE_URL:", "JWT_SECRET:", "TURN_TTL_SECS:", "LOG_FORMAT:"] {
        assert!(stderr.lines().any(|l| l.trim_start().starts_with(var)), "{var} missing from:\n{stderr}");
    }
    assert!(!stderr.contains("short"), "secrets are never printed:\n{stderr}");
}

#[tokio::test]
async fn the_operations_endpoint_reports_readiness_and_metrics() {
    let exchange = videocall_testkit::unique_name("videocall.events.test");
    let mut tap = crate::helpers::EventTap::bind(&exchange).await;
    let mut cfg = config(videocall_testkit::fresh_database().await, &exchange);
    cfg.ops_listen_addr = Some("127.0.0.1:0".parse().expect("addr"));
    let shutdown = CancellationToken::new();
    let app = api_gateway::Application::build(cfg, &shutdown).await.expect("builds");
    let (addr, ops) = (app.local_addr(), app.ops_addr().expect("ops endpoint bound"));
    let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let mut client = videocall_proto::v1::call_service_client::CallServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let keys =
        videocall_runtime::auth::JwtKeys::new(videocall_runtime::config::Secret::new(crate::helpers::JWT_SECRET));
    let token = keys.mint("alice", videocall_runtime::auth::Role::User, chrono::Utc::now().timestamp() + 60);
    let req =
        pb::InitiateCallRequest { callee_id: "bob".into(), call_type: CallType::Support as i32, ..Default::default() };
    client.initiate_call(crate::helpers::with_token(&token, req)).await.expect("initiate");
    tap.take(1).await;

    let mut seen = None;
    for _ in 0..300 {
        // up to 30 s: the gauges refresh every 5 s, slower on a loaded machine
        if let Some((200, body)) = videocall_testkit::http_get(ops, "/metrics").await
            && body.contains("videocall_outbox_published_total 1")
            && body.contains("videocall_live_calls{status=\"initiated\",call_type=\"support\"} 1")
            // The gauges are refreshed at each readiness check, after the relay's counter moved.
            && body.contains("videocall_outbox_backlog 0")
        {
            seen = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = seen.expect("metrics show the published event, an empty backlog and the live call");
    assert!(
        body.contains("videocall_live_calls{status=\"active\",call_type=\"sales\"} 0"),
        "every pair is shown: {body}"
    );
    assert!(body.contains("videocall_call_transitions_total{status=\"initiated\",call_type=\"support\"} 1"), "{body}");
    assert_eq!(videocall_testkit::http_get(ops, "/readyz").await.map(|r| r.0), Some(200));
    assert_eq!(videocall_testkit::http_get(ops, "/healthz").await.map(|r| r.0), Some(200));
    shutdown.cancel();
    handle.await.expect("joins").expect("clean stop");
}

#[tokio::test]
async fn vc_migrate_brings_a_fresh_database_current_once_and_refuses_bad_settings() {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    use videocall_migrations::MigratorTrait;
    use videocall_runtime::db;

    let url = videocall_testkit::fresh_database().await;
    let run = |url: Option<&str>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_vc-migrate"));
        command.env_clear().env("MIGRATE_TIMEOUT_SECS", "30");
        if let Some(url) = url {
            command.env("DATABASE_URL", url);
        }
        command.output()
    };
    let applied = |conn: sea_orm::DatabaseConnection| async move {
        let row = conn
            .query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT count(*) AS n FROM seaql_migrations"))
            .await
            .expect("the migrations table exists")
            .expect("row");
        row.try_get::<i64>("", "n").expect("n")
    };
    let expected = videocall_migrations::Migrator::migrations().len() as i64;
    let first = run(Some(&url)).await.expect("runs");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stdout));
    let plain = sea_orm::Database::connect(url.as_str()).await.expect("connect");
    assert_eq!(applied(plain).await, expected, "vc-migrate applied every migration");
    // Again, concurrently with a service starting on the same database: nothing left to do.
    let never = CancellationToken::new();
    let (second, service) = tokio::join!(run(Some(&url)), db::connect_and_migrate(&url, &never));
    assert!(second.expect("runs").status.success());
    let conn = service.expect("the service finds the schema current");
    assert_eq!(applied(conn).await, expected, "each migration recorded once");

    let missing = run(None).await.expect("runs");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("DATABASE_URL"), "names the variable");
    let bad = run(Some("mysql://db/videocall")).await.expect("runs");
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("DATABASE_URL: must start with postgres://"), "{stderr}");
}
