//! The call-recorder against the real services: a gateway and a recorder in this process on a
//! fresh PostgreSQL database, the shared Redis (a cell of its own) and RabbitMQ (an exchange of
//! its own). Two webrtc-rs parties consent, answer the recorder's offers through the gateway's
//! SendSignal/SubscribeToSignals, and send synthetic VP8 and Opus for three seconds; the files are
//! then read back independently of the recorder's own writers.

use std::{path::PathBuf, sync::Arc, time::Duration};
use videocall_runtime::service::Service;

use api_gateway::{Application, GatewayConfig, RingTimeouts};
use bytes::Bytes;
use clap::Parser;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::{Request, transport::Channel};
use videocall_proto::v1::{self as pb, call_service_client::CallServiceClient};
use videocall_runtime::{
    auth::{JwtKeys, Role},
    config::{Common, Secret},
    ice::IceConfig,
    telemetry::{LogFormat, init_for_tests},
};
use videocall_testkit::{EventTap, fresh_database, unique_name};
use webrtc::{
    api::{APIBuilder, media_engine::MediaEngine, setting_engine::SettingEngine},
    ice::mdns::MulticastDnsMode,
    ice_transport::ice_candidate::RTCIceCandidateInit,
    media::Sample,
    peer_connection::{
        RTCPeerConnection, configuration::RTCConfiguration, peer_connection_state::RTCPeerConnectionState,
        sdp::session_description::RTCSessionDescription,
    },
    rtp_transceiver::rtp_codec::RTCRtpCodecCapability,
    track::track_local::{TrackLocal, track_local_static_sample::TrackLocalStaticSample},
};

const JWT_SECRET: &str = "recorder-test-secret-0123456789";
const REDIS: &str = "redis://127.0.0.1:6379";
/// 3 s of video at 25 fps (40 ms = 3600 ticks of 90 kHz) and of 20 ms Opus packets.
const VIDEO_FRAMES: usize = 75;
const AUDIO_PACKETS: usize = 150;

struct Harness {
    client: CallServiceClient<Channel>,
    dir: PathBuf,
    tap: EventTap,
    exchange: String,
    keys: JwtKeys,
    stop: CancellationToken,
    gateway: tokio::task::JoinHandle<anyhow::Result<()>>,
    recorder: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Harness {
    async fn start(start_timeout_secs: u64) -> Self {
        init_for_tests();
        let database_url = fresh_database().await;
        let exchange = unique_name("videocall.events.recorder");
        let tap = EventTap::bind(&exchange).await;
        let cell = unique_name("rec");
        let stop = CancellationToken::new();
        let gateway = Application::build(gateway_config(database_url.clone(), &exchange, &cell), &stop)
            .await
            .expect("gateway builds");
        let addr = gateway.local_addr();
        let gateway = tokio::spawn(gateway.run_until_stopped(stop.clone()));
        let dir = std::env::temp_dir().join(unique_name("recordings"));
        let config = call_recorder::RecorderArgs::try_parse_from([
            "call-recorder".to_owned(),
            format!("--database-url={database_url}"),
            format!("--redis-url={REDIS}"),
            format!("--cell-id={cell}"),
            format!("--recordings-dir={}", dir.display()),
            "--recorder-id=recorder-test".to_owned(),
            "--poll-ms=200".to_owned(),
            format!("--start-timeout-secs={start_timeout_secs}"),
            "--candidate-networks=127.0.0.1".to_owned(),
            "--ops-listen-addr=127.0.0.1:0".to_owned(),
        ])
        .expect("flags")
        .validate()
        .expect("valid config");
        let recorder = call_recorder::Application::build(config, &stop).await.expect("binds");
        let recorder = tokio::spawn(recorder.run_until_stopped(stop.clone()));
        let client = CallServiceClient::connect(format!("http://{addr}")).await.expect("connect");
        Self { client, dir, tap, exchange, keys: JwtKeys::new(Secret::new(JWT_SECRET)), stop, gateway, recorder }
    }

    fn as_user<T>(&self, user: &str, message: T) -> Request<T> {
        let token = self.keys.mint(user, Role::User, chrono::Utc::now().timestamp() + 600);
        let mut request = Request::new(message);
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
        request
    }

    async fn active_call(&mut self, caller: &str, callee: &str) -> String {
        let req = pb::InitiateCallRequest {
            callee_id: callee.into(),
            call_type: pb::CallType::Support as i32,
            ..Default::default()
        };
        let call = self.client.initiate_call(self.as_user(caller, req)).await.expect("initiate").into_inner();
        let id = call.call.expect("call").id;
        self.client
            .answer_call(self.as_user(callee, pb::AnswerCallRequest { call_id: id.clone() }))
            .await
            .expect("answer");
        id
    }

    async fn consent(&mut self, user: &str, call_id: &str) {
        let req = pb::SetRecordingConsentRequest { call_id: call_id.into(), consent: true };
        self.client.set_recording_consent(self.as_user(user, req)).await.expect("consent");
    }

    async fn recording(&mut self, user: &str, call_id: &str) -> Option<pb::Recording> {
        let reply = self.client.get_call(self.as_user(user, pb::GetCallRequest { call_id: call_id.into() })).await;
        reply.expect("get call").into_inner().call.expect("call").recording
    }

    /// Polls GetCall until the recording has `status` (at most `wait`).
    async fn wait_for(
        &mut self,
        user: &str,
        call_id: &str,
        status: pb::RecordingStatus,
        wait: Duration,
    ) -> pb::Recording {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let recording = self.recording(user, call_id).await;
            if let Some(r) = &recording
                && r.status == status as i32
            {
                return r.clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "recording never became {status:?}: {recording:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.gateway.await.expect("gateway joins").expect("gateway stops cleanly");
        self.recorder.await.expect("recorder joins").expect("recorder stops cleanly");
        self.tap.delete_exchange(&self.exchange).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn gateway_config(database_url: String, exchange: &str, cell: &str) -> GatewayConfig {
    GatewayConfig {
        call_policy: api_gateway::CallPolicy::open(),
        grpc_reflection: false,
        unrouted: videocall_testkit::classic_unrouted(),
        common: Common { service_name: "api-gateway".into(), cell_id: "test".into(), log_format: LogFormat::Text },
        database_url,
        amqp_url: videocall_testkit::amqp_url(),
        signal_bus: videocall_signaling::signal_bus::SignalBusConfig {
            redis_url: REDIS.into(),
            cell_id: cell.into(),
            log_capacity: 256,
            log_ttl: Duration::from_secs(600),
        },
        grpc_listen_addr: "127.0.0.1:0".parse().expect("addr"),
        tokens: videocall_runtime::auth::JwtKeys::new(Secret::new(JWT_SECRET)),
        ice: IceConfig { stun_urls: vec![], turn_urls: vec![], turn_secret: None, turn_ttl: Duration::from_secs(3600) },
        ring_timeouts: RingTimeouts { support: 45, sales: 45, consult: 45 },
        desk: Default::default(),
        events_exchange: exchange.to_owned(),
        outbox_batch_size: 100,
        outbox_poll_interval: Duration::from_millis(100),
        shutdown_grace: Duration::from_secs(5),
        ops_listen_addr: None,
    }
}

/// The synthetic video frame `i`: a VP8 key frame marker (bit 0 of byte 0 clear), then bytes
/// that tell frames apart; every third frame spans several RTP packets.
fn video_frame(i: usize) -> Vec<u8> {
    let len = if i.is_multiple_of(3) { 2500 } else { 700 + i };
    let mut frame = vec![(i % 256) as u8; len];
    frame[0] = 0x10;
    frame
}

/// Opus packet `i`: TOC 0xF8 (CELT fullband, 20 ms, one frame), then filler.
fn audio_packet(i: usize) -> Vec<u8> {
    let mut packet = vec![(i % 251) as u8; 60 + i % 40];
    packet[0] = 0xF8;
    packet
}

/// What a party saw of the recorder.
#[derive(Debug, Default)]
struct PartyReport {
    offers: usize,
    hangups: usize,
    /// The signal stream ended (the gateway ends it with the call).
    stream_ended: bool,
    sent_video: usize,
    sent_audio: usize,
}

/// A party that answers the recorder's offer with a VP8 and an Opus track and, once connected,
/// sends `video` frames and `audio` packets; it runs until the recorder hangs up (or `give_up`).
async fn party(
    mut client: CallServiceClient<Channel>,
    token: String,
    call_id: String,
    send_media: bool,
    give_up: Duration,
) -> PartyReport {
    fn authed<T>(token: &str, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
        request
    }
    let with_token = |message| authed(&token, message);
    let with_token_send = |message| authed(&token, message);
    let sub = pb::SubscribeToSignalsRequest { call_id: call_id.clone(), after_seq: 0 };
    let mut stream = client.subscribe_to_signals(with_token(sub)).await.expect("subscribe").into_inner();
    let mut report = PartyReport::default();
    let mut pc: Option<Arc<RTCPeerConnection>> = None;
    let mut pending: Vec<RTCIceCandidateInit> = Vec::new();
    let (candidates_tx, mut candidates) = tokio::sync::mpsc::unbounded_channel::<RTCIceCandidateInit>();
    let connected = Arc::new(Notify::new());
    let mut sender: Option<tokio::task::JoinHandle<(usize, usize)>> = None;
    let deadline = tokio::time::sleep(give_up);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            Some(candidate) = candidates.recv() => {
                let req = pb::SendSignalRequest {
                    call_id: call_id.clone(),
                    signal_type: "ice-candidate".into(),
                    payload: serde_json::to_string(&candidate).expect("json"),
                    to: "@recorder".into(),
                };
                client.send_signal(with_token_send(req)).await.expect("candidate to the recorder");
            }
            message = stream.message() => {
                let Ok(Some(signal)) = message else { report.stream_ended = true; break };
                assert_eq!(signal.from_user_id, "@recorder", "only the recorder signals in this test: {signal:?}");
                match signal.signal_type.as_str() {
                    "offer" => {
                        report.offers += 1;
                        let (new_pc, tracks) = answerer(candidates_tx.clone(), connected.clone()).await;
                        new_pc.set_remote_description(RTCSessionDescription::offer(signal.payload).expect("sdp")).await.expect("offer applies");
                        for c in pending.drain(..) { new_pc.add_ice_candidate(c).await.expect("candidate"); }
                        let answer = new_pc.create_answer(None).await.expect("answer");
                        new_pc.set_local_description(answer.clone()).await.expect("local answer");
                        let req = pb::SendSignalRequest { call_id: call_id.clone(), signal_type: "answer".into(), payload: answer.sdp, to: "@recorder".into() };
                        client.send_signal(with_token_send(req)).await.expect("answer to the recorder");
                        if send_media {
                            sender = Some(tokio::spawn(send(tracks, connected.clone())));
                        }
                        pc = Some(new_pc);
                    }
                    "ice-candidate" => {
                        let init: RTCIceCandidateInit = serde_json::from_str(&signal.payload).expect("candidate json");
                        match &pc { Some(pc) => pc.add_ice_candidate(init).await.expect("candidate"), None => pending.push(init) }
                    }
                    "hangup" => { report.hangups += 1; break; }
                    other => panic!("unexpected signal {other}"),
                }
            }
        }
    }
    if let Some(sender) = sender {
        (report.sent_video, report.sent_audio) = sender.await.expect("sender joins");
    }
    if let Some(pc) = pc {
        pc.close().await.ok();
    }
    report
}

/// A loopback-only webrtc-rs peer with a VP8 and an Opus track.
async fn answerer(
    candidates: tokio::sync::mpsc::UnboundedSender<RTCIceCandidateInit>,
    connected: Arc<Notify>,
) -> (Arc<RTCPeerConnection>, [Arc<TrackLocalStaticSample>; 2]) {
    let mut media = MediaEngine::default();
    media.register_default_codecs().expect("codecs");
    let mut settings = SettingEngine::default();
    settings.set_include_loopback_candidate(true);
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    settings.set_ip_filter(Box::new(|ip| ip.is_loopback()));
    let api = APIBuilder::new().with_media_engine(media).with_setting_engine(settings).build();
    let pc = Arc::new(api.new_peer_connection(RTCConfiguration::default()).await.expect("pc"));
    let video = Arc::new(TrackLocalStaticSample::new(
        RTCRtpCodecCapability { mime_type: "video/VP8".into(), clock_rate: 90_000, ..Default::default() },
        "video".into(),
        "party".into(),
    ));
    let audio = Arc::new(TrackLocalStaticSample::new(
        RTCRtpCodecCapability { mime_type: "audio/opus".into(), clock_rate: 48_000, channels: 2, ..Default::default() },
        "audio".into(),
        "party".into(),
    ));
    for track in [video.clone(), audio.clone()] {
        pc.add_track(track as Arc<dyn TrackLocal + Send + Sync>).await.expect("add track");
    }
    pc.on_ice_candidate(Box::new(move |c| {
        if let Some(init) = c.and_then(|c| c.to_json().ok()) {
            let _ = candidates.send(init);
        }
        Box::pin(async {})
    }));
    pc.on_peer_connection_state_change(Box::new(move |state| {
        if state == RTCPeerConnectionState::Connected {
            connected.notify_one();
        }
        Box::pin(async {})
    }));
    (pc, [video, audio])
}

/// Once connected: VIDEO_FRAMES frames at 25 fps beside AUDIO_PACKETS packets every 20 ms.
async fn send(tracks: [Arc<TrackLocalStaticSample>; 2], connected: Arc<Notify>) -> (usize, usize) {
    connected.notified().await;
    // The RTP senders start right after the connection does.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let [video, audio] = tracks;
    let video = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(40));
        for i in 0..VIDEO_FRAMES {
            every.tick().await;
            let sample =
                Sample { data: Bytes::from(video_frame(i)), duration: Duration::from_millis(40), ..Default::default() };
            video.write_sample(&sample).await.expect("video sample");
        }
        VIDEO_FRAMES
    });
    let audio = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(20));
        for i in 0..AUDIO_PACKETS {
            every.tick().await;
            let sample = Sample {
                data: Bytes::from(audio_packet(i)),
                duration: Duration::from_millis(20),
                ..Default::default()
            };
            audio.write_sample(&sample).await.expect("audio sample");
        }
        AUDIO_PACKETS
    });
    (video.await.expect("video"), audio.await.expect("audio"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// An IVF file as read: fourcc, timebase denominator and numerator, header frame count, and the
/// frames with their PTS.
struct Ivf {
    fourcc: String,
    rate: u32,
    scale: u32,
    count: u32,
    frames: Vec<(u64, Vec<u8>)>,
}

/// Reads an IVF file by the format's layout: 32-byte header (`DKIF`, codec, size, timebase,
/// frame count), then 12-byte frame headers (size, 64-bit PTS) each followed by the frame.
fn read_ivf(bytes: &[u8]) -> Ivf {
    assert_eq!(&bytes[0..4], b"DKIF", "IVF signature");
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let fourcc = String::from_utf8_lossy(&bytes[8..12]).into_owned();
    let (rate, scale, count) = (u32_at(16), u32_at(20), u32_at(24));
    let mut frames = Vec::new();
    let mut at = 32;
    while at < bytes.len() {
        let size = u32_at(at) as usize;
        let pts = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().expect("8 bytes"));
        frames.push((pts, bytes[at + 12..at + 12 + size].to_vec()));
        at += 12 + size;
    }
    Ivf { fourcc, rate, scale, count, frames }
}

/// Reads an Ogg file page by page by the format's layout (`OggS`, header type at 5, granule at 6,
/// segment count at 26, lacing values, data): `(granule, header type, packets)`. webrtc-rs's own
/// reader checks the OpusHead and every page's CRC first.
fn read_ogg(bytes: &[u8]) -> Vec<(u64, u8, Vec<Vec<u8>>)> {
    use webrtc::media::io::ogg_reader::OggReader;
    let (mut reader, header) = OggReader::new(std::io::Cursor::new(bytes.to_vec()), true).expect("Ogg Opus header");
    assert_eq!((header.sample_rate, header.channels), (48_000, 2));
    while reader.parse_next_page().is_ok() {}
    let mut pages = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        assert_eq!(&bytes[at..at + 4], b"OggS", "page at {at}");
        let header_type = bytes[at + 5];
        let granule = u64::from_le_bytes(bytes[at + 6..at + 14].try_into().expect("8 bytes"));
        let segments = bytes[at + 26] as usize;
        let lacing = &bytes[at + 27..at + 27 + segments];
        let mut data = at + 27 + segments;
        let mut packets = Vec::new();
        let mut packet = Vec::new();
        for &len in lacing {
            packet.extend_from_slice(&bytes[data..data + len as usize]);
            data += len as usize;
            if len < 255 {
                packets.push(std::mem::take(&mut packet));
            }
        }
        pages.push((granule, header_type, packets));
        at = data;
    }
    pages
}

#[tokio::test]
async fn a_consented_call_is_recorded_frame_for_frame() {
    let mut h = Harness::start(30).await;
    let id = h.active_call("alice", "bob").await;
    let mut parties = Vec::new();
    for user in ["alice", "bob"] {
        let token = h.keys.mint(user, Role::User, chrono::Utc::now().timestamp() + 600);
        parties.push(tokio::spawn(party(h.client.clone(), token, id.clone(), true, Duration::from_secs(60))));
    }
    h.consent("alice", &id).await;
    h.consent("bob", &id).await;

    let active = h.wait_for("bob", &id, pb::RecordingStatus::Active, Duration::from_secs(20)).await;
    assert!(active.started_at.is_some());
    // Both parties send their 3 s; then the call ends and the recorder finishes the files.
    tokio::time::sleep(Duration::from_secs(5)).await;
    h.client.end_call(h.as_user("alice", pb::EndCallRequest { call_id: id.clone(), reason: 0 })).await.expect("end");
    let done = h.wait_for("alice", &id, pb::RecordingStatus::Complete, Duration::from_secs(20)).await;
    for party in parties {
        let report = party.await.expect("party joins");
        // The call's end closes the party's signal stream; the recorder's hangup may come first.
        assert_eq!(report.offers, 1, "one recording leg: {report:?}");
        assert!(report.hangups == 1 || report.stream_ended, "the leg ended with the call: {report:?}");
        assert_eq!((report.sent_video, report.sent_audio), (VIDEO_FRAMES, AUDIO_PACKETS));
    }

    assert_eq!(done.error, "", "the call's own end is no error");
    assert!(done.duration_ms >= 3000, "recorded while both sent: {} ms", done.duration_ms);
    let mut names: Vec<&str> = done.files.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["callee-audio.ogg", "callee-video.ivf", "caller-audio.ogg", "caller-video.ivf"]);
    let dir = h.dir.join(&id);
    let mut manifest = Vec::new();
    for file in &done.files {
        let bytes = std::fs::read(dir.join(&file.name)).expect("recorded file");
        assert_eq!(file.bytes, bytes.len() as u64, "{}", file.name);
        assert_eq!(file.sha256, sha256_hex(&bytes), "{}", file.name);
        manifest.push(format!("{}  {}\n", file.sha256, file.name));
        if file.kind == "video" {
            let Ivf { fourcc, rate, scale, count, frames } = read_ivf(&bytes);
            assert_eq!((fourcc.as_str(), rate, scale), ("VP80", 90_000, 1), "{}: timebase 1/90000", file.name);
            assert_eq!(
                (count as usize, frames.len(), file.frames as usize),
                (VIDEO_FRAMES, VIDEO_FRAMES, VIDEO_FRAMES),
                "{}",
                file.name
            );
            for (i, (pts, data)) in frames.iter().enumerate() {
                assert_eq!(*pts, 3600 * i as u64, "{} frame {i}: 40 ms apart", file.name);
                assert_eq!(*data, video_frame(i), "{} frame {i} is what the party sent", file.name);
            }
            assert_eq!(file.duration_ms, 3000, "{}", file.name);
        } else {
            let pages = read_ogg(&bytes);
            assert!(pages[0].2[0].starts_with(b"OpusHead") && pages[1].2[0].starts_with(b"OpusTags"));
            let data = &pages[2..];
            assert_eq!((data.len(), file.frames as usize), (AUDIO_PACKETS, AUDIO_PACKETS), "{}", file.name);
            for (i, (granule, _, packets)) in data.iter().enumerate() {
                assert_eq!(packets[0], audio_packet(i), "{} packet {i}", file.name);
                assert_eq!(*granule, 960 * (i as u64 + 1), "{} packet {i} ends 20 ms later", file.name);
            }
            assert_eq!(
                data.last().map(|(_, t, _)| t & 0x04),
                Some(0x04),
                "{}: the last page ends the stream",
                file.name
            );
            assert_eq!(file.duration_ms, 3000, "{}", file.name);
        }
    }
    manifest.sort_by(|a, b| a[66..].cmp(&b[66..]));
    assert_eq!(
        done.sha256,
        sha256_hex(manifest.concat().as_bytes()),
        "checksum = sha256 of the sorted sha256sum lines"
    );
    assert_eq!(done.size_bytes as u64, done.files.iter().map(|f| f.bytes).sum::<u64>());

    // RecordingStarted and RecordingCompleted reach RabbitMQ, about this recording.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = h.tap.next(Duration::from_secs(10)).await.expect("recording events published");
        if event.event_type().starts_with("Recording") {
            assert_eq!(event.subject(), done.id);
            seen.push(event.event_type().to_owned());
        }
    }
    assert_eq!(seen, ["RecordingStarted", "RecordingCompleted"]);
    h.stop().await;
}

#[tokio::test]
async fn a_recording_whose_parties_never_answer_fails_and_says_why() {
    let mut h = Harness::start(2).await;
    let id = h.active_call("carol", "dave").await;
    h.consent("carol", &id).await;
    h.consent("dave", &id).await;
    let failed = h.wait_for("carol", &id, pb::RecordingStatus::Failed, Duration::from_secs(20)).await;
    assert_eq!(failed.error, "media of both parties did not arrive within 2 s");
    assert!(failed.files.is_empty() && failed.size_bytes == 0 && failed.started_at.is_none(), "{failed:?}");
    let event = loop {
        let event = h.tap.next(Duration::from_secs(10)).await.expect("RecordingFailed published");
        if event.event_type().starts_with("Recording") {
            break event;
        }
    };
    assert_eq!(event.event_type(), "RecordingFailed");
    // The call goes on; a failed recording cannot be asked for again.
    let req = pb::SetRecordingConsentRequest { call_id: id.clone(), consent: true };
    let err = h.client.set_recording_consent(h.as_user("dave", req)).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (tonic::Code::FailedPrecondition, "this call's recording is failed"));
    h.stop().await;
}

#[tokio::test]
async fn withdrawn_consent_stops_the_recording_and_keeps_what_was_written() {
    let mut h = Harness::start(30).await;
    let id = h.active_call("erin", "frank").await;
    let mut parties = Vec::new();
    for user in ["erin", "frank"] {
        let token = h.keys.mint(user, Role::User, chrono::Utc::now().timestamp() + 600);
        parties.push(tokio::spawn(party(h.client.clone(), token, id.clone(), true, Duration::from_secs(60))));
    }
    h.consent("erin", &id).await;
    h.consent("frank", &id).await;
    h.wait_for("frank", &id, pb::RecordingStatus::Active, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let req = pb::SetRecordingConsentRequest { call_id: id.clone(), consent: false };
    h.client.set_recording_consent(h.as_user("frank", req)).await.expect("withdraw");
    let done = h.wait_for("erin", &id, pb::RecordingStatus::Complete, Duration::from_secs(20)).await;
    assert_eq!(done.error, "consent withdrawn");
    assert!(!done.callee_consent && done.caller_consent);
    assert_eq!(done.files.len(), 4, "{:?}", done.files);
    for file in &done.files {
        assert!(file.frames > 0 && file.bytes > 0, "{file:?}");
        let bytes = std::fs::read(h.dir.join(&id).join(&file.name)).expect("file kept");
        assert_eq!(file.sha256, sha256_hex(&bytes));
    }
    // The recorder hung up both legs; the call itself goes on.
    for party in parties {
        let report = party.await.expect("party joins");
        assert_eq!((report.offers, report.hangups, report.stream_ended), (1, 1, false), "{report:?}");
    }
    let call = h.client.get_call(h.as_user("erin", pb::GetCallRequest { call_id: id.clone() })).await.expect("get");
    assert_eq!(call.into_inner().call.expect("call").status, pb::CallStatus::Active as i32);
    h.stop().await;
}
