//! Opus to Ogg Opus: one packet per page, its granule position from the RTP timestamp.

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::BuildHasher;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use webrtc::rtp::packet::Packet;

use super::sequence::{SeqCheck, SeqTracker, TsUnwrapper};
use super::{FileSummary, MediaError, close_file};

/// Opus RTP clock rate and Ogg Opus granule rate.
pub(super) const OPUS_CLOCK_RATE: u32 = 48_000;
/// Longest Opus packet, in 48 kHz samples (120 ms, RFC 6716 §3.2.5).
pub(super) const OPUS_MAX_PACKET_SAMPLES: u32 = 5_760;
/// Largest packet that fits on one Ogg page (255 lacing values).
pub(super) const OGG_MAX_PAGE_PACKET: usize = 255 * 255 - 1;
/// Ogg page header flag: first page of the stream.
pub(super) const OGG_BOS: u8 = 0x02;
/// Ogg page header flag: last page of the stream.
pub(super) const OGG_EOS: u8 = 0x04;
/// Vendor string written to the OpusTags header.
pub(super) const OPUS_VENDOR: &[u8] = b"videocall";

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
pub(super) const OGG_CRC_TABLE: [u32; 256] = {
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
pub(super) fn ogg_crc(data: &[u8]) -> u32 {
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
