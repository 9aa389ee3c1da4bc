//! Scenario 6: the signal load of scenario 1 against a PeerJS server (npm package `peer`, run
//! with node), side by side with our relay. PeerJS protocol (verified in peer 1.0.2's source,
//! src/services/webSocketServer and src/messageHandler): WebSocket
//! `ws://host:port/peerjs?key=peerjs&id=<id>&token=<t>`, greeting `{"type":"OPEN"}`; a client
//! frame `{"type":"OFFER"|"ANSWER"|"CANDIDATE","payload":..,"dst":<id>}` is forwarded to `dst` as
//! `{"type":..,"src":..,"dst":..,"payload":..}`. No ack, no auth, no sequence, no persistence.

use std::{path::PathBuf, process::Stdio, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::{
    Scale,
    fleet::Fleet,
    report::Report,
    signal::{FrameFn, HEADER, WsPair, candidate, relay_pairs, run_ws_pairs, sdp},
    stats::phase,
    wsclient,
};

pub const PEER_VERSION: &str = "1.0.2";

fn install_dir() -> PathBuf {
    std::env::temp_dir().join(format!("loadgen-peerjs-{PEER_VERSION}"))
}

/// Installs `peer` with npm into a temp dir (once) and returns the path of its server script.
async fn install() -> anyhow::Result<PathBuf> {
    let dir = install_dir();
    let script = dir.join("node_modules/peer/dist/bin/peerjs.js");
    if script.exists() {
        return Ok(script);
    }
    std::fs::create_dir_all(&dir)?;
    phase("peerjs", format!("npm install peer@{PEER_VERSION} into {}", dir.display()));
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--no-save", &format!("peer@{PEER_VERSION}")])
            .current_dir(&dir)
            .output(),
    )
    .await
    .context("npm install took over 180 s")?
    .context("run npm (is node/npm installed?)")?;
    if !out.status.success() || !script.exists() {
        bail!("npm install peer failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default());
    }
    Ok(script)
}

struct PeerServer {
    child: Child,
    port: u16,
}

async fn start(script: &PathBuf, concurrent: usize) -> anyhow::Result<PeerServer> {
    let port = videocall_testkit::free_port();
    let child = Command::new("node")
        .arg(script)
        .args(["--port", &port.to_string(), "--host", "127.0.0.1", "--concurrent_limit", &concurrent.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start node")?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(PeerServer { child, port });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("PeerJS server did not listen on {port} within 10 s")
}

async fn peerjs_pairs(server: &PeerServer, scale: &Scale) -> anyhow::Result<Vec<WsPair>> {
    let url = |id: &str| format!("ws://127.0.0.1:{}/peerjs?key=peerjs&id={id}&token=tok-{id}", server.port);
    let mut pairs = Vec::new();
    for k in 0..scale.pairs {
        let (a, b) = (format!("pa{k}"), format!("pb{k}"));
        let receiver = wsclient::connect(&url(&b), "OPEN").await?;
        let sender = wsclient::connect(&url(&a), "OPEN").await?;
        // Formatted like our relay's frames (`signal_frame`), so both generators cost the same.
        let frame: FrameFn = Arc::new(move |i, t| {
            if i == 0 {
                let sdp = serde_json::to_string(&sdp(i, t)).unwrap_or_default();
                format!(
                    r#"{{"type":"OFFER","dst":"{b}","payload":{{"sdp":{{"type":"offer","sdp":{sdp}}},"type":"media","connectionId":"mc_lg"}}}}"#
                )
            } else {
                format!(
                    r#"{{"type":"CANDIDATE","dst":"{b}","payload":{{"candidate":{},"type":"media","connectionId":"mc_lg"}}}}"#,
                    candidate(i, t)
                )
            }
        });
        pairs.push(WsPair { sender, receiver, frame });
    }
    Ok(pairs)
}

pub async fn run(scale: &Scale) -> anyhow::Result<Report> {
    let mut report = Report::new("peerjs", "6. Same signal load: our relay vs PeerJS server", &HEADER);
    phase("peerjs", "our relay: gateway + 2 relays");
    let fleet = Fleet::spawn(2, crate::fleet::no_ice()).await?;
    let pairs = relay_pairs(&fleet, scale, "pj2").await?;
    let two = run_ws_pairs("our relay, A and B on two relays (via Redis)", pairs, scale).await;
    fleet.stop().await;
    phase("peerjs", "our relay: gateway + 1 relay");
    let fleet = Fleet::spawn(1, crate::fleet::no_ice()).await?;
    let pairs = relay_pairs(&fleet, scale, "pj1").await?;
    let one = run_ws_pairs("our relay, A and B on one relay (via Redis)", pairs, scale).await;
    fleet.stop().await;
    for r in [&two, &one] {
        report.row(r.row(scale.pairs, scale.window));
        r.check(&mut report, true);
    }
    let peer = async {
        let script = install().await?;
        let mut server = start(&script, scale.pairs * 2 + 10).await?;
        phase("peerjs", format!("PeerJS {PEER_VERSION} on 127.0.0.1:{}", server.port));
        let pairs = peerjs_pairs(&server, scale).await?;
        let result =
            run_ws_pairs(&format!("PeerJS server {PEER_VERSION} (node {})", node_version().await), pairs, scale).await;
        let _ = server.child.start_kill();
        let _ = server.child.wait().await;
        anyhow::Ok(result)
    }
    .await;
    match peer {
        Ok(p) => {
            report.row(p.row(scale.pairs, scale.window));
            p.check(&mut report, false);
            let ratio = one.rate() / p.rate().max(1e-9);
            report.verdict(
                "one relay instance ≥ 1.5× PeerJS's msg/s",
                ratio >= 1.5,
                format!("{:.0}%: {:.0} vs {:.0} msg/s", ratio * 100.0, one.rate(), p.rate()),
            );
            let (ours, theirs) = (one.latency.p99_us, p.latency.p99_us);
            report.verdict(
                "one relay instance's p99 ≤ half of PeerJS's",
                ours * 2 <= theirs,
                format!("{} ms vs {} ms", crate::stats::ms(ours), crate::stats::ms(theirs)),
            );
        }
        Err(e) => report.problem(format!("PeerJS could not run here: {e:#}")),
    }
    report.notes.push(format!(
        "Same pairs, frames and window as scenario 1 ({} in flight per pair). PeerJS is one node process keeping peers in memory: it forwards the parsed frame to `dst`'s socket without authentication beyond the id/token pair, acks, sequence numbers, replay or a second instance. Our relay authenticates with a JWT before the upgrade, checks the call's party, sequences, logs (for replay) and publishes every signal through Redis even when both parties are on the same relay, and acks the sender.",
        scale.window
    ));
    Ok(report)
}

async fn node_version() -> String {
    match Command::new("node").arg("--version").output().await {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Err(_) => "?".into(),
    }
}
