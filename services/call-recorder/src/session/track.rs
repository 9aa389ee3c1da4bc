//! One remote track of a recording leg written to its file (IVF for VP8, Ogg for Opus) until it
//! ends.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::mpsc;
use videocall_calls::recordings::RecordedFile;
use webrtc::{
    peer_connection::RTCPeerConnection, rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication,
    track::track_remote::TrackRemote,
};

use super::{LegEvent, Side};
use crate::media_files::{FileSummary, IvfWriter, OggOpusWriter};

/// Writes one incoming track to `<party>-<kind>.<ext>` until it ends; the file's summary.
pub(super) async fn write_track(
    track: Arc<TrackRemote>,
    side: Side,
    dir: PathBuf,
    names: Arc<Mutex<HashSet<String>>>,
    events: mpsc::UnboundedSender<LegEvent>,
    pc: std::sync::Weak<RTCPeerConnection>,
) -> Option<RecordedFile> {
    let mime = track.codec().capability.mime_type.to_ascii_lowercase();
    let (kind, ext) = match mime.as_str() {
        "video/vp8" => ("video", "ivf"),
        "audio/opus" => ("audio", "ogg"),
        other => {
            tracing::warn!(codec = other, "track codec not recorded (VP8 and Opus are)");
            while track.read_rtp().await.is_ok() {}
            return None;
        }
    };
    let name = {
        let mut names = names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut name = format!("{}-{kind}.{ext}", side.name());
        let mut n = 2;
        while !names.insert(name.clone()) {
            name = format!("{}-{kind}-{n}.{ext}", side.name());
            n += 1;
        }
        name
    };
    let path = dir.join(&name);
    let mut writer = match kind {
        "video" => IvfWriter::create(&path, 0, 0).map(Writer::Ivf),
        _ => OggOpusWriter::create(&path, 2).map(Writer::Ogg),
    }
    .inspect_err(|error| tracing::warn!(%error, file = %path.display(), "cannot create recording file"))
    .ok()?;
    // Ask for a key frame now and then: a video file starts at one, and a lost one costs seconds.
    let pli = (kind == "video").then(|| {
        let (ssrc, pc) = (track.ssrc(), pc.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(2));
            loop {
                every.tick().await;
                let Some(pc) = pc.upgrade() else { return };
                let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc: ssrc };
                if pc.write_rtcp(&[Box::new(pli)]).await.is_err() {
                    return;
                }
            }
        })
    });
    let mut first = true;
    let mut failed = None;
    while let Ok((packet, _)) = track.read_rtp().await {
        if first {
            first = false;
            let _ = events.send(LegEvent::Media(side));
        }
        if let Err(error) = writer.write_rtp(&packet) {
            failed = Some(error);
            break;
        }
    }
    if let Some(pli) = pli {
        pli.abort();
    }
    if let Some(error) = failed {
        tracing::warn!(%error, file = %name, "recording file write failed; the file ends here");
    }
    match writer.finish() {
        Ok(summary) => Some(recorded_file(name, side, kind, summary)),
        Err(error) => {
            tracing::warn!(%error, file = %name, "recording file could not be finished");
            None
        }
    }
}

enum Writer {
    Ivf(IvfWriter),
    Ogg(OggOpusWriter),
}

impl Writer {
    fn write_rtp(&mut self, packet: &webrtc::rtp::packet::Packet) -> Result<(), crate::media_files::MediaError> {
        match self {
            Writer::Ivf(w) => w.write_rtp(packet),
            Writer::Ogg(w) => w.write_rtp(packet),
        }
    }

    fn finish(self) -> Result<FileSummary, crate::media_files::MediaError> {
        match self {
            Writer::Ivf(w) => w.finish(),
            Writer::Ogg(w) => w.finish(),
        }
    }
}

fn recorded_file(name: String, side: Side, kind: &str, s: FileSummary) -> RecordedFile {
    RecordedFile {
        name,
        party: side.name().to_owned(),
        kind: kind.to_owned(),
        codec: s.codec.to_owned(),
        frames: s.frames,
        duration_ms: s.duration_ms,
        bytes: s.bytes,
        sha256: s.sha256,
    }
}
