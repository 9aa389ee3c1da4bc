//! One recording: a receive-only WebRTC peer connection to each party (the recording leg), their
//! tracks written to files (`track`), and the recording's status kept in the database while it
//! runs.

mod track;

use std::{
    collections::HashSet,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use videocall_calls::{
    CallRecord, CallStore,
    recordings::{Outcome, RecordedFile, RecordingStore, RecordingView},
};
use videocall_domain::CallStatus;
use videocall_signaling::{
    signal_bus::{Outgoing, SignalBus},
    signals::{RECORDER_PEER, SignalType},
};
use webrtc::{
    api::API,
    ice_transport::{ice_candidate::RTCIceCandidateInit, ice_server::RTCIceServer},
    peer_connection::{
        RTCPeerConnection, configuration::RTCConfiguration, peer_connection_state::RTCPeerConnectionState,
        sdp::session_description::RTCSessionDescription,
    },
    rtp_transceiver::{
        RTCRtpTransceiverInit, rtp_codec::RTPCodecType, rtp_transceiver_direction::RTCRtpTransceiverDirection,
    },
};

use self::track::write_track;
use crate::{
    config::RecorderConfig,
    metrics::RecorderMetrics,
    routing::{Incoming, Routes},
};

/// What a recorder instance shares between its sessions.
pub struct Recorder {
    pub recordings: RecordingStore,
    pub calls: CallStore,
    pub bus: SignalBus,
    pub api: API,
    pub routes: Routes,
    pub config: RecorderConfig,
    pub metrics: RecorderMetrics,
}

/// Which party a leg records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    Caller,
    Callee,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Caller => "caller",
            Side::Callee => "callee",
        }
    }
}

enum LegEvent {
    /// The first RTP packet of a party arrived.
    Media(Side),
    State(Side, RTCPeerConnectionState),
}

type FileTask = JoinHandle<Option<RecordedFile>>;

/// The peer connection to one party.
struct Leg {
    side: Side,
    user_id: String,
    pc: Arc<RTCPeerConnection>,
    /// Candidates that came before the party's answer.
    pending: Vec<RTCIceCandidateInit>,
    answered: bool,
    files: Arc<Mutex<Vec<FileTask>>>,
}

/// Why a recording stopped.
enum Stop {
    /// Finish what was written: complete when active, failed otherwise. `reason` is kept in the
    /// row's `error` (empty for the call's normal end).
    Finish {
        reason: Option<String>,
    },
    Fail(String),
    /// Another instance owns it now: leave the row alone.
    Lost,
}

impl Recorder {
    /// Records `recording` until the call ends, a party withdraws consent, it times out, or
    /// `shutdown`.
    #[tracing::instrument(skip_all, fields(call_id = %recording.call_id, recording_id = %recording.id))]
    pub async fn record(self: Arc<Self>, recording: RecordingView, shutdown: CancellationToken) {
        let call_id = recording.call_id;
        let call = match self.calls.get(call_id).await {
            Ok(call) => call,
            Err(error) => {
                tracing::warn!(%error, "call unreadable; the recording is left for another try");
                return;
            }
        };
        let key = call_id.to_string();
        let mut signals = self.routes.open(&key);
        self.metrics.running.inc();
        let outcome = self.run_session(&call, &recording, &mut signals, shutdown).await;
        self.routes.close(&key);
        self.metrics.running.dec();
        match outcome {
            Ok(Some(done)) => {
                self.metrics.finished(done.status, done.size_bytes);
                tracing::info!(
                    status = done.status.as_str(),
                    bytes = done.size_bytes,
                    files = done.files.len(),
                    "recording finished"
                );
                videocall_calls::push::recording(&self.bus, &call, &done).await;
            }
            Ok(None) => tracing::warn!("recording no longer owned by this recorder; left as it is"),
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "recording session failed; its lease will lapse")
            }
        }
    }

    async fn run_session(
        &self,
        call: &CallRecord,
        recording: &RecordingView,
        signals: &mut mpsc::UnboundedReceiver<Incoming>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Option<RecordingView>> {
        let worker = self.config.recorder_id.as_str();
        let dir = self.config.recordings_dir.join(call.id.to_string());
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let mut legs = Vec::with_capacity(2);
        let mut stop = None;
        if let Err(error) = tokio::fs::create_dir_all(&dir).await {
            stop = Some(Stop::Fail(format!("cannot create {}: {error}", dir.display())));
        } else {
            for (side, user) in [(Side::Caller, &call.caller_id), (Side::Callee, &call.callee_id)] {
                match self.start_leg(call.id, side, user, &dir, events_tx.clone()).await {
                    Ok(leg) => legs.push(leg),
                    Err(error) => {
                        stop = Some(Stop::Fail(format!("cannot offer the {} a recording leg: {error}", side.name())));
                        break;
                    }
                }
            }
        }
        let claimed = Instant::now();
        let mut active: Option<Instant> = None;
        let mut media = HashSet::new();
        let mut last_renewal = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while stop.is_none() {
            tokio::select! {
                _ = shutdown.cancelled() => stop = Some(Stop::Finish { reason: Some("the recorder shut down".into()) }),
                Some(signal) = signals.recv() => {
                    if let Some(leg) = legs.iter_mut().find(|l| l.user_id == signal.from) {
                        leg.apply(signal).await;
                    }
                }
                Some(event) = events.recv() => match event {
                    LegEvent::Media(side) => {
                        media.insert(side);
                        if media.len() == 2 && active.is_none() {
                            match self.recordings.activate(call, worker).await? {
                                Some(now_active) => {
                                    tracing::info!("recording active: media of both parties arrives");
                                    videocall_calls::push::recording(&self.bus, call, &now_active).await;
                                    active = Some(Instant::now());
                                }
                                None => stop = Some(Stop::Lost),
                            }
                        }
                    }
                    LegEvent::State(side, state) => {
                        tracing::debug!(party = side.name(), ?state, "recording leg state");
                        if matches!(state, RTCPeerConnectionState::Failed) && active.is_none() {
                            stop = Some(Stop::Fail(format!("the {}'s recording leg failed to connect", side.name())));
                        }
                    }
                },
                _ = tick.tick() => {
                    stop = self.check(call.id, recording, active.is_some(), claimed, &mut last_renewal).await?;
                    if stop.is_none() && let Some(since) = active && since.elapsed() >= self.config.max_duration {
                        stop = Some(Stop::Finish { reason: Some("the longest recording (RECORDER_MAX_SECS) was reached".into()) });
                    }
                }
            }
        }
        let stop = stop.unwrap_or(Stop::Lost);
        // Tell the parties to close their recording legs, then close ours: every track ends and
        // its file is finished.
        for leg in &legs {
            let reason = "recording stopped";
            let _ = self
                .bus
                .publish_signal(Outgoing {
                    call_id: &call.id.to_string(),
                    from: RECORDER_PEER,
                    to: &leg.user_id,
                    signal_type: SignalType::Hangup,
                    payload: reason,
                })
                .await;
            if let Err(error) = leg.pc.close().await {
                tracing::debug!(%error, "closing a recording leg");
            }
        }
        let mut files = Vec::new();
        for leg in &legs {
            let tasks: Vec<FileTask> =
                std::mem::take(&mut *leg.files.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            for task in tasks {
                if let Ok(Some(file)) = task.await {
                    files.push(file);
                }
            }
        }
        let outcome = match stop {
            Stop::Lost => return Ok(None),
            Stop::Finish { reason } => match active {
                Some(since) => Outcome::Complete {
                    files,
                    duration_ms: i64::try_from(since.elapsed().as_millis()).unwrap_or(i64::MAX),
                    reason,
                },
                None => Outcome::Failed {
                    files,
                    error: reason.unwrap_or_else(|| "the call ended before media of both parties arrived".into()),
                },
            },
            Stop::Fail(error) => Outcome::Failed { files, error },
        };
        Ok(self.recordings.finish(call, worker, outcome).await?)
    }

    /// Once a second: renew the lease (every third of it), and see whether the call or the
    /// consent ended, or the start took too long.
    async fn check(
        &self,
        call_id: Uuid,
        recording: &RecordingView,
        active: bool,
        claimed: Instant,
        last_renewal: &mut Instant,
    ) -> anyhow::Result<Option<Stop>> {
        let current = if last_renewal.elapsed() >= self.config.lease / 3 {
            *last_renewal = Instant::now();
            self.recordings.renew(call_id, &self.config.recorder_id, self.config.lease).await?
        } else {
            self.recordings.get(call_id).await?
        };
        let Some(current) = current.filter(|r| r.id == recording.id && r.status.is_running()) else {
            return Ok(Some(Stop::Lost));
        };
        if current.worker_id.as_deref() != Some(self.config.recorder_id.as_str()) {
            return Ok(Some(Stop::Lost));
        }
        if current.stop_requested {
            return Ok(Some(if active {
                Stop::Finish { reason: Some("consent withdrawn".into()) }
            } else {
                Stop::Fail("consent withdrawn before the recording began".into())
            }));
        }
        let call = self.calls.get(call_id).await?;
        if call.status != CallStatus::Active {
            return Ok(Some(Stop::Finish { reason: None }));
        }
        if !active && claimed.elapsed() >= self.config.start_timeout {
            return Ok(Some(Stop::Fail(format!(
                "media of both parties did not arrive within {} s",
                self.config.start_timeout.as_secs()
            ))));
        }
        Ok(None)
    }

    /// A receive-only peer connection to one party; its offer goes out through the bus.
    async fn start_leg(
        &self,
        call_id: Uuid,
        side: Side,
        user_id: &str,
        dir: &Path,
        events: mpsc::UnboundedSender<LegEvent>,
    ) -> anyhow::Result<Leg> {
        let ice_servers = self
            .config
            .ice
            .servers_for(RECORDER_PEER, chrono::Utc::now().timestamp())
            .into_iter()
            .map(|s| RTCIceServer { urls: s.urls, username: s.username, credential: s.credential })
            .collect();
        let pc = Arc::new(self.api.new_peer_connection(RTCConfiguration { ice_servers, ..Default::default() }).await?);
        for kind in [RTPCodecType::Audio, RTPCodecType::Video] {
            let init =
                RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, send_encodings: vec![] };
            pc.add_transceiver_from_kind(kind, Some(init)).await?;
        }
        let call_key = call_id.to_string();
        {
            let (bus, call_key, user) = (self.bus.clone(), call_key.clone(), user_id.to_owned());
            pc.on_ice_candidate(Box::new(move |candidate| {
                let (bus, call_key, user) = (bus.clone(), call_key.clone(), user.clone());
                Box::pin(async move {
                    let Some(init) = candidate.and_then(|c| c.to_json().ok()) else { return };
                    let Ok(payload) = serde_json::to_string(&init) else { return };
                    let signal = Outgoing {
                        call_id: &call_key,
                        from: RECORDER_PEER,
                        to: &user,
                        signal_type: SignalType::IceCandidate,
                        payload: &payload,
                    };
                    if let Err(error) = bus.publish_signal(signal).await {
                        tracing::warn!(%error, "recorder candidate not sent");
                    }
                })
            }));
        }
        {
            let events = events.clone();
            pc.on_peer_connection_state_change(Box::new(move |state| {
                let _ = events.send(LegEvent::State(side, state));
                Box::pin(async {})
            }));
        }
        let files: Arc<Mutex<Vec<FileTask>>> = Arc::default();
        {
            let (files, dir, names) = (files.clone(), dir.to_path_buf(), Arc::new(Mutex::new(HashSet::new())));
            let pc_weak = Arc::downgrade(&pc);
            pc.on_track(Box::new(move |track, _receiver, _transceiver| {
                let task =
                    tokio::spawn(write_track(track, side, dir.clone(), names.clone(), events.clone(), pc_weak.clone()));
                files.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(task);
                Box::pin(async {})
            }));
        }
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer.clone()).await?;
        self.bus
            .publish_signal(Outgoing {
                call_id: &call_key,
                from: RECORDER_PEER,
                to: user_id,
                signal_type: SignalType::Offer,
                payload: &offer.sdp,
            })
            .await?;
        tracing::debug!(party = side.name(), "recording leg offered");
        Ok(Leg { side, user_id: user_id.to_owned(), pc, pending: Vec::new(), answered: false, files })
    }
}

impl Leg {
    async fn apply(&mut self, signal: Incoming) {
        let party = self.side.name();
        match signal.signal_type {
            SignalType::Answer => {
                if self.answered {
                    tracing::debug!(party, seq = signal.seq, "second answer ignored");
                    return;
                }
                let applied = match RTCSessionDescription::answer(signal.payload) {
                    Ok(answer) => self.pc.set_remote_description(answer).await,
                    Err(e) => Err(e),
                };
                match applied {
                    Ok(()) => {
                        self.answered = true;
                        for candidate in self.pending.drain(..) {
                            if let Err(error) = self.pc.add_ice_candidate(candidate).await {
                                tracing::debug!(%error, party, "buffered candidate refused");
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, party, "recording leg answer refused"),
                }
            }
            SignalType::IceCandidate => match serde_json::from_str::<RTCIceCandidateInit>(&signal.payload) {
                Ok(candidate) if self.answered => {
                    if let Err(error) = self.pc.add_ice_candidate(candidate).await {
                        tracing::debug!(%error, party, "candidate refused");
                    }
                }
                Ok(candidate) => self.pending.push(candidate),
                Err(error) => tracing::debug!(%error, party, "unreadable candidate"),
            },
            SignalType::Hangup => tracing::info!(party, "party closed its recording leg"),
            SignalType::Offer => tracing::debug!(party, "offers to the recorder are not supported; ignored"),
        }
    }
}
