//! A call a person can trust (issue 14), in headless Chromium against the standalone binary, media
//! relay-only through a real coturn on loopback:
//! - no media before the agent accepts: the agent's page opens no camera and builds no peer
//!   connection while it rings, and nothing arrives on either page; Accept → video both ways;
//! - the agent's page is reloaded mid-call: it rejoins and video flows both ways again;
//! - the customer mutes and turns the camera off: the agent's remote tracks go muted and the
//!   agent's page says so; both come back;
//! - the customer's page is closed: the call ends as `connection_lost` after the grace period;
//! - the binary is SIGKILLed and started again on the same ports: both pages reconnect, media never
//!   stops, and a hang-up afterwards ends the call for both;
//! - a token expires: the relay closes the socket (4001) and the page asks for a fresh link instead
//!   of reconnecting.
//!
//! The scenarios run one at a time (each has its own Chromium, binary and coturn; two cores do
//! not encode four video streams well).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use videocall_runtime::auth::{JwtKeys, Role};
use videocall_testkit::{
    browser::{Cdp, Chromium},
    coturn::Coturn,
};

use crate::{
    pages::{BYTES_RECEIVED, CALLSTATE, ONE_AT_A_TIME, Pages, STATUS, VIDEO_PLAYS},
    process::{Standalone, temp_dir},
};

/// The DTLS fingerprint of the other side's description: a new one means a new peer connection.
const REMOTE_FINGERPRINT: &str = "(() => { const pc = window.vc.pc; const d = pc && pc.remoteDescription; \
    return d ? (d.sdp.match(/a=fingerprint:(\\S+ \\S+)/) || [])[1] || null : null; })()";

/// The `muted` flag of the page's remote track of `kind`.
fn remote_muted(kind: &str) -> String {
    format!(
        "(() => {{ const t = window.vc.pc.getTransceivers().find((t) => t.receiver.track.kind === '{kind}'); \
         return t.receiver.track.muted; }})()"
    )
}

/// A standalone binary with coturn, and Chromium with an agent's and a customer's page connected.
struct Scene {
    pages: Pages,
    app: Standalone,
    dir: PathBuf,
    _turn: Coturn,
}

impl std::ops::Deref for Scene {
    type Target = Pages;
    fn deref(&self) -> &Pages {
        &self.pages
    }
}

impl std::ops::DerefMut for Scene {
    fn deref_mut(&mut self) -> &mut Pages {
        &mut self.pages
    }
}

impl Scene {
    async fn start(extra: &[&str]) -> Self {
        Self::start_with(extra, None).await
    }

    /// `customer_script` runs in the customer's page before its own scripts.
    async fn start_with(extra: &[&str], customer_script: Option<&str>) -> Self {
        let turn = Coturn::start();
        let url = turn.url();
        Self::start_on(turn, &url, extra, customer_script).await
    }

    /// With `turn` handed to the pages as `turn_url` (the only ICE server; the pages use relay
    /// candidates only).
    async fn start_on(turn: Coturn, turn_url: &str, extra: &[&str], customer_script: Option<&str>) -> Self {
        let dir = temp_dir("vc-trust");
        let turn_server = format!("--turn-server={turn_url}");
        let turn_secret = format!("--turn-secret={}", turn.secret);
        let mut args = vec![turn_server.as_str(), turn_secret.as_str()];
        args.extend_from_slice(extra);
        let app = Standalone::start(&dir.join("data"), &args).await;
        let base = format!("http://{}", app.http);
        let agent_token = Standalone::token("agent-1", "agent").await;
        let customer_token = Standalone::token("customer-1", "user").await;
        let pages = Pages::open_with(&base, &agent_token, &customer_token, customer_script).await;
        Self { pages, app, dir, _turn: turn }
    }

    /// [`Pages::video_advances`] for the tab with this CDP session.
    async fn video_advances_in(&mut self, session: &str, secs: f64, within: u64) {
        let tab = if self.agent.session == session { self.agent.clone() } else { self.customer.clone() };
        self.pages.video_advances(&tab, secs, within).await;
    }

    async fn stop(self) {
        drop(self.pages);
        self.app.stop().await;
        std::fs::remove_dir_all(self.dir).ok();
    }
}

#[tokio::test]
async fn no_media_flows_before_the_agent_accepts() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut scene = Scene::start(&[]).await;
    scene.customer_calls().await;

    // The agent does nothing for 5 s: its camera stays closed, it has no peer connection, and no
    // media arrives on either page.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (agent, customer) = (scene.agent.session.clone(), scene.customer.session.clone());
    assert_eq!(scene.cdp.eval(&agent, "window.vc.localStream === null && window.vc.pc === null").await, true);
    assert_eq!(scene.cdp.eval(&agent, "document.getElementById('local').srcObject === null").await, true);
    assert_eq!(scene.cdp.eval(&agent, BYTES_RECEIVED).await, 0);
    assert_eq!(scene.cdp.eval(&customer, "window.vc.pc !== null").await, true, "the caller offered");
    assert_eq!(scene.cdp.eval(&customer, BYTES_RECEIVED).await, 0);
    assert_eq!(scene.cdp.eval(&customer, "document.getElementById('remote').videoWidth").await, 0);
    assert_eq!(scene.cdp.eval(&customer, CALLSTATE).await, "ringing");
    // The tab says so while it rings.
    let title = scene.cdp.eval(&agent, "document.title").await;
    assert!(title.as_str().is_some_and(|t| t.starts_with("Incoming call")), "{title}");

    // Accept (with the keyboard: Enter) → video both ways.
    let started = Instant::now();
    scene.cdp.eval(&agent, "document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'})); true").await;
    for session in [&agent, &customer] {
        let left = 10u64.saturating_sub(started.elapsed().as_secs()).max(1);
        scene.cdp.wait_for(session, VIDEO_PLAYS, left).await;
    }
    assert_ne!(scene.cdp.eval(&agent, "document.title").await, title, "the ring stopped");
    assert_eq!(scene.cdp.eval(&agent, CALLSTATE).await, "active");
    scene.cdp.wait_for(&agent, "/^[0-9]{2}:[0-9]{2}$/.test(document.getElementById('timer').textContent)", 5).await;
    scene.customer_hangs_up().await;
    // The camera is closed again once the call is over.
    scene.cdp.wait_for(&agent, "window.vc.localStream === null && window.vc.pc === null", 10).await;
    scene.stop().await;
}

#[tokio::test]
async fn a_reloaded_agent_page_rejoins_the_call() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut scene = Scene::start(&[]).await;
    scene.customer_calls().await;
    scene.agent_accepts(20).await;
    let (agent, customer) = (scene.agent.session.clone(), scene.customer.session.clone());
    // The token is gone from the address bar (kept in the tab's sessionStorage for the reload).
    assert_eq!(scene.cdp.eval(&agent, "location.search").await, "?relay=1");
    let before = scene.cdp.eval(&customer, REMOTE_FINGERPRINT).await;
    assert!(before.is_string(), "{before}");

    let reloaded = Instant::now();
    scene.cdp.reload(&agent).await;
    let left = || 10u64.saturating_sub(reloaded.elapsed().as_secs()).max(1);
    scene.cdp.wait_for(&agent, &format!("{STATUS}.startsWith('connected as')"), left()).await;
    // The customer's page answered the rejoined page's offer on a new peer connection…
    scene.cdp.wait_for(&customer, &format!("{REMOTE_FINGERPRINT} !== {before}"), left()).await;
    // …and video flows both ways again.
    scene.cdp.wait_for(&agent, VIDEO_PLAYS, left()).await;
    scene.cdp.wait_for(&customer, VIDEO_PLAYS, left()).await;
    let elapsed = reloaded.elapsed();
    scene.video_advances_in(&customer, 1.0, 10).await;
    scene.video_advances_in(&agent, 1.0, 10).await;
    assert_eq!(scene.cdp.eval(&agent, CALLSTATE).await, "active");
    assert_eq!(scene.cdp.eval(&customer, CALLSTATE).await, "active");
    eprintln!("media both ways {elapsed:?} after the reload");
    scene.customer_hangs_up().await;
    scene.stop().await;
}

#[tokio::test]
async fn mute_and_camera_off_are_seen_by_the_other_party() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut scene = Scene::start(&[]).await;
    scene.customer_calls().await;
    scene.agent_accepts(20).await;
    let (agent, customer) = (scene.agent.session.clone(), scene.customer.session.clone());
    let label = "document.getElementById('peer-media').textContent";
    assert_eq!(scene.cdp.eval(&agent, label).await, "");
    assert_eq!(scene.cdp.eval(&agent, &remote_muted("audio")).await, false);

    scene.cdp.eval(&customer, "document.getElementById('mute').click(); true").await;
    scene.cdp.wait_for(&agent, &remote_muted("audio"), 10).await;
    scene.cdp.wait_for(&agent, &format!("{label} === 'customer muted'"), 10).await;
    assert_eq!(scene.cdp.eval(&customer, "window.vc.micOn").await, false);
    assert_eq!(scene.cdp.eval(&customer, "document.getElementById('mute').textContent").await, "Unmute");

    scene.cdp.eval(&customer, "document.getElementById('camera').click(); true").await;
    scene.cdp.wait_for(&agent, &remote_muted("video"), 10).await;
    scene.cdp.wait_for(&agent, &format!("{label}.includes(\"customer's camera is off\")"), 10).await;
    assert_eq!(scene.cdp.eval(&customer, "window.vc.cameraOn").await, false);

    // The agent's own camera and microphone were not touched.
    assert_eq!(scene.cdp.eval(&customer, &remote_muted("video")).await, false);
    assert_eq!(scene.cdp.eval(&customer, "document.getElementById('peer-media').textContent").await, "");

    scene.cdp.eval(&customer, "document.getElementById('mute').click(); true").await;
    scene.cdp.wait_for(&agent, &format!("!{}", remote_muted("audio")), 10).await;
    scene.cdp.eval(&customer, "document.getElementById('camera').click(); true").await;
    scene.cdp.wait_for(&agent, &format!("!{}", remote_muted("video")), 10).await;
    scene.cdp.wait_for(&agent, &format!("{label} === ''"), 10).await;
    assert_eq!(scene.cdp.eval(&customer, "window.vc.micOn && window.vc.cameraOn").await, true);
    scene.video_advances_in(&agent, 1.0, 10).await;
    scene.customer_hangs_up().await;
    scene.stop().await;
}

#[tokio::test]
async fn a_closed_customer_page_ends_the_call_after_the_grace_period() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut scene = Scene::start(&["--party-grace-secs=3"]).await;
    scene.customer_calls().await;
    scene.agent_accepts(20).await;
    let customer = scene.customer.clone();
    scene.cdp.close_tab(&customer).await;
    let closed = Instant::now();
    let agent = scene.agent.session.clone();
    scene.cdp.wait_for(&agent, &format!("{CALLSTATE} === 'ended (connection_lost)'"), 3 + 5).await;
    eprintln!("the agent's page showed the call ended {:?} after the customer's page closed", closed.elapsed());
    scene.cdp.wait_for(&agent, "window.vc.pc === null && window.vc.localStream === null", 5).await;
    scene.stop().await;
}

#[tokio::test]
async fn both_pages_reconnect_after_the_binary_is_killed_and_started_again() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut scene = Scene::start(&[]).await;
    scene.customer_calls().await;
    scene.agent_accepts(20).await;
    let (agent, customer) = (scene.agent.session.clone(), scene.customer.session.clone());

    scene.app.kill().await;
    for session in [&agent, &customer] {
        scene.cdp.wait_for(session, &format!("{STATUS}.startsWith('reconnecting')"), 10).await;
    }
    // Media goes on peer to peer (through coturn) while the relay is gone.
    scene.video_advances_in(&agent, 1.0, 10).await;
    scene.video_advances_in(&customer, 1.0, 10).await;

    scene.app.start_again().await;
    let ready = Instant::now();
    for session in [&agent, &customer] {
        let left = 5u64.saturating_sub(ready.elapsed().as_secs()).max(1);
        scene.cdp.wait_for(session, &format!("{STATUS}.startsWith('connected as')"), left).await;
    }
    eprintln!("both pages connected again {:?} after the binary was ready", ready.elapsed());
    for session in [&agent, &customer] {
        assert_eq!(scene.cdp.eval(session, "window.vc.reconnects").await, 1);
        assert_eq!(scene.cdp.eval(session, "window.vc.pc.connectionState").await, "connected");
        assert_eq!(scene.cdp.eval(session, CALLSTATE).await, "active");
    }
    scene.video_advances_in(&agent, 1.0, 10).await;
    scene.video_advances_in(&customer, 1.0, 10).await;
    scene.customer_hangs_up().await;
    scene.stop().await;
}

#[tokio::test]
async fn an_expired_token_asks_for_a_fresh_link_instead_of_reconnecting() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = temp_dir("vc-trust-expiry");
    let app = Standalone::start(&dir.join("data"), &[]).await;
    let keys =
        JwtKeys::none().with_signing_key(videocall::standalone_key(&videocall::default_key_file()).expect("the key"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let token = keys.mint("customer-1", Role::User, i64::try_from(now).expect("seconds") + 5);
    let (_chromium, devtools) = Chromium::launch().await;
    let mut cdp = Cdp::connect(&devtools).await;
    let page = cdp.open(&format!("http://{}/customer.html?token={token}", app.http)).await;
    cdp.wait_for(&page, &format!("{STATUS}.startsWith('connected as')"), 20).await;
    // The relay closes the socket with 4001 when the token expires; the page says what to do and
    // schedules no reconnect.
    let expired = format!("{STATUS}.startsWith('your access link has expired')");
    cdp.wait_for(&page, &expired, 15).await;
    assert_eq!(cdp.eval(&page, "!document.getElementById('banner').hidden").await, true);
    assert_eq!(cdp.eval(&page, "window.vc.ws === null && window.vc.reconnectTimer === null").await, true);
    assert_eq!(cdp.eval(&page, "window.vc.reconnects").await, 0);
    // A reload (the token comes from the tab's sessionStorage) does not try either.
    cdp.reload(&page).await;
    cdp.wait_for(&page, &expired, 10).await;
    assert_eq!(cdp.eval(&page, "window.vc.ws === null && window.vc.everConnected === false").await, true);
    drop(cdp);
    app.stop().await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn a_reloaded_customer_page_rejoins_while_ringing_and_mid_call() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut scene = Scene::start(&[]).await;
    scene.customer_calls().await;
    let (agent, customer) = (scene.agent.session.clone(), scene.customer.session.clone());

    // Reloaded while it rings: the caller's page offers again from a new peer connection; the
    // agent's page, still ringing, keeps only that newest offer and answers it on Accept.
    scene.cdp.reload(&customer).await;
    scene.cdp.wait_for(&customer, &format!("{STATUS}.startsWith('connected as')"), 10).await;
    scene
        .cdp
        .wait_for(&customer, "window.vc.pc !== null && window.vc.pc.signalingState === 'have-local-offer'", 10)
        .await;
    assert_eq!(
        scene.cdp.eval(&agent, "!document.getElementById('incoming').hidden && window.vc.pc === null").await,
        true
    );
    scene.agent_accepts(20).await;

    // Reloaded mid-call: video both ways again within 10 s.
    let before = scene.cdp.eval(&agent, REMOTE_FINGERPRINT).await;
    let reloaded = Instant::now();
    scene.cdp.reload(&customer).await;
    let left = || 10u64.saturating_sub(reloaded.elapsed().as_secs()).max(1);
    scene.cdp.wait_for(&agent, &format!("{REMOTE_FINGERPRINT} !== {before}"), left()).await;
    scene.cdp.wait_for(&customer, VIDEO_PLAYS, left()).await;
    scene.cdp.wait_for(&agent, VIDEO_PLAYS, left()).await;
    eprintln!("media both ways {:?} after the customer's reload", reloaded.elapsed());
    scene.video_advances_in(&agent, 1.0, 10).await;
    scene.video_advances_in(&customer, 1.0, 10).await;
    scene.customer_hangs_up().await;
    scene.stop().await;
}

#[tokio::test]
async fn a_customer_without_a_camera_talks_audio_only_and_still_sees_the_agent() {
    let _one = ONE_AT_A_TIME.lock().await;
    // The customer's machine has no camera: every request for video fails as Chromium's does.
    let no_camera = "(() => { const md = navigator.mediaDevices; const real = md.getUserMedia.bind(md); \
        md.getUserMedia = (c) => c && c.video \
          ? Promise.reject(new DOMException('Requested device not found', 'NotFoundError')) : real(c); })();";
    let mut scene = Scene::start_with(&[], Some(no_camera)).await;
    scene.customer_calls().await;
    let (agent, customer) = (scene.agent.session.clone(), scene.customer.session.clone());
    scene.cdp.eval(&agent, "document.getElementById('accept').click(); true").await;
    // The agent's video reaches the customer (a recvonly video transceiver on the customer's side)…
    scene.cdp.wait_for(&customer, VIDEO_PLAYS, 20).await;
    // …the customer is told plainly, and the agent's page shows the camera off.
    let note = scene.cdp.eval(&customer, "document.getElementById('media-note').textContent").await;
    assert!(note.as_str().is_some_and(|n| n.contains("no camera was found") && n.contains("audio-only")), "{note}");
    assert_eq!(scene.cdp.eval(&customer, "document.getElementById('camera').disabled").await, true);
    scene
        .cdp
        .wait_for(&agent, "document.getElementById('peer-media').textContent === \"customer's camera is off\"", 10)
        .await;
    // The customer's sound arrives at the agent.
    let audio_bytes = "(async () => { let b = 0; (await window.vc.pc.getStats()).forEach((s) => { \
        if (s.type === 'inbound-rtp' && s.kind === 'audio') b += s.bytesReceived; }); return b > 1000; })()";
    scene.cdp.wait_for(&agent, audio_bytes, 10).await;
    assert_eq!(scene.cdp.eval(&agent, "document.getElementById('remote').videoWidth").await, 0);
    scene.customer_hangs_up().await;
    scene.stop().await;
}

#[tokio::test]
async fn a_relay_only_call_connects_through_turn_over_tls_alone() {
    let _one = ONE_AT_A_TIME.lock().await;
    let turn = Coturn::start_tls();
    let url = turn.tls_url().expect("a TLS listener");
    let mut scene = Scene::start_on(turn, &url, &[], None).await;
    scene.customer_calls().await;
    scene.agent_accepts(30).await;
    let agent = scene.agent.clone();
    let servers = scene.eval(&agent, "JSON.stringify(window.vc.iceServers)").await;
    assert!(servers.as_str().is_some_and(|s| s.contains("turns:") && !s.contains("\"turn:")), "{servers}");
    let relayed = "(async () => { let kind = null; (await window.vc.pc.getStats()).forEach((s) => { \
        if (s.type === 'local-candidate' && s.candidateType === 'relay') kind = s.relayProtocol; }); return kind; })()";
    for tab in [scene.agent.clone(), scene.customer.clone()] {
        assert_eq!(scene.eval(&tab, relayed).await, "tls", "relayed over TLS");
    }
    scene.customer_hangs_up().await;
    scene.stop().await;
}

/// Whether the customer page says it is number `n` in the support desk's line.
fn place_in_line(n: usize) -> String {
    format!("document.getElementById('queue').textContent.startsWith('You are number {n} in line for support')")
}

/// The support desk in the browser: the customer presses "Talk to support" and sees they are
/// number 1 in line, a second customer number 2; the agent goes available (support is ticked) and
/// their page rings with the first; Accept → video both ways, and the second customer is number 1
/// now; the call's history names the agent's offer as answered.
#[tokio::test]
async fn a_customer_talks_to_the_support_desk_and_the_agent_who_goes_available_answers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut scene = Scene::start(&[]).await;
    let (agent, customer) = (scene.agent.clone(), scene.customer.clone());
    scene.eval(&customer, "document.querySelector('button.desk[data-desk=support]').click(); true").await;
    scene.wait(&customer, &place_in_line(1), 15).await;
    assert_eq!(scene.eval(&customer, CALLSTATE).await, "queued");
    assert_eq!(scene.eval(&customer, "window.vc.pc === null").await, true, "no offer while nobody is there to take it");
    // A reload while waiting: the page finds its call queued again and keeps its place.
    scene.cdp.reload(&customer.session).await;
    scene.wait(&customer, &format!("{STATUS}.startsWith('connected as')"), 15).await;
    scene.wait(&customer, &place_in_line(1), 15).await;
    assert_eq!(scene.eval(&customer, CALLSTATE).await, "queued");
    // A second customer queues behind the first.
    let token = Standalone::token("customer-2", "user").await;
    let url = format!("http://{}/customer.html?relay=1&token={token}", scene.app.http);
    let second = scene.cdp.open_tab(&url).await;
    let second = second.session;
    scene.cdp.wait_for(&second, &format!("{STATUS}.startsWith('connected as')"), 20).await;
    scene.cdp.eval(&second, "document.querySelector('button.desk[data-desk=support]').click(); true").await;
    scene.cdp.wait_for(&second, &place_in_line(2), 15).await;
    // The agent's queue panel lists the customer.
    scene.wait(&agent, "document.getElementById('queue-list').textContent.includes('support #1: customer-1')", 8).await;
    scene.eval(&agent, "document.getElementById('available').click(); true").await;
    scene
        .wait(&agent, "document.getElementById('availability-state').textContent === 'available for support'", 10)
        .await;
    scene.wait(&agent, "!document.getElementById('incoming').hidden", 15).await;
    assert_eq!(scene.eval(&agent, "document.getElementById('caller').textContent").await, "customer-1");
    scene.wait(&customer, "document.getElementById('queue').textContent === 'agent-1 is being called…'", 10).await;
    scene.agent_accepts(20).await;
    assert_eq!(scene.eval(&customer, "document.getElementById('queue').hidden").await, true);
    // The first customer is answered: the second is next in line now.
    scene.cdp.wait_for(&second, &place_in_line(1), 15).await;
    let outcome = "window.vc.history().then((calls) => calls[0].routing_attempts.map((a) => a.outcome).join(','))";
    assert_eq!(scene.eval(&customer, outcome).await, "answered");
    scene.customer_hangs_up().await;
    scene.stop().await;
}
