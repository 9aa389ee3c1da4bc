//! The shipped coturn configuration (docker/coturn/turnserver.conf) refuses to relay to
//! loopback, private and link-local peers, including the IPv4-mapped IPv6 form of loopback that
//! coturn 4.6.1 would otherwise let through. Each check is a raw TURN CreatePermission after an
//! authenticated Allocate; no packet is ever sent to a peer.

use std::{
    net::{IpAddr, SocketAddr},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio::net::UdpSocket;
use videocall_runtime::{config::Secret, ice::turn_password};
use webrtc::{
    stun::{
        agent::TransactionId,
        attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME},
        error_code::ErrorCodeAttribute,
        fingerprint::FINGERPRINT,
        integrity::MessageIntegrity,
        message::{
            CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter, METHOD_ALLOCATE,
            METHOD_CREATE_PERMISSION, Message, MessageType, Setter,
        },
        textattrs::TextAttribute,
    },
    turn::proto::{PROTO_UDP, peeraddr::PeerAddress, reqfamily::REQUESTED_FAMILY_IPV6, reqtrans::RequestedTransport},
};

struct Coturn {
    child: Child,
    addr: SocketAddr,
    secret: String,
    dir: std::path::PathBuf,
}

impl Coturn {
    /// Runs coturn with the shipped configuration, changed only where a loopback test must: the
    /// secret, listening and relay addresses, ports and log file. `extra` lines are appended.
    fn shipped(extra: &str) -> Self {
        Self::from_config(include_str!("../../../../docker/coturn/turnserver.conf"), extra)
    }

    /// The shipped configuration less every line starting with `dropped`.
    fn shipped_without(dropped: &str) -> Self {
        let shipped = include_str!("../../../../docker/coturn/turnserver.conf");
        let kept: String = shipped.lines().filter(|l| !l.starts_with(dropped)).map(|l| format!("{l}\n")).collect();
        Self::from_config(&kept, "")
    }

    /// Starts coturn with `shipped` plus `extra` on a fresh port; on another port again (at most
    /// three times) when the chosen one was taken by someone else before coturn bound it.
    fn from_config(shipped: &str, extra: &str) -> Self {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_from_config(shipped, extra) {
                Ok(turn) => return turn,
                Err(why) => failures.push(why),
            }
        }
        panic!("turnserver did not start: {}", failures.join("; "));
    }

    fn try_from_config(shipped: &str, extra: &str) -> Result<Self, String> {
        let port = videocall_testkit::coturn::free_udp_port();
        let secret = format!("hardening-{}", uuid::Uuid::now_v7().simple());
        let dir = std::env::temp_dir().join(format!("coturn-hardening-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let min_port = 30_000 + (port % 20_000);
        let config: String = shipped
            .lines()
            .filter(|l| {
                !["listening-port=", "static-auth-secret=", "tls-listening-port=", "cert=", "pkey="]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            + &format!(
                "listening-port={port}\nlistening-ip=127.0.0.1\nrelay-ip=127.0.0.1\nrelay-ip=::1\nstatic-auth-secret={secret}\n\
                 min-port={min_port}\nmax-port={}\nno-tls\nno-dtls\nlog-file={}\npidfile={}\n{extra}\n",
                min_port + 100,
                dir.join("turn.log").display(),
                dir.join("turn.pid").display(),
            );
        assert!(!config.contains("allow-loopback-peers") || extra.contains("allow-loopback-peers"));
        let file = dir.join("turnserver.conf");
        std::fs::write(&file, config).expect("config");
        let mut child = Command::new("turnserver")
            .arg("-c")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver is installed (scripts/test.sh installs Debian's coturn)");
        for _ in 0..100 {
            if std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
                if videocall_testkit::coturn::stun_answers(([127, 0, 0, 1], port).into()) {
                    return Ok(Self { child, addr: ([127, 0, 0, 1], port).into(), secret, dir });
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("port {port} is held but no STUN answer came from it"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!("port {port} was never bound"))
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn transact(sock: &UdpSocket, server: SocketAddr, setters: Vec<Box<dyn Setter>>) -> Message {
    let mut request = Message::new();
    request.build(&setters).expect("request");
    let mut buf = vec![0u8; 2048];
    for _ in 0..5 {
        sock.send_to(&request.raw, server).await.expect("send");
        if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await {
            let mut response = Message::new();
            response.unmarshal_binary(&buf[..n]).expect("a STUN message");
            return response;
        }
    }
    panic!("no answer from coturn");
}

fn error_code(m: &Message) -> Option<u16> {
    let mut code = ErrorCodeAttribute::default();
    code.get_from(m).ok().map(|()| code.code.0)
}

/// Allocates with a fresh REST-API credential (an IPv6 relay for IPv6 peers), then asks for a
/// permission to `peer`: Ok on success, Err(error code) on refusal.
async fn permission(turn: &Coturn, peer: IpAddr) -> Result<(), u16> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
    let username = format!("{}:hardening-test", chrono::Utc::now().timestamp() + 600);
    let password = turn_password(&Secret::new(turn.secret.clone()), &username);

    let challenge = transact(
        &sock,
        turn.addr,
        vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(RequestedTransport { protocol: PROTO_UDP }),
            Box::new(FINGERPRINT),
        ],
    )
    .await;
    assert_eq!(error_code(&challenge), Some(401), "an unauthenticated allocation is challenged");
    let realm = TextAttribute::get_from_as(&challenge, ATTR_REALM).expect("realm");
    let nonce = TextAttribute::get_from_as(&challenge, ATTR_NONCE).expect("nonce");
    let auth = |method| -> Vec<Box<dyn Setter>> {
        vec![Box::new(TransactionId::new()), Box::new(MessageType::new(method, CLASS_REQUEST))]
    };
    let credentials = || -> Vec<Box<dyn Setter>> {
        vec![
            Box::new(TextAttribute::new(ATTR_USERNAME, username.clone())),
            Box::new(realm.clone()),
            Box::new(nonce.clone()),
            Box::new(MessageIntegrity::new_long_term_integrity(username.clone(), realm.text.clone(), password.clone())),
            Box::new(FINGERPRINT),
        ]
    };
    let mut allocate = auth(METHOD_ALLOCATE);
    allocate.push(Box::new(RequestedTransport { protocol: PROTO_UDP }));
    if peer.is_ipv6() {
        allocate.push(Box::new(REQUESTED_FAMILY_IPV6));
    }
    allocate.extend(credentials());
    let allocated = transact(&sock, turn.addr, allocate).await;
    assert_eq!(
        allocated.typ.class,
        CLASS_SUCCESS_RESPONSE,
        "allocation with a minted credential: {:?}",
        error_code(&allocated)
    );

    let mut create = auth(METHOD_CREATE_PERMISSION);
    create.push(Box::new(PeerAddress { ip: peer, port: 9 }));
    create.extend(credentials());
    let reply = transact(&sock, turn.addr, create).await;
    if reply.typ.class == CLASS_ERROR_RESPONSE { Err(error_code(&reply).unwrap_or(0)) } else { Ok(()) }
}

#[tokio::test]
async fn the_shipped_coturn_config_refuses_private_loopback_and_mapped_peers() {
    let turn = Coturn::shipped("");
    // A documentation-range public address (permission only; nothing is sent to it).
    assert_eq!(permission(&turn, "198.51.100.7".parse().expect("ip")).await, Ok(()), "public peers are allowed");
    for peer in [
        "127.0.0.1",
        "10.0.0.1",
        "10.255.1.2",
        "169.254.169.254",
        "192.168.1.1",
        "172.16.0.1",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "fe80::1",
    ] {
        let result = permission(&turn, peer.parse().expect("ip")).await;
        assert!(matches!(result, Err(403)), "relaying to {peer} must be refused with 403, got {result:?}");
    }
}

/// Why the config names the IPv4-mapped range: without that line, this coturn relays to
/// `::ffff:127.0.0.1` even though 127.0.0.0/8 is denied (CVE-2026-27624, fixed in 4.9.0).
#[tokio::test]
async fn without_the_mapped_range_line_coturn_4_6_would_relay_to_mapped_loopback() {
    let turn = Coturn::shipped_without("denied-peer-ip=::ffff:");
    let result = permission(&turn, "::ffff:127.0.0.1".parse().expect("ip")).await;
    assert_eq!(result, Ok(()), "this coturn has the bypass; the shipped line is what closes it");
}
