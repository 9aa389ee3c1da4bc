//! A coturn on loopback for one test (Debian's `turnserver`, REST-API secret, relaying only to
//! loopback peers), and a STUN probe that tells when a server answers.

use std::{
    net::UdpSocket,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// A coturn on loopback for one test, configured as docs/adr/0007 describes.
pub struct Coturn {
    child: Child,
    port: u16,
    /// TCP port of the TLS listener, with [`Coturn::start_tls`].
    tls_port: Option<u16>,
    pub secret: String,
    _dir: std::path::PathBuf,
}

/// A UDP port that was free a moment ago, for a coturn's listener. Picked below the kernel's
/// ephemeral range (32768 and up) and the test coturns' relay ranges (20000 and up): a port the
/// kernel hands out is the one another test's socket (a WebRTC peer gathering candidates, a STUN
/// probe) may take between the pick and coturn's bind, which left a coturn deaf on CI.
pub fn free_udp_port() -> u16 {
    for _ in 0..500 {
        let candidate = 10_000 + (uuid::Uuid::now_v7().as_u128() % 10_000) as u16; // v7: random low bits
        if UdpSocket::bind(("127.0.0.1", candidate)).is_ok() {
            return candidate;
        }
    }
    UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).expect("a free port")
}

impl Coturn {
    /// Starts one, on a fresh port; tries again on another port (at most three times) when the
    /// chosen one turns out to be taken — the port was free a moment before, but another
    /// coturn's relay range or any other process may grab it meanwhile.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// As [`Coturn::start`], also listening for TURN over TLS ([`Coturn::tls_url`]) with a fresh
    /// self-signed certificate for 127.0.0.1.
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start(tls) {
                Ok(turn) => return turn,
                Err(why) => failures.push(why),
            }
        }
        panic!("turnserver did not start: {}", failures.join("; "));
    }

    fn try_start(tls: bool) -> Result<Self, String> {
        let port = free_udp_port();
        let secret = format!("coturn-secret-{}", uuid::Uuid::now_v7().simple());
        let dir = std::env::temp_dir().join(format!("coturn-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("turnserver.conf");
        std::fs::write(&empty, "").expect("empty config");
        let min_port = 20_000 + (port % 20_000);
        let tls_port = tls.then(crate::free_port);
        let mut tls_args = vec!["--no-tls".to_owned()];
        if let Some(tls_port) = tls_port {
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            let made = Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
                .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| format!("openssl: {e}"))?;
            if !made.success() {
                return Err("openssl could not make a certificate".into());
            }
            tls_args = vec![
                format!("--tls-listening-port={tls_port}"),
                format!("--cert={}", cert.display()),
                format!("--pkey={}", key.display()),
            ];
        }
        let child = Command::new("turnserver")
            .arg("-c")
            .arg(&empty)
            .args(["--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", "--use-auth-secret", "--realm=videocall.test"])
            .arg(format!("--listening-port={port}"))
            .arg(format!("--static-auth-secret={secret}"))
            .arg(format!("--min-port={min_port}"))
            .arg(format!("--max-port={}", min_port + 200))
            .args(&tls_args)
            .args(["--no-dtls", "--no-cli", "--allow-loopback-peers", "--no-stdout-log"])
            .arg(format!("--log-file={}", dir.join("turn.log").display()))
            .arg(format!("--pidfile={}", dir.join("turn.pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver is installed (scripts/test.sh installs Debian's coturn)");
        // Dropped (killed and reaped) on every failure below.
        let turn = Self { child, port, tls_port, secret, _dir: dir };
        // Ready once its port is held and it answers a STUN Binding request on it.
        for _ in 0..100 {
            let tls_up = tls_port.is_none_or(|p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok());
            if UdpSocket::bind(("127.0.0.1", port)).is_err() && tls_up {
                return if stun_answers(([127, 0, 0, 1], port).into()) {
                    Ok(turn)
                } else {
                    Err(format!("port {port} is held but no STUN answer came from it"))
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("port {port} was never bound"))
    }

    pub fn url(&self) -> String {
        format!("turn:127.0.0.1:{}?transport=udp", self.port)
    }

    /// TURN over TLS, with [`Coturn::start_tls`].
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("turns:127.0.0.1:{p}?transport=tcp"))
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until a STUN/TURN server on `addr` answers a Binding request (coturn binds its port a
/// little before it serves). Panics after 30 s.
pub fn wait_until_stun_answers(addr: std::net::SocketAddr) {
    assert!(stun_answers(addr), "no STUN answer from {addr}");
}

/// Whether a STUN/TURN server on `addr` answers a Binding request within 30 s (a loaded 2-core
/// machine has kept a starting coturn silent for over 10 s).
pub fn stun_answers(addr: std::net::SocketAddr) -> bool {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
    socket.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    // Binding request: type 0x0001, length 0, magic cookie, 12-byte transaction id.
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    request.extend_from_slice(&uuid::Uuid::now_v7().as_bytes()[..12]);
    let mut buf = [0u8; 512];
    for _ in 0..150 {
        let _ = socket.send_to(&request, addr);
        if socket.recv_from(&mut buf).is_ok() {
            return true;
        }
    }
    false
}
