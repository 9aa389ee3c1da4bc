//! Starting and stopping the `videocall` binary, and the fleet's separate binaries.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use videocall_testkit::{free_port, http_get};

/// Every variable the binaries read, so the caller's environment cannot change a test.
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
    "RING_TIMEOUT_SECS",
    "ZOMBIE_TIMEOUT_SECS",
    "LOG_FORMAT",
    "DATABASE_URL",
    "AMQP_URL",
    "REDIS_URL",
    "REDIS_HOST",
    "EVENTS_EXCHANGE",
    "CELL_ID",
    "GATEWAY_URL",
];

pub fn videocall() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_videocall"));
    for name in SETTINGS {
        command.env_remove(name);
    }
    command.env("RUST_LOG", "info");
    command
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A running service process whose stdout and stderr go to files (shown if it fails).
pub struct Process {
    pub name: String,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, mut command: tokio::process::Command, logs: &Path) -> Self {
        let log = logs.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = command
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { name: name.to_owned(), child, log }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `GET path` on `addr` answers 200 (at most 60 s; a cold SQLite or PostgreSQL
    /// migration takes a moment). Panics with the process's output if it exits or never does.
    pub async fn wait_ready(&mut self, addr: SocketAddr, path: &str) {
        for _ in 0..600 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}:\n{}", self.name, self.output());
            }
            if let Some((200, _)) = http_get(addr, path).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} not ready on {addr}{path} within 60 s:\n{}", self.name, self.output());
    }

    /// SIGTERM, then the exit status (at most 20 s, then it is killed and the test fails).
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("still running");
        let sent = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
        assert!(sent.success(), "SIGTERM to {}", self.name);
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!("{} did not stop within 20 s of SIGTERM:\n{}", self.name, self.output()),
        }
    }
}

/// The standalone binary on a data directory and free loopback ports.
pub struct Standalone {
    pub process: Process,
    pub http: SocketAddr,
    pub ops: SocketAddr,
    pub workers: SocketAddr,
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

impl Standalone {
    /// Starts it and waits until the relay, the gateway and the workers all say ready.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let (http, grpc, ops, workers) = (loopback(), loopback(), loopback(), loopback());
        let mut command = videocall();
        command
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--http={http}"))
            .arg(format!("--grpc={grpc}"))
            .arg(format!("--ops={ops}"))
            .arg(format!("--workers={workers}"))
            .args(extra);
        let logs = data_dir.parent().expect("data dir has a parent");
        let name = format!("videocall-{}", uuid::Uuid::now_v7().simple());
        let mut process = Process::spawn(&name, command, logs);
        process.wait_ready(http, "/readyz").await;
        process.wait_ready(ops, "/readyz").await;
        process.wait_ready(workers, "/readyz").await;
        Self { process, http, ops, workers }
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

    pub async fn stop(self) -> String {
        let output_file = self.process.log.clone();
        let status = self.process.terminate().await;
        let output = std::fs::read_to_string(output_file).unwrap_or_default();
        assert!(status.success(), "videocall stopped with {status}:\n{output}");
        output
    }
}

/// A binary of the workspace beside this test's own (scripts/test.sh builds them all first).
pub fn workspace_binary(name: &str) -> tokio::process::Command {
    let test_exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let path = test_exe.parent().and_then(Path::parent).expect("target dir").join(name);
    assert!(path.exists(), "{} is not built; run `cargo build --workspace` (scripts/test.sh does)", path.display());
    let mut command = tokio::process::Command::new(path);
    for name in SETTINGS {
        command.env_remove(name);
    }
    command.env("RUST_LOG", "info");
    command
}

/// A redis-server of the test's own (no persistence), so it can be restarted without touching the
/// machine's shared Redis.
pub struct OwnRedis {
    child: std::process::Child,
    pub port: u16,
}

impl OwnRedis {
    pub fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--port"])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let redis = Self { child, port }; // dropped (killed and reaped) if it never answers
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on {port}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (losing everything) and starts a fresh one on the same port.
    pub fn restart(mut self) -> Self {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(300));
        Self::start(self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
