//! Where an RTP packet stands in its stream: sequence numbers (duplicates, late packets, gaps,
//! restarts) and timestamps unwrapped across `u32` wraparound.

/// A sequence number this far or less behind the newest one is a duplicate or
/// late packet; a larger backward jump is taken as a stream restart.
pub(super) const STALE_WINDOW: i16 = 1000;

/// Where a packet's sequence number lies relative to the newest one seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SeqCheck {
    /// The first packet, or the successor of the newest one.
    Next,
    /// Newer than expected: packets were lost (or the stream restarted).
    Gap,
    /// A duplicate or a late (reordered) packet.
    Stale,
}

/// Tracks the newest RTP sequence number.
#[derive(Debug, Default)]
pub(super) struct SeqTracker {
    last: Option<u16>,
}

impl SeqTracker {
    /// Classifies `seq` and, unless it is stale, makes it the newest.
    pub(super) fn check(&mut self, seq: u16) -> SeqCheck {
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
pub(super) struct TsUnwrapper {
    last: u32,
    ext: i64,
}

impl TsUnwrapper {
    /// Starts the timeline at `origin` (position 0).
    pub(super) fn new(origin: u32) -> Self {
        Self { last: origin, ext: 0 }
    }

    /// Position of `ts` on the timeline. The step from the previous call's
    /// timestamp is read as signed, so it may wrap around `u32` either way.
    pub(super) fn position(&mut self, ts: u32) -> i64 {
        self.ext += i64::from(ts.wrapping_sub(self.last) as i32);
        self.last = ts;
        self.ext
    }
}
