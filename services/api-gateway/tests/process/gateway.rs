//! One api-gateway process on a given database, exchange and loopback ports, and a lifecycle load
//! of gRPC calls against it.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use tonic::{Request, transport::Channel};
use videocall_entities::outbox;
use videocall_proto::v1::{self as pb, call_service_client::CallServiceClient};
use videocall_runtime::{
    auth::{JwtKeys, Role},
    config::Secret,
};
use videocall_testkit::process::{Process, loopback, workspace_binary};

pub const JWT_SECRET: &str = "process-test-secret-0123456789-0123456789";

/// Where a gateway listens and what it works on; the same settings start it again after a kill.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub name: String,
    pub database_url: String,
    pub exchange: String,
    pub cell: String,
    pub grpc: SocketAddr,
    pub ops: SocketAddr,
    pub grace_secs: u64,
    pub amqp_url: String,
    pub logs: PathBuf,
}

impl GatewaySettings {
    pub fn new(database_url: String, exchange: String, grace_secs: u64) -> Self {
        let logs = videocall_testkit::process::temp_dir("gateway-process");
        Self {
            name: videocall_testkit::unique_name("api-gateway"),
            database_url,
            exchange,
            cell: videocall_testkit::unique_name("proc"),
            grpc: loopback(),
            ops: loopback(),
            grace_secs,
            amqp_url: videocall_testkit::amqp_url(),
            logs,
        }
    }

    /// Starts the binary and waits until `/readyz` says the database answers (the gRPC port is
    /// bound before that).
    pub async fn start(&self) -> Process {
        let mut command = workspace_binary("api-gateway");
        command
            .env("DATABASE_URL", &self.database_url)
            .env("AMQP_URL", &self.amqp_url)
            .env("REDIS_URL", std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()))
            .env("CELL_ID", &self.cell)
            .env("JWT_SECRET", JWT_SECRET)
            .env("EVENTS_EXCHANGE", &self.exchange)
            .env("GRPC_LISTEN_ADDR", self.grpc.to_string())
            .env("OPS_LISTEN_ADDR", self.ops.to_string())
            .env("OUTBOX_POLL_MS", "100")
            // These tests start calls between plain users, many from one caller.
            .env("CALL_POLICY", "open")
            .env("INITIATE_CALLS_PER_MIN", "100000")
            .env("SHUTDOWN_GRACE_SECS", self.grace_secs.to_string());
        let mut process = Process::spawn(&self.name, command, &self.logs);
        process.wait_ready(self.ops, "/readyz").await;
        process
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }
}

pub fn token(user: &str) -> String {
    JwtKeys::new(Secret::new(JWT_SECRET)).mint(user, Role::User, chrono::Utc::now().timestamp() + 600)
}

pub fn as_user<T>(user: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {}", token(user)).parse().expect("ascii"));
    request.set_timeout(Duration::from_secs(10));
    request
}

/// Rows the relay has not confirmed yet.
pub async fn unpublished(db: &DatabaseConnection) -> u64 {
    outbox::Entity::find().filter(outbox::Column::PublishedAt.is_null()).count(db).await.expect("count outbox")
}

/// What a lifecycle load did.
#[derive(Debug, Default)]
pub struct LoadCounts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub calls_completed: AtomicU64,
}

/// `workers` tasks, each running calls initiate → ring → answer → end between fresh users on
/// `url` until `stop` (or 120 s). A failed request abandons that call; the worker goes on with the
/// next after 20 ms (the gateway may be dead and restarting).
pub fn lifecycle_load(
    url: String,
    workers: usize,
    stop: Arc<AtomicBool>,
    counts: Arc<LoadCounts>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|worker| {
            let (url, stop, counts) = (url.clone(), stop.clone(), counts.clone());
            tokio::spawn(async move {
                let channel =
                    Channel::from_shared(url).expect("url").connect_timeout(Duration::from_secs(1)).connect_lazy();
                let mut client = CallServiceClient::new(channel);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                    n += 1;
                    let (caller, callee) = (format!("c{worker}-{n}"), format!("e{worker}-{n}"));
                    match one_call(&mut client, &caller, &callee, &counts).await {
                        Ok(()) => {
                            counts.calls_completed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(status) => {
                            tracing::debug!(%status, "load request failed");
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

async fn one_call(
    client: &mut CallServiceClient<Channel>,
    caller: &str,
    callee: &str,
    counts: &LoadCounts,
) -> Result<(), tonic::Status> {
    let initiate = pb::InitiateCallRequest {
        callee_id: callee.into(),
        call_type: pb::CallType::Support as i32,
        ..Default::default()
    };
    let call = client.initiate_call(as_user(caller, initiate)).await?.into_inner().call.expect("call");
    counts.ok.fetch_add(1, Ordering::Relaxed);
    let id = call.id;
    client.ring_call(as_user(callee, pb::RingCallRequest { call_id: id.clone() })).await?;
    counts.ok.fetch_add(1, Ordering::Relaxed);
    client.answer_call(as_user(callee, pb::AnswerCallRequest { call_id: id.clone() })).await?;
    counts.ok.fetch_add(1, Ordering::Relaxed);
    let end = pb::EndCallRequest { call_id: id, reason: pb::EndReason::Unspecified as i32 };
    client.end_call(as_user(caller, end)).await?;
    counts.ok.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
