//! The agent's and the customer's pages in one headless Chromium, and what the Chromium tests ask
//! of them (expressions evaluated in a page, waits with deadlines), whichever server they talk to.

use std::time::{Duration, Instant};

use serde_json::Value;
use videocall_testkit::browser::{Cdp, Chromium, Tab};

/// One Chromium scenario at a time (two cores do not encode four video streams well, and the
/// fleet's processes want the CPU too). `trust.rs` keeps a lock of its own.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The remote video shows frames and has played for more than a second.
pub const VIDEO_PLAYS: &str = "(() => { const v = document.getElementById('remote'); \
    return v.videoWidth > 0 && v.currentTime > 1; })()";

/// Bytes received over all inbound RTP streams of the page's peer connection (0 without one).
pub const BYTES_RECEIVED: &str = "(async () => { const pc = window.vc.pc; if (!pc) return 0; let bytes = 0; \
    (await pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp') bytes += s.bytesReceived || 0; }); \
    return bytes; })()";

pub const STATUS: &str = "document.getElementById('status').textContent";
pub const CALLSTATE: &str = "document.getElementById('callstate').textContent";
pub const REMOTE_TIME: &str = "document.getElementById('remote').currentTime";

/// Starts watching the remote video in the page: every 100 ms, how long its `currentTime` has not
/// moved; the longest such stall is read with [`WORST_STALL_MS`].
pub const WATCH_STALLS: &str = "(() => { const v = document.getElementById('remote'); \
    const w = window.__stall = { last: v.currentTime, at: performance.now(), tick: performance.now(), \
      worst: 0, gap: 0 }; \
    setInterval(() => { const now = performance.now(); w.gap = Math.max(w.gap, now - w.tick); w.tick = now; \
      if (v.currentTime > w.last) { w.last = v.currentTime; w.at = now; } \
      else { w.worst = Math.max(w.worst, now - w.at); } }, 100); return true; })()";

/// `[stall, gap]` since [`WATCH_STALLS`]: the longest time (ms) the remote video stood still, and
/// the longest time between two looks at it (a throttled timer would miss stalls).
pub const WORST_STALL_MS: &str = "(() => { const w = window.__stall; \
    return [w.worst, Math.max(w.gap, performance.now() - w.tick)]; })()";

/// Chromium with an agent's and a customer's page open on a relay, both connected.
pub struct Pages {
    pub cdp: Cdp,
    pub agent: Tab,
    pub customer: Tab,
    _chromium: Chromium,
}

impl Pages {
    /// Opens `agent.html` and `customer.html` of the relay at `base` (media relay-only) with the
    /// tokens; returns once both pages say "connected as" and the agent is known to the gateway
    /// (its first request records it as an agent, so the call policy lets users call it).
    pub async fn open(base: &str, agent_token: &str, customer_token: &str) -> Self {
        Self::open_with(base, agent_token, customer_token, None).await
    }

    /// As [`Pages::open`]; `customer_script` runs in the customer's page before its own scripts.
    pub async fn open_with(base: &str, agent_token: &str, customer_token: &str, customer_script: Option<&str>) -> Self {
        let (chromium, devtools) = Chromium::launch().await;
        let mut cdp = Cdp::connect(&devtools).await;
        let agent = cdp.open_tab(&format!("{base}/agent.html?relay=1&token={agent_token}")).await;
        let customer_url = format!("{base}/customer.html?relay=1&token={customer_token}");
        let customer = match customer_script {
            Some(script) => cdp.open_tab_with_script(&customer_url, script).await,
            None => cdp.open_tab(&customer_url).await,
        };
        for tab in [&agent, &customer] {
            cdp.wait_for(&tab.session, &format!("{STATUS}.startsWith('connected as')"), 20).await;
        }
        assert_eq!(cdp.eval(&agent.session, "window.vc.history().then(() => true)").await, true);
        Self { cdp, agent, customer, _chromium: chromium }
    }

    pub async fn eval(&mut self, tab: &Tab, expression: &str) -> Value {
        self.cdp.eval(&tab.session, expression).await
    }

    /// Polls `expression` in `tab` every 100 ms until it is true; panics once `deadline` passed.
    pub async fn wait_until(&mut self, tab: &Tab, expression: &str, deadline: Instant) {
        loop {
            if self.cdp.eval(&tab.session, expression).await == Value::Bool(true) {
                return;
            }
            if Instant::now() >= deadline {
                let status = self.cdp.eval(&tab.session, STATUS).await;
                let call = self.cdp.eval(&tab.session, CALLSTATE).await;
                panic!("timed out waiting for `{expression}` (page status: {status}, call: {call})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// As [`Pages::wait_until`], for `secs` from now.
    pub async fn wait(&mut self, tab: &Tab, expression: &str, secs: u64) {
        self.wait_until(tab, expression, Instant::now() + Duration::from_secs(secs)).await;
    }

    /// The customer calls agent-1; returns once the agent's page rings.
    pub async fn customer_calls(&mut self) {
        let (agent, customer) = (self.agent.clone(), self.customer.clone());
        let call = "document.getElementById('agent').value = 'agent-1'; document.getElementById('call').click(); true";
        self.eval(&customer, call).await;
        self.wait(&agent, "!document.getElementById('incoming').hidden", 20).await;
    }

    /// Both pages play the other's video (more than a second of it) by `deadline`.
    pub async fn video_both_ways(&mut self, deadline: Instant) {
        for tab in [self.agent.clone(), self.customer.clone()] {
            self.wait_until(&tab, VIDEO_PLAYS, deadline).await;
        }
    }

    /// The agent accepts (the button); video plays on both pages within `secs`.
    pub async fn agent_accepts(&mut self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let agent = self.agent.clone();
        self.eval(&agent, "document.getElementById('accept').click(); true").await;
        self.video_both_ways(deadline).await;
    }

    /// The remote video's `currentTime` in `tab` (seconds).
    pub async fn remote_time(&mut self, tab: &Tab) -> f64 {
        self.eval(tab, REMOTE_TIME).await.as_f64().expect("currentTime")
    }

    /// Waits until the remote video of `tab` has played `secs` more seconds than it had now.
    pub async fn video_advances(&mut self, tab: &Tab, secs: f64, within: u64) {
        let played = self.remote_time(tab).await;
        self.wait(tab, &format!("{REMOTE_TIME} > {}", played + secs), within).await;
    }

    /// The customer hangs up; both pages show the call ended.
    pub async fn customer_hangs_up(&mut self) {
        let customer = self.customer.clone();
        self.eval(&customer, "document.getElementById('end').click(); true").await;
        for tab in [self.agent.clone(), customer] {
            self.wait(&tab, &format!("{CALLSTATE}.startsWith('ended')"), 20).await;
        }
    }
}
