//! Starting and stopping the `videocall` binary (the fleet's separate binaries and the process
//! handling come from `videocall_testkit::process`).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use videocall_testkit::process::loopback;
pub use videocall_testkit::process::{Process, temp_dir, workspace_binary};

/// Every variable the standalone binary reads, so the caller's environment cannot change a test.
const SETTINGS: &[&str] = &[
    "VIDEOCALL_DATA_DIR",
    "HTTP_LISTEN_ADDR",
    "GRPC_LISTEN_ADDR",
    "OPS_LISTEN_ADDR",
    "WORKERS_LISTEN_ADDR",
    "JWT_SECRET",
    "STUN_SERVERS",
    "TURN_SERVER",
    "TURN_SECRET",
    "TURN_TTL_SECS",
    "RING_TIMEOUT_SECS",
    "ZOMBIE_TIMEOUT_SECS",
    "PARTY_GRACE_SECS",
    "LOG_FORMAT",
];

pub fn videocall() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_videocall"));
    for name in SETTINGS {
        command.env_remove(name);
    }
    command.env("RUST_LOG", "info");
    command
}

/// The standalone binary on a data directory and free loopback ports.
pub struct Standalone {
    pub process: Process,
    pub http: SocketAddr,
    pub ops: SocketAddr,
    pub workers: SocketAddr,
    grpc: SocketAddr,
    data_dir: PathBuf,
    extra: Vec<String>,
}

impl Standalone {
    /// Starts it and waits until the relay, the gateway and the workers all say ready.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let (http, grpc, ops, workers) = (loopback(), loopback(), loopback(), loopback());
        let name = format!("videocall-{}", uuid::Uuid::now_v7().simple());
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let process = Self::spawn(&name, data_dir, [http, grpc, ops, workers], &extra);
        let mut app = Self { process, http, ops, workers, grpc, data_dir: data_dir.to_owned(), extra };
        app.wait_ready().await;
        app
    }

    fn spawn(name: &str, data_dir: &Path, [http, grpc, ops, workers]: [SocketAddr; 4], extra: &[String]) -> Process {
        let mut command = videocall();
        command
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--http={http}"))
            .arg(format!("--grpc={grpc}"))
            .arg(format!("--ops={ops}"))
            .arg(format!("--workers={workers}"))
            .args(extra);
        let logs = data_dir.parent().expect("data dir has a parent");
        Process::spawn(name, command, logs)
    }

    async fn wait_ready(&mut self) {
        self.process.wait_ready(self.http, "/readyz").await;
        self.process.wait_ready(self.ops, "/readyz").await;
        self.process.wait_ready(self.workers, "/readyz").await;
    }

    /// SIGKILL: gone at once, no chance to close anything (its in-process signal log is lost).
    pub async fn kill(&mut self) {
        self.process.signal("KILL");
        let status = self.process.wait_exit(Duration::from_secs(10)).await;
        assert!(!status.success(), "videocall was killed, not stopped: {status}");
    }

    /// Starts the binary again (after [`Standalone::kill`]) on the same ports, data directory and
    /// settings, logging to the same file; waits until it is ready.
    pub async fn start_again(&mut self) {
        let ports = [self.http, self.grpc, self.ops, self.workers];
        self.process = Self::spawn(&self.process.name.clone(), &self.data_dir, ports, &self.extra);
        self.wait_ready().await;
    }

    /// A token from `videocall --token USER --role ROLE` (the development secret, as the running
    /// binary uses).
    pub async fn token(user: &str, role: &str) -> String {
        let output = videocall().args(["--token", user, "--role", role]).output().await.expect("videocall --token");
        assert!(output.status.success(), "--token failed: {}", String::from_utf8_lossy(&output.stderr));
        let token = String::from_utf8(output.stdout).expect("utf-8").trim().to_owned();
        assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
        token
    }

    /// SIGTERM; it must exit 0 within 20 s. Returns everything it wrote.
    pub async fn stop(mut self) -> String {
        self.process.signal("TERM");
        let status = self.process.wait_exit(Duration::from_secs(20)).await;
        let output = self.process.output();
        assert!(status.success(), "videocall stopped with {status}:\n{output}");
        output
    }
}
