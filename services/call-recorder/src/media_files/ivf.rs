//! VP8 to IVF: frames assembled from RTP packets, written with their presentation timestamps.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use webrtc::rtp::codecs::vp8::Vp8Packet;
use webrtc::rtp::packet::Packet;
use webrtc::rtp::packetizer::Depacketizer;

use super::sequence::{SeqCheck, SeqTracker, TsUnwrapper};
use super::{FileSummary, MediaError, close_file};

/// IVF file header size in bytes.
pub(super) const IVF_HEADER_LEN: u64 = 32;
/// IVF per-frame header size in bytes.
pub(super) const IVF_FRAME_HEADER_LEN: u64 = 12;
/// Byte offset of the frame count in the IVF file header.
pub(super) const IVF_FRAME_COUNT_OFFSET: u64 = 24;
/// Offset of the header's width and height (u16 each).
pub(super) const IVF_SIZE_OFFSET: u64 = 12;
/// RTP clock rate of VP8, used as the IVF timebase denominator.
pub(super) const VP8_CLOCK_RATE: u32 = 90_000;

/// A frame being assembled from packets sharing one RTP timestamp.
#[derive(Debug)]
pub(super) struct PendingFrame {
    ts: u32,
    data: Vec<u8>,
    /// A packet of the frame is missing or unparsable.
    corrupt: bool,
}

/// Writes a VP8 RTP stream to an IVF file.
///
/// The timebase is 1/90000 and each frame's PTS is its RTP timestamp minus
/// that of the first frame written, unwrapped to 64 bits. A frame is the
/// payload of consecutive packets up to the one with the marker bit.
/// Frames before the first key frame are skipped. Frames with a sequence
/// number gap, an unparsable packet, a missing first packet or a missing
/// marker packet are dropped whole; later frames are still written.
#[derive(Debug)]
pub struct IvfWriter {
    path: PathBuf,
    out: BufWriter<File>,
    seq: SeqTracker,
    pending: Option<PendingFrame>,
    /// Timeline; `Some` once the first key frame has been written.
    clock: Option<TsUnwrapper>,
    frames: u64,
    last_pts: u64,
    bytes: u64,
    dropped_frames: u64,
    skipped_frames: u64,
    dropped_packets: u64,
    /// Width and height of the first key frame that carried them (the header gets them at
    /// [`finish`](Self::finish) when it was created without).
    size: Option<(u16, u16)>,
    header_size: (u16, u16),
}

/// Width and height from a VP8 key frame's header (RFC 6386 §9.1: start code `9d 01 2a`, then
/// 14-bit width and height, little endian).
pub fn vp8_key_frame_size(frame: &[u8]) -> Option<(u16, u16)> {
    if frame.len() < 10 || frame[0] & 0x01 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let width = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
    let height = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
    (width > 0 && height > 0).then_some((width, height))
}

impl IvfWriter {
    /// Creates (truncates) the file at `path` and writes the IVF header
    /// (`VP80`, `width`×`height`, timebase 1/90000, frame count 0 until
    /// [`finish`](Self::finish)).
    pub fn create(path: impl AsRef<Path>, width: u16, height: u16) -> Result<Self, MediaError> {
        let path = path.as_ref().to_path_buf();
        let mut out = BufWriter::new(File::create(&path)?);
        let mut header = Vec::with_capacity(32);
        header.extend_from_slice(b"DKIF");
        header.extend_from_slice(&0u16.to_le_bytes()); // version
        header.extend_from_slice(&32u16.to_le_bytes()); // header size
        header.extend_from_slice(b"VP80");
        header.extend_from_slice(&width.to_le_bytes());
        header.extend_from_slice(&height.to_le_bytes());
        header.extend_from_slice(&VP8_CLOCK_RATE.to_le_bytes()); // timebase denominator
        header.extend_from_slice(&1u32.to_le_bytes()); // timebase numerator
        header.extend_from_slice(&0u32.to_le_bytes()); // frame count
        header.extend_from_slice(&0u32.to_le_bytes()); // unused
        out.write_all(&header)?;
        Ok(Self {
            path,
            out,
            seq: SeqTracker::default(),
            pending: None,
            clock: None,
            frames: 0,
            last_pts: 0,
            bytes: IVF_HEADER_LEN,
            dropped_frames: 0,
            skipped_frames: 0,
            dropped_packets: 0,
            size: None,
            header_size: (width, height),
        })
    }

    /// Feeds one RTP packet. Fails only on I/O errors.
    ///
    /// Duplicate and late packets are counted in
    /// [`dropped_packets`](Self::dropped_packets) and ignored.
    pub fn write_rtp(&mut self, pkt: &Packet) -> Result<(), MediaError> {
        let ts = pkt.header.timestamp;
        let seq = self.seq.check(pkt.header.sequence_number);
        if seq == SeqCheck::Stale {
            self.dropped_packets += 1;
            return Ok(());
        }
        // A new timestamp ends the pending frame; it never got its marker.
        if let Some(frame) = self.pending.take_if(|f| f.ts != ts) {
            self.discard(frame.ts);
        }
        match depacketize_vp8(&pkt.payload) {
            Err(_) => {
                self.dropped_packets += 1;
                self.pending.get_or_insert_with(|| PendingFrame::new(ts)).corrupt = true;
            }
            Ok((starts_frame, data)) => {
                let frame = match &mut self.pending {
                    Some(frame) => {
                        // Lost packets, or a second frame start, inside a frame.
                        frame.corrupt |= seq == SeqCheck::Gap || starts_frame;
                        frame
                    }
                    None => {
                        let mut frame = PendingFrame::new(ts);
                        // Without its start the frame cannot be decoded.
                        frame.corrupt = !starts_frame;
                        self.pending.insert(frame)
                    }
                };
                if !frame.corrupt {
                    frame.data.extend_from_slice(&data);
                }
            }
        }
        if pkt.header.marker
            && let Some(frame) = self.pending.take()
        {
            self.complete(frame)?;
        }
        Ok(())
    }

    /// Writes a fully received frame, or skips it before the first key frame.
    fn complete(&mut self, frame: PendingFrame) -> Result<(), MediaError> {
        if frame.corrupt || frame.data.is_empty() {
            self.discard(frame.ts);
            return Ok(());
        }
        if self.clock.is_none() && !is_vp8_key_frame(&frame.data) {
            self.skipped_frames += 1;
            return Ok(());
        }
        let Ok(size) = u32::try_from(frame.data.len()) else {
            self.discard(frame.ts);
            return Ok(());
        };
        let clock = self.clock.get_or_insert(TsUnwrapper::new(frame.ts));
        // Clamped so that PTS never decreases.
        let pts = u64::try_from(clock.position(frame.ts)).unwrap_or(0).max(self.last_pts);
        if self.size.is_none() {
            self.size = vp8_key_frame_size(&frame.data);
        }
        self.out.write_all(&size.to_le_bytes())?;
        self.out.write_all(&pts.to_le_bytes())?;
        self.out.write_all(&frame.data)?;
        self.frames += 1;
        self.last_pts = pts;
        self.bytes += IVF_FRAME_HEADER_LEN + u64::from(size);
        Ok(())
    }

    /// Counts a frame that is not written.
    fn discard(&mut self, ts: u32) {
        match &mut self.clock {
            Some(clock) => {
                clock.position(ts); // keep the unwrapper's reference recent
                self.dropped_frames += 1;
            }
            None => self.skipped_frames += 1,
        }
    }

    /// Frames written so far.
    pub fn frames_written(&self) -> u64 {
        self.frames
    }

    /// PTS of the first frame written (always 0), if any.
    pub fn first_pts(&self) -> Option<u64> {
        self.clock.map(|_| 0)
    }

    /// PTS of the last frame written, if any.
    pub fn last_pts(&self) -> Option<u64> {
        self.clock.map(|_| self.last_pts)
    }

    /// Bytes written so far, headers included (some may still be buffered).
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Frames dropped after the first key frame because they were incomplete.
    pub fn dropped_frames(&self) -> u64 {
        self.dropped_frames
    }

    /// Frames skipped while waiting for the first key frame.
    pub fn skipped_frames(&self) -> u64 {
        self.skipped_frames
    }

    /// Packets that were unparsable, duplicate or late.
    pub fn dropped_packets(&self) -> u64 {
        self.dropped_packets
    }

    /// Drops any incomplete frame, sets the header frame count, fsyncs and
    /// summarizes the file.
    ///
    /// `duration_ms` is last PTS − first PTS plus one frame interval, the
    /// interval being estimated as (last − first) / (frames − 1); a single
    /// frame has duration 0.
    pub fn finish(mut self) -> Result<FileSummary, MediaError> {
        if let Some(frame) = self.pending.take() {
            self.discard(frame.ts);
        }
        let count = u32::try_from(self.frames).unwrap_or(u32::MAX);
        let size = match (self.header_size, self.size) {
            ((0, 0), Some(size)) => Some(size),
            _ => None,
        };
        let (bytes, sha256) = close_file(
            self.out,
            |file| {
                if let Some((width, height)) = size {
                    file.seek(SeekFrom::Start(IVF_SIZE_OFFSET))?;
                    file.write_all(&width.to_le_bytes())?;
                    file.write_all(&height.to_le_bytes())?;
                }
                file.seek(SeekFrom::Start(IVF_FRAME_COUNT_OFFSET))?;
                file.write_all(&count.to_le_bytes())
            },
            &self.path,
        )?;
        let span = u128::from(self.last_pts);
        let ticks = if self.frames > 1 { span + span / u128::from(self.frames - 1) } else { 0 };
        Ok(FileSummary {
            path: self.path,
            codec: "vp8",
            frames: self.frames,
            duration_ms: u64::try_from(ticks * 1000 / u128::from(VP8_CLOCK_RATE)).unwrap_or(u64::MAX),
            bytes,
            sha256,
        })
    }
}

impl PendingFrame {
    fn new(ts: u32) -> Self {
        Self { ts, data: Vec::new(), corrupt: false }
    }
}

/// Splits a VP8 RTP payload (RFC 7741) into "starts a frame" (S = 1 and
/// partition index 0) and the VP8 data after the payload descriptor.
///
/// `Vp8Packet::depacketize` rejects payloads shorter than 4 bytes even when
/// the descriptor is 1 byte and the data 1–2 bytes (a packetizer's short
/// last fragment); such payloads are padded with 3 zero bytes for parsing
/// and the padding removed from the result. A fresh `Vp8Packet` is used per
/// call because it keeps extension flags from earlier calls.
pub(super) fn depacketize_vp8(payload: &Bytes) -> Result<(bool, Bytes), MediaError> {
    const PAD: usize = 3;
    let mut vp8 = Vp8Packet::default();
    let data = if payload.len() >= 4 {
        vp8.depacketize(payload)
    } else {
        let mut padded = payload.to_vec();
        padded.resize(payload.len() + PAD, 0);
        vp8.depacketize(&Bytes::from(padded)).and_then(|d| {
            if d.len() > PAD { Ok(d.slice(..d.len() - PAD)) } else { Err(webrtc::rtp::Error::ErrShortPacket) }
        })
    }
    .map_err(|e| MediaError::Rtp(e.to_string()))?;
    let starts_frame = vp8.is_partition_head(payload) && vp8.pid == 0;
    Ok((starts_frame, data))
}

/// A VP8 frame is a key frame when bit 0 of its first byte (the inverse
/// key frame flag of the frame tag, RFC 6386 §9.1) is 0.
pub(super) fn is_vp8_key_frame(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 1 == 0)
}
