//! The writers' round trips, losses, wraparounds and edge cases, read back with webrtc's readers.

use std::fs;

use bytes::Bytes;
use webrtc::rtp::packet::Packet;

use super::ivf::*;
use super::ogg_opus::*;
use super::*;
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
