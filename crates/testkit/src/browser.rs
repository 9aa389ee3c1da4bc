//! Headless Chromium driven over the DevTools protocol, for the web client's end-to-end tests:
//! Debian's `chromium` with a fake camera and microphone, and a minimal CDP client (commands by
//! id, events ignored).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

pub struct Chromium {
    child: tokio::process::Child,
    dir: std::path::PathBuf,
}

impl Chromium {
    /// Starts headless Chromium with a fake camera and microphone (permission prompts answered
    /// yes); returns it and its DevTools WebSocket URL.
    pub async fn launch() -> (Self, String) {
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
                // The TURN-over-TLS test's coturn has a self-signed certificate for 127.0.0.1;
                // Chromium checks TURN servers' certificates like any other.
                "--ignore-certificate-errors",
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

/// A tab opened by [`Cdp::open_tab`].
#[derive(Debug, Clone)]
pub struct Tab {
    pub target: String,
    pub session: String,
}

/// A minimal DevTools protocol client: commands by id, events ignored.
pub struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next: u64,
}

impl Cdp {
    /// Connects to a DevTools WebSocket URL (from [`Chromium::launch`]).
    pub async fn connect(devtools: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(devtools).await.expect("devtools websocket");
        Self { ws, next: 0 }
    }

    pub async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
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

    /// Opens `url` in a new tab; returns the tab's session id.
    pub async fn open(&mut self, url: &str) -> String {
        self.open_tab(url).await.session
    }

    /// Opens `url` in a new tab; returns the tab (its target id, to close it, and session id).
    pub async fn open_tab(&mut self, url: &str) -> Tab {
        let target = self.call(None, "Target.createTarget", json!({"url": url})).await;
        let target = target["targetId"].as_str().expect("target id").to_owned();
        let attached = self.call(None, "Target.attachToTarget", json!({"targetId": target, "flatten": true})).await;
        Tab { target, session: attached["sessionId"].as_str().expect("session").to_owned() }
    }

    /// Opens `url` in a new tab that runs `script` before any of the page's own scripts (on every
    /// load of the tab), e.g. to take a device away from `navigator.mediaDevices`.
    pub async fn open_tab_with_script(&mut self, url: &str, script: &str) -> Tab {
        let tab = self.open_tab("about:blank").await;
        self.call(Some(&tab.session), "Page.enable", json!({})).await;
        self.call(Some(&tab.session), "Page.addScriptToEvaluateOnNewDocument", json!({"source": script})).await;
        self.call(Some(&tab.session), "Page.navigate", json!({"url": url})).await;
        tab
    }

    /// Closes a tab, as a person closing it would (the page's `pagehide` runs).
    pub async fn close_tab(&mut self, tab: &Tab) {
        self.call(None, "Target.closeTarget", json!({"targetId": tab.target})).await;
    }

    /// Reloads the tab's page (the session stays attached; `eval` then runs in the new page).
    pub async fn reload(&mut self, session: &str) {
        self.call(Some(session), "Page.reload", json!({})).await;
    }

    /// Evaluates `expression` in the tab (promises awaited); returns its value.
    pub async fn eval(&mut self, session: &str, expression: &str) -> Value {
        let params = json!({"expression": expression, "returnByValue": true, "awaitPromise": true});
        let result = self.call(Some(session), "Runtime.evaluate", params).await;
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is true (at most `secs` seconds).
    pub async fn wait_for(&mut self, session: &str, expression: &str, secs: u64) {
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
