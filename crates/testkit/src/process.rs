//! The fleet's binaries as real processes, for tests that kill them (SIGKILL) or stop them
//! (SIGTERM): found beside the test executable, output kept in a log file shown on failure.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use crate::http_get;

/// Every variable the services read, removed so the caller's environment cannot change a test.
const SETTINGS: &[&str] = &[
    "SERVICE_NAME",
    "CELL_ID",
    "LOG_FORMAT",
    "DATABASE_URL",
    "AMQP_URL",
    "REDIS_URL",
    "REDIS_HOST",
    "JWT_SECRET",
    "GRPC_LISTEN_ADDR",
    "HTTP_LISTEN_ADDR",
    "OPS_LISTEN_ADDR",
    "EVENTS_EXCHANGE",
    "OUTBOX_BATCH_SIZE",
    "OUTBOX_POLL_MS",
    "STUN_SERVERS",
    "TURN_SERVER",
    "TURN_SECRET",
    "GATEWAY_URL",
    "QUALITY_QUEUE",
    "DLX_EXCHANGE",
    "PREFETCH",
    "MAX_RETRIES",
    "QUEUE_TYPE",
    "SHUTDOWN_GRACE_SECS",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_USER",
    "MAX_MESSAGE_BYTES",
    "HEARTBEAT_SECS",
    "PRESENCE_SECS",
    "PARTY_GRACE_SECS",
    "RING_TIMEOUT_SECS",
    "ZOMBIE_TIMEOUT_SECS",
    "SWEEP_SCHEDULE",
    "CALL_POLICY",
    "JWT_PUBLIC_KEYS",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "USER_OFFLINE_QUEUE",
    "TICKET_CREATED_QUEUE",
    "RECORDINGS_DIR",
    "RECORDER_CANDIDATE_NETWORKS",
];

/// The path of a binary of the workspace: beside this test's own executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/<name>`). Panics with what to do when it
/// is not built (scripts/test.sh builds every target first).
pub fn workspace_binary_path(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("test binary path");
    let path = test_exe.parent().and_then(Path::parent).expect("target dir").join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build -p {name}` (scripts/test.sh builds the whole workspace first)",
        path.display()
    );
    path
}

/// A command for the workspace binary `name` with a clean environment (`RUST_LOG=info`).
pub fn workspace_binary(name: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(workspace_binary_path(name));
    for setting in SETTINGS {
        command.env_remove(setting);
    }
    command.env("RUST_LOG", "info").env("QUEUE_TYPE", crate::QUEUE_TYPE);
    command
}

/// A loopback address on a port that was free a moment ago.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], crate::free_port()))
}

/// A fresh directory under the system temp dir, for logs.
pub fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A running service process; stdout and stderr go to `<logs>/<name>.log` (appended, so a
/// restarted process keeps the earlier run's lines above its own).
pub struct Process {
    pub name: String,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, mut command: tokio::process::Command, logs: &Path) -> Self {
        let log = logs.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = command
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { name: name.to_owned(), child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("process still running")
    }

    /// Everything the process (and earlier runs logging to the same file) wrote.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `GET path` on `addr` answers 200 (at most 60 s: a cold migration takes a
    /// moment). Panics with the process's output if it exits first or never gets there.
    pub async fn wait_ready(&mut self, addr: SocketAddr, path: &str) {
        if let Err(why) = self.try_wait_ready(addr, path).await {
            panic!("{why}:\n{}", self.output());
        }
    }

    /// As [`Process::wait_ready`], but says why instead of panicking (an exit — e.g. its port was
    /// taken meanwhile — or 60 s without a 200), for callers that try again on other ports.
    pub async fn try_wait_ready(&mut self, addr: SocketAddr, path: &str) -> Result<(), String> {
        for _ in 0..600 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("{} exited with {status}", self.name));
            }
            if let Some((200, _)) = http_get(addr, path).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("{} not ready on {addr}{path} within 60 s", self.name))
    }

    /// Whether it is still running (not exited, not killed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (`KILL`, `TERM`, …) with kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let sent = std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("kill(1)");
        assert!(sent.success(), "SIG{signal} to {} ({pid})", self.name);
    }

    /// SIGKILL (no chance to clean up), then waits for it to be gone.
    pub async fn kill_9(mut self) {
        self.signal("KILL");
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) => {
                let status = status.expect("wait");
                assert!(!status.success(), "{} was killed, not stopped: {status}", self.name);
            }
            Err(_) => panic!("{} still running 10 s after SIGKILL", self.name),
        }
    }

    /// The exit status, waiting at most `limit` (then it is killed and the test fails).
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!("{} still running after {limit:?}:\n{}", self.name, self.output()),
        }
    }

    /// SIGTERM, then the exit status (at most `limit`).
    pub async fn terminate(mut self, limit: Duration) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit(limit).await
    }
}
