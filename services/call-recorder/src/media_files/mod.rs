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
//!
//! Sequence tracking (`sequence`), VP8 to IVF (`ivf`) and Opus to Ogg Opus (`ogg_opus`) are
//! apart; this module holds what they share.

mod ivf;
mod ogg_opus;
mod sequence;
#[cfg(test)]
mod tests;

pub use ivf::{IvfWriter, vp8_key_frame_size};
pub use ogg_opus::{OggOpusWriter, opus_packet_samples};

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

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

/// Flushes `out`, lets `fixup` patch the file, fsyncs it, and hashes it.
pub(super) fn close_file(
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
pub(super) fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let len = io::copy(&mut File::open(path)?, &mut hasher)?;
    let mut hex = String::with_capacity(64);
    for b in hasher.finalize() {
        let _ = write!(hex, "{b:02x}");
    }
    Ok((len, hex))
}
