//! Recording of received RTP media to files: VP8 to IVF, Opus to Ogg Opus.
//!
//! Both writers take RTP packets in arrival order, one stream (SSRC) per
//! writer. Damaged input never fails a writer: bad packets and frames that
//! cannot be assembled completely are counted and skipped. Only I/O errors
//! are returned.
//!
//! Timestamps are unwrapped across `u32` wraparound by accumulating the
//! signed 32-bit difference (`wrapping_sub`) between successive RTP
//! timestamps, so recordings may be arbitrarily long.

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::fs::File;
use std::hash::BuildHasher;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use webrtc::rtp::codecs::vp8::Vp8Packet;
use webrtc::rtp::packet::Packet;
use webrtc::rtp::packetizer::Depacketizer;

/// Error returned by the media file writers.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// Reading or writing the file failed. Fatal for the writer.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// A payload could not be parsed. Writers count and skip such packets;
    /// only the free parsing functions return this.
    #[error("bad RTP payload: {0}")]
    Rtp(String),
}

/// Description of a finished media file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    /// Path the file was created at.
    pub path: PathBuf,
    /// `"vp8"` or `"opus"`.
    pub codec: &'static str,
    /// Video frames or Opus packets written.
    pub frames: u64,
    /// Media duration in milliseconds (see each writer's `finish`).
    pub duration_ms: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// SHA-256 of the whole file, lowercase hex.
    pub sha256: String,
}

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

/// A sequence number this far or less behind the newest one is a duplicate or
/// late packet; a larger backward jump is taken as a stream restart.
const STALE_WINDOW: i16 = 1000;

/// Where a packet's sequence number lies relative to the newest one seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeqCheck {
    /// The first packet, or the successor of the newest one.
    Next,
    /// Newer than expected: packets were lost (or the stream restarted).
    Gap,
    /// A duplicate or a late (reordered) packet.
    Stale,
}

/// Tracks the newest RTP sequence number.
#[derive(Debug, Default)]
struct SeqTracker {
    last: Option<u16>,
}

impl SeqTracker {
    /// Classifies `seq` and, unless it is stale, makes it the newest.
    fn check(&mut self, seq: u16) -> SeqCheck {
        let verdict = match self.last {
            None => SeqCheck::Next,
            Some(last) => {
                let delta = seq.wrapping_sub(last) as i16;
                if delta == 1 {
                    SeqCheck::Next
                } else if delta <= 0 && delta > -STALE_WINDOW {
                    return SeqCheck::Stale;
                } else {
                    SeqCheck::Gap
                }
            }
        };
        self.last = Some(seq);
        verdict
    }
}

/// Maps 32-bit RTP timestamps to a 64-bit timeline starting at an origin.
#[derive(Debug, Clone, Copy)]
struct TsUnwrapper {
    last: u32,
    ext: i64,
}

impl TsUnwrapper {
    /// Starts the timeline at `origin` (position 0).
    fn new(origin: u32) -> Self {
        Self { last: origin, ext: 0 }
    }

    /// Position of `ts` on the timeline. The step from the previous call's
    /// timestamp is read as signed, so it may wrap around `u32` either way.
    fn position(&mut self, ts: u32) -> i64 {
        self.ext += i64::from(ts.wrapping_sub(self.last) as i32);
        self.last = ts;
        self.ext
    }
}

/// Flushes `out`, lets `fixup` patch the file, fsyncs it, and hashes it.
fn close_file(
    out: BufWriter<File>,
    fixup: impl FnOnce(&mut File) -> io::Result<()>,
    path: &Path,
) -> io::Result<(u64, String)> {
    let mut file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    fixup(&mut file)?;
    file.sync_all()?;
    drop(file);
    hash_file(path)
}

/// Length and lowercase hex SHA-256 of the file at `path`.
fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let len = io::copy(&mut File::open(path)?, &mut hasher)?;
    let mut hex = String::with_capacity(64);
    for b in hasher.finalize() {
        let _ = write!(hex, "{b:02x}");
    }
    Ok((len, hex))
}

// ---------------------------------------------------------------------------
// VP8 -> IVF
// ---------------------------------------------------------------------------

/// IVF file header size in bytes.
const IVF_HEADER_LEN: u64 = 32;
/// IVF per-frame header size in bytes.
const IVF_FRAME_HEADER_LEN: u64 = 12;
/// Byte offset of the frame count in the IVF file header.
const IVF_FRAME_COUNT_OFFSET: u64 = 24;
/// Offset of the header's width and height (u16 each).
const IVF_SIZE_OFFSET: u64 = 12;
/// RTP clock rate of VP8, used as the IVF timebase denominator.
const VP8_CLOCK_RATE: u32 = 90_000;

/// A frame being assembled from packets sharing one RTP timestamp.
#[derive(Debug)]
struct PendingFrame {
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
fn depacketize_vp8(payload: &Bytes) -> Result<(bool, Bytes), MediaError> {
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
fn is_vp8_key_frame(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 1 == 0)
}

// ---------------------------------------------------------------------------
// Opus -> Ogg Opus
// ---------------------------------------------------------------------------

/// Opus RTP clock rate and Ogg Opus granule rate.
const OPUS_CLOCK_RATE: u32 = 48_000;
/// Longest Opus packet, in 48 kHz samples (120 ms, RFC 6716 §3.2.5).
const OPUS_MAX_PACKET_SAMPLES: u32 = 5_760;
/// Largest packet that fits on one Ogg page (255 lacing values).
const OGG_MAX_PAGE_PACKET: usize = 255 * 255 - 1;
/// Ogg page header flag: first page of the stream.
const OGG_BOS: u8 = 0x02;
/// Ogg page header flag: last page of the stream.
const OGG_EOS: u8 = 0x04;
/// Vendor string written to the OpusTags header.
const OPUS_VENDOR: &[u8] = b"videocall";

/// Number of 48 kHz samples in an Opus packet, from its TOC byte and, for
/// code 3, its frame count byte (RFC 6716 §3.1, §3.2).
///
/// Fails on an empty packet, a code 1 packet with an odd data length, a code
/// 2 packet without length byte, a code 3 packet without or with a zero
/// frame count, and packets longer than 120 ms.
pub fn opus_packet_samples(packet: &[u8]) -> Result<u32, MediaError> {
    let bad = |why: &str| MediaError::Rtp(format!("Opus packet: {why}"));
    let (&toc, rest) = packet.split_first().ok_or_else(|| bad("empty"))?;
    let config = toc >> 3;
    let frame_samples: u32 = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config & 3)], // SILK 10/20/40/60 ms
        12..=15 => [480, 960][usize::from(config & 1)],            // Hybrid 10/20 ms
        _ => [120, 240, 480, 960][usize::from(config & 3)],        // CELT 2.5/5/10/20 ms
    };
    let frames: u32 = match toc & 3 {
        0 => 1,
        1 if rest.len() % 2 == 0 => 2,
        1 => return Err(bad("code 1 with odd data length")),
        2 if !rest.is_empty() => 2,
        2 => return Err(bad("code 2 without frame length")),
        _ => match rest.first().map(|b| b & 0x3f) {
            Some(n) if n > 0 => u32::from(n),
            _ => return Err(bad("code 3 without frames")),
        },
    };
    let samples = frame_samples * frames;
    if samples > OPUS_MAX_PACKET_SAMPLES {
        return Err(bad("longer than 120 ms"));
    }
    Ok(samples)
}

/// CRC lookup table for Ogg (polynomial 0x04c11db7, MSB first).
const OGG_CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            r = if r & 0x8000_0000 != 0 { (r << 1) ^ 0x04c1_1db7 } else { r << 1 };
            bit += 1;
        }
        table[i] = r;
        i += 1;
    }
    table
};

/// Ogg page checksum: CRC-32, polynomial 0x04c11db7, not reflected, initial
/// value 0, no final XOR.
fn ogg_crc(data: &[u8]) -> u32 {
    data.iter().fold(0, |crc, &b| (crc << 8) ^ OGG_CRC_TABLE[usize::from((crc >> 24) as u8 ^ b)])
}

/// Writes an Opus RTP stream to an Ogg Opus file (RFC 7845).
///
/// Page 0 holds OpusHead (version 1, pre-skip 0, input rate 48000, gain 0,
/// mapping family 0), page 1 OpusTags (vendor "videocall", no comments),
/// then each packet gets a page of its own. Pre-skip is 0 because the
/// remote encoder's lookahead is unknown; players therefore also output the
/// decoder's few milliseconds of warm-up.
///
/// A page's granule position counts 48 kHz samples from the first packet's
/// RTP timestamp to the end of the page's packet (timestamp delta plus the
/// packet's duration from its TOC byte). Lost packets and DTX thus advance
/// the granule position without packets. The last packet is held back
/// until the next one arrives or [`finish`](Self::finish) writes it with
/// the end-of-stream flag.
#[derive(Debug)]
pub struct OggOpusWriter {
    path: PathBuf,
    out: BufWriter<File>,
    serial: u32,
    page_seq: u32,
    seq: SeqTracker,
    clock: Option<TsUnwrapper>,
    /// Last accepted packet and its granule position, not yet written.
    held: Option<(Bytes, u64)>,
    granule: u64,
    packets: u64,
    bytes: u64,
    dropped_packets: u64,
}

impl OggOpusWriter {
    /// Usual channel count for WebRTC Opus (RFC 7587 signals stereo).
    pub const DEFAULT_CHANNELS: u8 = 2;

    /// Creates (truncates) the file at `path` and writes the OpusHead and
    /// OpusTags pages. `channels` must be 1 or 2 (mapping family 0).
    pub fn create(path: impl AsRef<Path>, channels: u8) -> Result<Self, MediaError> {
        if !(1..=2).contains(&channels) {
            return Err(MediaError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Ogg Opus mapping family 0 takes 1 or 2 channels",
            )));
        }
        let path = path.as_ref().to_path_buf();
        let out = BufWriter::new(File::create(&path)?);
        // Per-process random seed; truncation to 32 bits is intended.
        let serial = RandomState::new().hash_one(&path) as u32;
        let mut writer = Self {
            path,
            out,
            serial,
            page_seq: 0,
            seq: SeqTracker::default(),
            clock: None,
            held: None,
            granule: 0,
            packets: 0,
            bytes: 0,
            dropped_packets: 0,
        };

        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(channels);
        head.extend_from_slice(&0u16.to_le_bytes()); // pre-skip
        head.extend_from_slice(&OPUS_CLOCK_RATE.to_le_bytes()); // input sample rate
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // channel mapping family
        writer.write_page(OGG_BOS, 0, Some(&head))?;

        let mut tags = Vec::with_capacity(16 + OPUS_VENDOR.len());
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&(OPUS_VENDOR.len() as u32).to_le_bytes());
        tags.extend_from_slice(OPUS_VENDOR);
        tags.extend_from_slice(&0u32.to_le_bytes()); // user comment count
        writer.write_page(0, 0, Some(&tags))?;
        Ok(writer)
    }

    /// Feeds one RTP packet. Fails only on I/O errors.
    ///
    /// Duplicate, late and unparsable packets, packets too big for one Ogg
    /// page, and packets that would move the granule position backwards are
    /// counted in [`dropped_packets`](Self::dropped_packets) and ignored.
    pub fn write_rtp(&mut self, pkt: &Packet) -> Result<(), MediaError> {
        if self.seq.check(pkt.header.sequence_number) == SeqCheck::Stale || pkt.payload.len() > OGG_MAX_PAGE_PACKET {
            self.dropped_packets += 1;
            return Ok(());
        }
        let Ok(samples) = opus_packet_samples(&pkt.payload) else {
            self.dropped_packets += 1;
            return Ok(());
        };
        let ts = pkt.header.timestamp;
        let start = self.clock.get_or_insert(TsUnwrapper::new(ts)).position(ts);
        let end = start + i64::from(samples);
        let granule = match u64::try_from(end) {
            Ok(g) if g >= self.granule => g,
            _ => {
                self.dropped_packets += 1;
                return Ok(());
            }
        };
        self.granule = granule;
        self.packets += 1;
        if let Some((prev, prev_granule)) = self.held.replace((pkt.payload.clone(), granule)) {
            self.write_page(0, prev_granule, Some(&prev))?;
        }
        Ok(())
    }

    /// Writes one page holding `packet` (or nothing).
    fn write_page(&mut self, flags: u8, granule: u64, packet: Option<&[u8]>) -> io::Result<()> {
        let (lacing, body): (Vec<u8>, &[u8]) = match packet {
            // 255s then the remainder, which is 0 for a multiple of 255.
            Some(p) => {
                let mut lacing = vec![255u8; p.len() / 255];
                lacing.push((p.len() % 255) as u8);
                (lacing, p)
            }
            None => (Vec::new(), &[]),
        };
        let segments = u8::try_from(lacing.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "packet too big for a page"))?;
        let mut page = Vec::with_capacity(27 + lacing.len() + body.len());
        page.extend_from_slice(b"OggS");
        page.push(0); // version
        page.push(flags);
        page.extend_from_slice(&granule.to_le_bytes());
        page.extend_from_slice(&self.serial.to_le_bytes());
        page.extend_from_slice(&self.page_seq.to_le_bytes());
        page.extend_from_slice(&0u32.to_le_bytes()); // CRC placeholder
        page.push(segments);
        page.extend_from_slice(&lacing);
        page.extend_from_slice(body);
        let crc = ogg_crc(&page);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&page)?;
        self.page_seq = self.page_seq.wrapping_add(1);
        self.bytes += page.len() as u64;
        Ok(())
    }

    /// Packets accepted so far (the last one is written by `finish`).
    pub fn packets_written(&self) -> u64 {
        self.packets
    }

    /// Granule position (48 kHz samples) at the end of the last packet.
    pub fn granule_position(&self) -> u64 {
        self.granule
    }

    /// Bytes written so far (some may still be buffered).
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Packets that were ignored (see [`write_rtp`](Self::write_rtp)).
    pub fn dropped_packets(&self) -> u64 {
        self.dropped_packets
    }

    /// Ogg bitstream serial number (random per writer).
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Writes the held-back last packet on an end-of-stream page (or an
    /// empty end-of-stream page with granule 0 if there were no packets),
    /// fsyncs and summarizes the file. `duration_ms` is the final granule
    /// position / 48.
    pub fn finish(mut self) -> Result<FileSummary, MediaError> {
        match self.held.take() {
            Some((last, granule)) => self.write_page(OGG_EOS, granule, Some(&last))?,
            None => self.write_page(OGG_EOS, 0, None)?,
        }
        let (bytes, sha256) = close_file(self.out, |_| Ok(()), &self.path)?;
        Ok(FileSummary {
            path: self.path,
            codec: "opus",
            frames: self.packets,
            duration_ms: self.granule / u64::from(OPUS_CLOCK_RATE / 1000),
            bytes,
            sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use webrtc::media::io::ivf_reader::IVFReader;
    use webrtc::media::io::ogg_reader::OggReader;
    use webrtc::rtp::header::Header;
    use webrtc::rtp::packetizer::Payloader;

    /// Unique scratch path for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("media_files_test_{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn rtp(seq: u16, ts: u32, marker: bool, payload: impl Into<Bytes>) -> Packet {
        Packet {
            header: Header {
                version: 2,
                payload_type: 96,
                sequence_number: seq,
                timestamp: ts,
                ssrc: 0x1234_5678,
                marker,
                ..Default::default()
            },
            payload: payload.into(),
        }
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Synthetic VP8 frame: key frames start with 0x10 (bit 0 clear),
    /// inter frames with 0x11.
    fn vp8_frame(i: usize, len: usize, key: bool) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|j| (i * 31 + j * 7) as u8).collect();
        f[0] = if key { 0x10 } else { 0x11 };
        f
    }

    /// Packetizes frames with `Vp8Payloader` (1-byte descriptors), marker on
    /// each frame's last packet. Returns packets grouped per frame.
    fn packetize(frames: &[(u32, Vec<u8>)], mtu: usize, first_seq: u16) -> Vec<Vec<Packet>> {
        let mut payloader = webrtc::rtp::codecs::vp8::Vp8Payloader::default();
        let mut seq = first_seq;
        frames
            .iter()
            .map(|(ts, data)| {
                let parts = payloader.payload(mtu, &Bytes::from(data.clone())).unwrap();
                let n = parts.len();
                parts
                    .into_iter()
                    .enumerate()
                    .map(|(k, p)| {
                        let pkt = rtp(seq, *ts, k + 1 == n, p);
                        seq = seq.wrapping_add(1);
                        pkt
                    })
                    .collect()
            })
            .collect()
    }

    /// Reads an IVF file with webrtc-media's reader: header and all frames.
    fn read_ivf(path: &Path) -> (webrtc::media::io::ivf_reader::IVFFileHeader, Vec<(u64, Vec<u8>)>) {
        let (mut reader, header) = IVFReader::new(fs::File::open(path).unwrap()).unwrap();
        let mut frames = Vec::new();
        while let Ok((data, fh)) = reader.parse_next_frame() {
            assert_eq!(fh.frame_size as usize, data.len());
            frames.push((fh.timestamp, data.to_vec()));
        }
        (header, frames)
    }

    #[test]
    fn vp8_round_trip_90_frames() {
        let path = scratch("round_trip.ivf");
        let mtu = 120; // 119 data bytes per packet
        let frames: Vec<(u32, Vec<u8>)> = (0..90)
            .map(|i| {
                let len = match i {
                    5 => 120, // 119 + 1: 2-byte last packet
                    6 => 239, // 119 + 119 + 1
                    7 => 357, // exactly 3 full packets
                    _ => 20 + (i * 37) % 300,
                };
                (1000 + 3000 * i as u32, vp8_frame(i, len, i == 0))
            })
            .collect();
        let packets = packetize(&frames, mtu, 65_500); // sequence numbers wrap too
        assert!(packets.iter().any(|p| p.len() == 3));
        assert!(packets.iter().any(|p| p.len() == 2));
        assert_eq!(packets[5][1].payload.len(), 2);

        let mut w = IvfWriter::create(&path, 640, 480).unwrap();
        for p in packets.iter().flatten() {
            w.write_rtp(p).unwrap();
        }
        assert_eq!(w.frames_written(), 90);
        assert_eq!(w.first_pts(), Some(0));
        assert_eq!(w.last_pts(), Some(89 * 3000));
        assert_eq!((w.dropped_frames(), w.skipped_frames(), w.dropped_packets()), (0, 0, 0));
        let written = w.bytes_written();
        let summary = w.finish().unwrap();

        let (header, read) = read_ivf(&path);
        assert_eq!(&header.signature, b"DKIF");
        assert_eq!(&header.four_cc, b"VP80");
        assert_eq!((header.width, header.height), (640, 480));
        assert_eq!(header.timebase_denominator, 90_000);
        assert_eq!(header.timebase_numerator, 1);
        assert_eq!(header.num_frames, 90);
        assert_eq!(read.len(), 90);
        for (i, (pts, data)) in read.iter().enumerate() {
            assert_eq!(*pts, 3000 * i as u64, "pts of frame {i}");
            assert_eq!(data, &frames[i].1, "data of frame {i}");
        }

        let file = fs::read(&path).unwrap();
        let expected_len = 32 + frames.iter().map(|f| 12 + f.1.len() as u64).sum::<u64>();
        assert_eq!(summary.path, path);
        assert_eq!(summary.codec, "vp8");
        assert_eq!(summary.frames, 90);
        assert_eq!(summary.duration_ms, 3000);
        assert_eq!(summary.bytes, expected_len);
        assert_eq!(written, expected_len);
        assert_eq!(file.len() as u64, expected_len);
        assert_eq!(summary.sha256, sha256_hex(&file));
        assert_eq!(summary.sha256.len(), 64);
    }

    #[test]
    fn vp8_skips_until_first_key_frame() {
        let path = scratch("skip.ivf");
        // Frames 0..4 are inter frames, 4 is the first key frame.
        let frames: Vec<(u32, Vec<u8>)> =
            (0..12).map(|i| (50_000 + 3000 * i as u32, vp8_frame(i, 200, i == 4 || i == 9))).collect();
        let packets = packetize(&frames, 120, 7);
        let mut w = IvfWriter::create(&path, 320, 240).unwrap();
        // Join mid-frame: frame 0's first packet is not seen.
        for p in packets.iter().flatten().skip(1) {
            w.write_rtp(p).unwrap();
        }
        assert_eq!(w.skipped_frames(), 4);
        assert_eq!(w.dropped_frames(), 0);
        let summary = w.finish().unwrap();
        let (header, read) = read_ivf(&path);
        assert_eq!(header.num_frames, 8);
        assert_eq!(read.len(), 8);
        for (k, (pts, data)) in read.iter().enumerate() {
            assert_eq!(*pts, 3000 * k as u64);
            assert_eq!(data, &frames[4 + k].1);
        }
        assert_eq!(summary.frames, 8);
        assert_eq!(summary.duration_ms, 8 * 3000 / 90);
    }

    #[test]
    fn vp8_gap_drops_exactly_that_frame() {
        let path = scratch("gap.ivf");
        let frames: Vec<(u32, Vec<u8>)> = (0..10).map(|i| (3000 * i as u32, vp8_frame(i, 300, i == 0))).collect();
        let packets = packetize(&frames, 120, 100);
        assert!(packets.iter().all(|p| p.len() == 3));
        let mut w = IvfWriter::create(&path, 320, 240).unwrap();
        for (i, frame) in packets.iter().enumerate() {
            for (k, p) in frame.iter().enumerate() {
                if !(i == 4 && k == 1) {
                    w.write_rtp(p).unwrap();
                }
            }
        }
        assert_eq!(w.dropped_frames(), 1);
        let summary = w.finish().unwrap();
        let (header, read) = read_ivf(&path);
        let kept: Vec<usize> = (0..10).filter(|&i| i != 4).collect();
        assert_eq!(header.num_frames, 9);
        assert_eq!(read.len(), 9);
        for ((pts, data), &i) in read.iter().zip(&kept) {
            assert_eq!(*pts, 3000 * i as u64);
            assert_eq!(data, &frames[i].1);
        }
        assert_eq!(summary.frames, 9);
        // 27000 ticks + 27000 / 8 ticks.
        assert_eq!(summary.duration_ms, (27_000 + 27_000 / 8) / 90);
    }

    #[test]
    fn vp8_lost_marker_bad_packet_and_late_packet() {
        let path = scratch("lost_marker.ivf");
        let frames: Vec<(u32, Vec<u8>)> = (0..8).map(|i| (3000 * i as u32, vp8_frame(i, 200, i == 0))).collect();
        let mut packets = packetize(&frames, 120, 0);
        packets[2].pop(); // frame 2 loses its marker packet
        packets[5][1].payload = Bytes::from_static(&[0x80]); // unparsable descriptor
        let late = packets[6][0].clone();
        packets[6].push(late); // duplicate, after the frame completed
        let mut w = IvfWriter::create(&path, 320, 240).unwrap();
        for p in packets.iter().flatten() {
            w.write_rtp(p).unwrap();
        }
        assert_eq!(w.dropped_frames(), 2);
        assert_eq!(w.dropped_packets(), 2);
        let summary = w.finish().unwrap();
        let (_, read) = read_ivf(&path);
        let pts: Vec<u64> = read.iter().map(|f| f.0).collect();
        assert_eq!(pts, [0, 3000, 9000, 12000, 18000, 21000]);
        assert_eq!(read[2].1, frames[3].1);
        assert_eq!(summary.frames, 6);
    }

    #[test]
    fn vp8_timestamp_wraparound_is_monotonic() {
        let path = scratch("wrap.ivf");
        let start = u32::MAX - 4000;
        let frames: Vec<(u32, Vec<u8>)> =
            (0..10).map(|i| (start.wrapping_add(3000 * i as u32), vp8_frame(i, 150, i == 0))).collect();
        assert!(frames[2].0 < frames[1].0);
        let packets = packetize(&frames, 1200, 65_530);
        let mut w = IvfWriter::create(&path, 320, 240).unwrap();
        for p in packets.iter().flatten() {
            w.write_rtp(p).unwrap();
        }
        let summary = w.finish().unwrap();
        let (_, read) = read_ivf(&path);
        let pts: Vec<u64> = read.iter().map(|f| f.0).collect();
        assert_eq!(pts, (0..10).map(|i| 3000 * i).collect::<Vec<u64>>());
        assert_eq!(summary.duration_ms, 10 * 3000 / 90);
    }

    #[test]
    fn vp8_empty_recording() {
        let path = scratch("empty.ivf");
        let summary = IvfWriter::create(&path, 2, 2).unwrap().finish().unwrap();
        let (header, read) = read_ivf(&path);
        assert_eq!(header.num_frames, 0);
        assert!(read.is_empty());
        assert_eq!((summary.frames, summary.duration_ms, summary.bytes), (0, 0, 32));
        assert_eq!(summary.sha256, sha256_hex(&fs::read(&path).unwrap()));
    }

    #[test]
    fn short_vp8_payloads() {
        // 1-byte descriptor + 1 data byte.
        let (start, data) = depacketize_vp8(&Bytes::from_static(&[0x10, 0xab])).unwrap();
        assert!(start);
        assert_eq!(&data[..], &[0xab]);
        let (start, data) = depacketize_vp8(&Bytes::from_static(&[0x00, 1, 2])).unwrap();
        assert!(!start);
        assert_eq!(&data[..], &[1, 2]);
        // Extended descriptor with a 1-byte picture ID and 1 data byte.
        let (_, data) = depacketize_vp8(&Bytes::from_static(&[0x90, 0x80, 0x05, 0xcd])).unwrap();
        assert_eq!(&data[..], &[0xcd]);
        // Descriptor only, or truncated descriptors.
        for bad in [&[][..], &[0x10], &[0x80, 0x80], &[0x90, 0x80, 0x05]] {
            assert!(depacketize_vp8(&Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
        // S = 1 in a later partition does not start a frame.
        let (start, _) = depacketize_vp8(&Bytes::from_static(&[0x11, 1, 2, 3])).unwrap();
        assert!(!start);
    }

    // ---- Ogg Opus ----

    /// One raw Ogg page.
    #[derive(Debug)]
    struct RawPage {
        flags: u8,
        granule: u64,
        serial: u32,
        seq: u32,
        lacing: Vec<u8>,
        body: Vec<u8>,
    }

    /// Splits a file into pages (the reader under test hides flags and
    /// sequence numbers).
    fn raw_pages(file: &[u8]) -> Vec<RawPage> {
        let mut pages = Vec::new();
        let mut at = 0;
        while at < file.len() {
            let h = &file[at..];
            assert_eq!(&h[..4], b"OggS");
            assert_eq!(h[4], 0);
            let n = h[26] as usize;
            let lacing = h[27..27 + n].to_vec();
            let len: usize = lacing.iter().map(|&l| l as usize).sum();
            pages.push(RawPage {
                flags: h[5],
                granule: u64::from_le_bytes(h[6..14].try_into().unwrap()),
                serial: u32::from_le_bytes(h[14..18].try_into().unwrap()),
                seq: u32::from_le_bytes(h[18..22].try_into().unwrap()),
                body: h[27 + n..27 + n + len].to_vec(),
                lacing,
            });
            at += 27 + n + len;
        }
        assert_eq!(at, file.len());
        pages
    }

    fn opus_packet(i: usize, len: usize, toc: u8) -> Vec<u8> {
        let mut p: Vec<u8> = (0..len).map(|j| (i * 13 + j * 3) as u8).collect();
        p[0] = toc;
        p
    }

    #[test]
    fn opus_round_trip_150_packets() {
        let path = scratch("round_trip.opus");
        let start_ts = 123_456u32;
        let start_seq = 65_000u16;
        let packets: Vec<Vec<u8>> = (0..150)
            .map(|i| {
                let len = match i {
                    10 => 255,
                    11 => 510,
                    77 => 700,
                    _ => 3 + (i * 53) % 250,
                };
                opus_packet(i, len, 0xF8)
            })
            .collect();
        let mut w = OggOpusWriter::create(&path, OggOpusWriter::DEFAULT_CHANNELS).unwrap();
        for (i, p) in packets.iter().enumerate() {
            let pkt = rtp(start_seq.wrapping_add(i as u16), start_ts + 960 * i as u32, i == 0, p.clone());
            w.write_rtp(&pkt).unwrap();
        }
        assert_eq!(w.packets_written(), 150);
        assert_eq!(w.granule_position(), 150 * 960);
        assert_eq!(w.dropped_packets(), 0);
        let serial = w.serial();
        let summary = w.finish().unwrap();

        // Independent reader, CRCs checked.
        let (mut reader, head) = OggReader::new(fs::File::open(&path).unwrap(), true).unwrap();
        assert_eq!(head.version, 1);
        assert_eq!(head.channels, 2);
        assert_eq!(head.sample_rate, 48_000);
        assert_eq!(head.pre_skip, 0);
        assert_eq!(head.output_gain, 0);
        assert_eq!(head.channel_map, 0);
        let (tags, tags_header) = reader.parse_next_page().unwrap();
        assert_eq!(&tags[..], b"OpusTags\x09\0\0\0videocall\0\0\0\0");
        assert_eq!(tags_header.granule_position, 0);
        let mut data_pages = Vec::new();
        while let Ok((body, header)) = reader.parse_next_page() {
            data_pages.push((body.to_vec(), header.granule_position));
        }
        assert_eq!(data_pages.len(), 150);
        for (i, (body, granule)) in data_pages.iter().enumerate() {
            assert_eq!(body, &packets[i], "packet {i}");
            assert_eq!(*granule, 960 * (i as u64 + 1), "granule {i}");
        }

        // Raw page structure.
        let file = fs::read(&path).unwrap();
        let pages = raw_pages(&file);
        assert_eq!(pages.len(), 152);
        for (n, page) in pages.iter().enumerate() {
            assert_eq!(page.seq, n as u32);
            assert_eq!(page.serial, serial);
            let expected_flags = match n {
                0 => OGG_BOS,
                151 => OGG_EOS,
                _ => 0,
            };
            assert_eq!(page.flags, expected_flags, "flags of page {n}");
        }
        assert_eq!(pages[151].granule, 150 * 960);
        assert_eq!(pages[151].body, packets[149]);
        assert_eq!(pages[2 + 10].lacing, [255, 0]);
        assert_eq!(pages[2 + 11].lacing, [255, 255, 0]);
        assert_eq!(pages[2 + 77].lacing, [255, 255, 190]);

        assert_eq!(summary.codec, "opus");
        assert_eq!(summary.frames, 150);
        assert_eq!(summary.duration_ms, 3000);
        assert_eq!(summary.bytes, file.len() as u64);
        assert_eq!(summary.sha256, sha256_hex(&file));
    }

    #[test]
    fn opus_loss_duplicates_and_wraparound() {
        let path = scratch("loss.opus");
        let start_ts = u32::MAX - 1000;
        let mut w = OggOpusWriter::create(&path, 1).unwrap();
        let pkt = |i: u16| rtp(i, start_ts.wrapping_add(960 * u32::from(i)), false, opus_packet(i.into(), 40, 0xF8));
        for i in [0, 1, 2, 2, 1, 5, 6] {
            w.write_rtp(&pkt(i)).unwrap();
        }
        // Garbage: empty payload, code 3 with zero frames.
        w.write_rtp(&rtp(7, start_ts.wrapping_add(960 * 7), false, Bytes::new())).unwrap();
        w.write_rtp(&rtp(8, start_ts.wrapping_add(960 * 8), false, vec![0xFB, 0x00])).unwrap();
        assert_eq!(w.dropped_packets(), 4);
        let summary = w.finish().unwrap();

        let (mut reader, head) = OggReader::new(fs::File::open(&path).unwrap(), true).unwrap();
        assert_eq!(head.channels, 1);
        reader.parse_next_page().unwrap(); // OpusTags
        let mut granules = Vec::new();
        while let Ok((_, h)) = reader.parse_next_page() {
            granules.push(h.granule_position);
        }
        assert_eq!(granules, [960, 1920, 2880, 5760, 6720]);
        assert_eq!(summary.frames, 5);
        assert_eq!(summary.duration_ms, 140);
    }

    #[test]
    fn opus_code3_counts_all_frames() {
        // CELT FB 10 ms (config 30), code 3, 3 frames.
        let code3 = [(30 << 3) | 3, 0x03, 1, 2, 3];
        assert_eq!(opus_packet_samples(&code3).unwrap(), 1440);

        let path = scratch("code3.opus");
        let mut w = OggOpusWriter::create(&path, 2).unwrap();
        w.write_rtp(&rtp(1, 500, true, opus_packet(0, 30, 0xF8))).unwrap();
        w.write_rtp(&rtp(2, 500 + 960, false, code3.to_vec())).unwrap();
        w.write_rtp(&rtp(3, 500 + 960 + 1440, false, opus_packet(2, 30, 0xF8))).unwrap();
        let summary = w.finish().unwrap();
        let (mut reader, _) = OggReader::new(fs::File::open(&path).unwrap(), true).unwrap();
        reader.parse_next_page().unwrap();
        let granules: Vec<u64> =
            std::iter::from_fn(|| reader.parse_next_page().ok()).map(|(_, h)| h.granule_position).collect();
        assert_eq!(granules, [960, 2400, 3360]);
        assert_eq!(summary.duration_ms, 70);
    }

    #[test]
    fn opus_toc_durations() {
        let cases: [(&[u8], u32); 8] = [
            (&[0x00], 480),                 // SILK NB 10 ms
            (&[0x18], 2880),                // SILK NB 60 ms
            (&[(13 << 3) | 1, 1, 2], 1920), // Hybrid 20 ms, 2 frames
            (&[(12 << 3) | 1], 960),        // Hybrid 10 ms, 2 empty frames
            (&[(16 << 3) | 2, 0], 240),     // CELT 2.5 ms, 2 frames
            (&[0xF8], 960),                 // CELT FB 20 ms
            (&[(19 << 3) | 3, 0xC4], 3840), // CELT 20 ms x 4, VBR flag
            (&[(3 << 3) | 3, 2], 5760),     // SILK 60 ms x 2 = 120 ms
        ];
        for (packet, samples) in cases {
            assert_eq!(opus_packet_samples(packet).unwrap(), samples, "{packet:02x?}");
        }
        let bad: [&[u8]; 6] = [
            &[],
            &[0xF9, 1],         // code 1, odd data length
            &[0xFA],            // code 2 without length
            &[0xFB],            // code 3 without count
            &[0xFB, 0x40],      // code 3, zero frames
            &[(3 << 3) | 3, 3], // 180 ms
        ];
        for packet in bad {
            assert!(matches!(opus_packet_samples(packet), Err(MediaError::Rtp(_))), "{packet:02x?}");
        }
    }

    #[test]
    fn opus_empty_recording_has_eos_page() {
        let path = scratch("empty.opus");
        let summary = OggOpusWriter::create(&path, 2).unwrap().finish().unwrap();
        let file = fs::read(&path).unwrap();
        let pages = raw_pages(&file);
        assert_eq!(pages.len(), 3);
        assert_eq!(pages[2].flags, OGG_EOS);
        assert!(pages[2].lacing.is_empty());
        let (mut reader, _) = OggReader::new(&file[..], true).unwrap();
        reader.parse_next_page().unwrap();
        let (body, header) = reader.parse_next_page().unwrap();
        assert!(body.is_empty());
        assert_eq!(header.granule_position, 0);
        assert!(reader.parse_next_page().is_err());
        assert_eq!((summary.frames, summary.duration_ms), (0, 0));
        assert_eq!(summary.sha256, sha256_hex(&file));
    }

    #[test]
    fn ogg_crc_check_value() {
        // CRC-32/CKSUM check value is 0x765e7680 with final XOR 0xffffffff.
        assert_eq!(ogg_crc(b"123456789"), 0x765e_7680 ^ 0xffff_ffff);
    }

    #[test]
    fn rejects_bad_channel_count() {
        assert!(matches!(
            OggOpusWriter::create(scratch("bad.opus"), 3),
            Err(MediaError::Io(e)) if e.kind() == io::ErrorKind::InvalidInput
        ));
    }
}

#[cfg(test)]
mod size_tests {
    use super::vp8_key_frame_size;

    #[test]
    fn key_frame_headers_give_the_size() {
        // 640x480 key frame: tag (bit 0 clear), start code, 14-bit sizes with scale bits set.
        let frame = [0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x42, 0xe0, 0x41, 0x00];
        assert_eq!(vp8_key_frame_size(&frame), Some((640, 480)));
        let mut inter = frame;
        inter[0] |= 0x01;
        assert_eq!(vp8_key_frame_size(&inter), None, "inter frames carry no size");
        assert_eq!(vp8_key_frame_size(&[0x10; 20]), None, "no start code");
    }
}
