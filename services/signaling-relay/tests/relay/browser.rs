//! The web client in real headless Chromium (fake camera and microphone): a customer calls, the
//! agent answers, both see the other's video, quality numbers show, the customer hangs up, and
//! the call appears in both histories with its duration. Media goes relay-only through a real
//! coturn on loopback. Chromium is driven over the DevTools protocol.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};
use videocall_platform::{config::Secret, ice::IceConfig};

use crate::{
    helpers::{FleetOptions, spawn_fleet},
    webrtc::Coturn,
};

struct Chromium {
    child: tokio::process::Child,
    dir: std::path::PathBuf,
}

impl Chromium {
    async fn launch() -> (Self, String) {
        let dir = std::env::temp_dir().join(format!("chromium-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("profile dir");
        let child = tokio::process::Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                "--autoplay-policy=no-user-gesture-required",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", dir.display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium is installed (scripts/test.sh installs Debian's chromium)");
        let file = dir.join("DevToolsActivePort");
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Some((port, path)) = text.split_once('\n')
                && !path.trim().is_empty()
            {
                return (Self { child, dir }, format!("ws://127.0.0.1:{}{}", port.trim(), path.trim()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromium did not open its DevTools port");
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A minimal DevTools protocol client: commands by id, events ignored.
struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next: u64,
}

impl Cdp {
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next += 1;
        let mut command = json!({"id": self.next, "method": method, "params": params});
        if let Some(s) = session {
            command["sessionId"] = s.into();
        }
        self.ws.send(Message::text(command.to_string())).await.expect("send to chromium");
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("chromium answers")
                .expect("open")
                .expect("frame");
            let Message::Text(text) = message else { continue };
            let reply: Value = serde_json::from_str(text.as_str()).expect("json");
            if reply["id"] == self.next {
                assert!(reply.get("error").is_none(), "{method} failed: {reply}");
                return reply["result"].clone();
            }
        }
    }

    async fn open(&mut self, url: &str) -> String {
        let target = self.call(None, "Target.createTarget", json!({"url": url})).await;
        let attached =
            self.call(None, "Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true})).await;
        attached["sessionId"].as_str().expect("session").to_owned()
    }

    async fn eval(&mut self, session: &str, expression: &str) -> Value {
        let params = json!({"expression": expression, "returnByValue": true, "awaitPromise": true});
        let result = self.call(Some(session), "Runtime.evaluate", params).await;
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is true (at most `secs` seconds).
    async fn wait_for(&mut self, session: &str, expression: &str, secs: u64) {
        for _ in 0..secs * 5 {
            if self.eval(session, expression).await == Value::Bool(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let status = self.eval(session, "document.getElementById('status').textContent").await;
        panic!("timed out waiting for `{expression}` (page status: {status})");
    }
}

const VIDEO_PLAYS: &str = "(() => { const v = document.getElementById('remote'); \
    return v.videoWidth > 0 && v.currentTime > 1; })()";

#[tokio::test]
async fn a_customer_and_an_agent_talk_in_chromium() {
    let turn = Coturn::start();
    let ice = IceConfig {
        stun_urls: vec![],
        turn_urls: vec![turn.url()],
        turn_secret: Some(Secret::new(turn.secret.clone())),
        turn_ttl: Duration::from_secs(600),
    };
    let fleet = spawn_fleet(FleetOptions { relays: 1, ice, ..Default::default() }).await;
    let base = format!("http://{}", fleet.relays[0]);
    let (_chromium, devtools) = Chromium::launch().await;
    let (ws, _) = tokio_tungstenite::connect_async(devtools.as_str()).await.expect("devtools");
    let mut cdp = Cdp { ws, next: 0 };

    let agent = cdp.open(&format!("{base}/agent.html?relay=1&token={}", fleet.token("agent-1"))).await;
    let customer = cdp.open(&format!("{base}/customer.html?relay=1&token={}", fleet.token("carol"))).await;
    for page in [&agent, &customer] {
        cdp.wait_for(page, "document.getElementById('status').textContent.startsWith('connected as')", 20).await;
    }

    cdp.eval(
        &customer,
        "document.getElementById('agent').value = 'agent-1'; document.getElementById('call').click(); true",
    )
    .await;
    cdp.wait_for(&agent, "!document.getElementById('incoming').hidden", 20).await;
    cdp.eval(&agent, "document.getElementById('accept').click(); true").await;

    cdp.wait_for(&agent, VIDEO_PLAYS, 45).await;
    cdp.wait_for(&customer, VIDEO_PLAYS, 45).await;
    cdp.wait_for(&agent, "document.getElementById('q-bitrate').textContent.endsWith('kbit/s')", 20).await;
    let state = cdp.eval(&customer, "document.getElementById('callstate').textContent").await;
    assert_eq!(state, "active");

    cdp.eval(&customer, "document.getElementById('end').click(); true").await;
    cdp.wait_for(&agent, "document.getElementById('callstate').textContent.startsWith('ended')", 20).await;
    for page in [&agent, &customer] {
        cdp.wait_for(
            page,
            "(() => { const r = document.querySelector('#history tr'); \
              return !!r && r.children[2].textContent === 'ended' && /^[0-9]+ s$/.test(r.children[3].textContent); })()",
            20,
        )
        .await;
    }
    let duration = cdp.eval(&customer, "document.querySelector('#history tr').children[3].textContent").await;
    assert_ne!(duration, "0 s", "the call lasted while video played");
    fleet.stop().await;
}
