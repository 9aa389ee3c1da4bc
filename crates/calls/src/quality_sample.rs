//! A client quality sample: its limits (checked by the gateway before it becomes an event, and
//! again by the aggregator before it is stored) and the `data` of the CallQualityReported event.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// CloudEvents `type` and routing key of a quality sample.
pub const CALL_QUALITY_REPORTED: (&str, &str) = ("CallQualityReported", "call.quality");

/// Which way the measured media flows, seen from the reporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// What the reporter receives (downlink).
    Inbound,
    /// What the reporter sends (uplink).
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Direction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "inbound" => Ok(Direction::Inbound),
            "outbound" => Ok(Direction::Outbound),
            other => {
                let shown: String = other.chars().take(32).collect();
                Err(format!("direction must be `inbound` or `outbound`, got `{shown}`"))
            }
        }
    }
}

pub const MAX_RTT_MS: f64 = 60_000.0;
pub const MAX_JITTER_MS: f64 = 10_000.0;
pub const MAX_PACKET_LOSS_PERCENT: f64 = 100.0;
pub const MAX_BITRATE_KBPS: f64 = 1_000_000.0;
pub const MAX_DIMENSION: u32 = 7680;
pub const MAX_FPS: f64 = 240.0;

/// One measurement of one direction of a call.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QualitySample {
    pub rtt_ms: f64,
    pub jitter_ms: f64,
    pub packet_loss_percent: f64,
    pub bitrate_kbps: f64,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub direction: Direction,
}

fn in_range(field: &str, value: f64, max: f64) -> Result<(), String> {
    if !value.is_finite() {
        return Err(format!("{field} must be a finite number"));
    }
    if !(0.0..=max).contains(&value) {
        return Err(format!("{field} must be between 0 and {max}, got {value}"));
    }
    Ok(())
}

impl QualitySample {
    /// Checks every limit; the error names the first field that breaks one.
    pub fn validate(&self) -> Result<(), String> {
        in_range("rtt_ms", self.rtt_ms, MAX_RTT_MS)?;
        in_range("jitter_ms", self.jitter_ms, MAX_JITTER_MS)?;
        in_range("packet_loss_percent", self.packet_loss_percent, MAX_PACKET_LOSS_PERCENT)?;
        in_range("bitrate_kbps", self.bitrate_kbps, MAX_BITRATE_KBPS)?;
        for (field, value) in [("width", self.width), ("height", self.height)] {
            if value > MAX_DIMENSION {
                return Err(format!("{field} must be between 0 and {MAX_DIMENSION}, got {value}"));
            }
        }
        if (self.width == 0) != (self.height == 0) {
            return Err(format!(
                "width and height must both be 0 (no video) or both positive, got {}x{}",
                self.width, self.height
            ));
        }
        in_range("fps", self.fps, MAX_FPS)
    }
}

/// `data` of CallQualityReported: the sample, who measured it, in which call, when it was accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityReported {
    pub call_id: Uuid,
    pub reporter_id: String,
    pub direction: Direction,
    pub rtt_ms: f64,
    pub jitter_ms: f64,
    pub packet_loss_percent: f64,
    pub bitrate_kbps: f64,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub reported_at: DateTime<Utc>,
}

impl QualityReported {
    pub fn new(call_id: Uuid, reporter_id: &str, s: &QualitySample, reported_at: DateTime<Utc>) -> Self {
        Self {
            call_id,
            reporter_id: reporter_id.to_owned(),
            direction: s.direction,
            rtt_ms: s.rtt_ms,
            jitter_ms: s.jitter_ms,
            packet_loss_percent: s.packet_loss_percent,
            bitrate_kbps: s.bitrate_kbps,
            width: s.width,
            height: s.height,
            fps: s.fps,
            reported_at,
        }
    }

    pub fn sample(&self) -> QualitySample {
        QualitySample {
            rtt_ms: self.rtt_ms,
            jitter_ms: self.jitter_ms,
            packet_loss_percent: self.packet_loss_percent,
            bitrate_kbps: self.bitrate_kbps,
            width: self.width,
            height: self.height,
            fps: self.fps,
            direction: self.direction,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> QualitySample {
        QualitySample {
            rtt_ms: 48.0,
            jitter_ms: 3.1,
            packet_loss_percent: 0.4,
            bitrate_kbps: 1450.0,
            width: 1280,
            height: 720,
            fps: 30.0,
            direction: Direction::Inbound,
        }
    }

    #[test]
    fn limits_name_the_field() {
        assert_eq!(good().validate(), Ok(()));
        let edge = QualitySample {
            rtt_ms: 60_000.0,
            jitter_ms: 10_000.0,
            packet_loss_percent: 100.0,
            bitrate_kbps: 1_000_000.0,
            width: 7680,
            height: 7680,
            fps: 240.0,
            direction: Direction::Outbound,
        };
        assert_eq!(edge.validate(), Ok(()), "the bounds are inclusive");
        let audio_only = QualitySample { width: 0, height: 0, fps: 0.0, ..good() };
        assert_eq!(audio_only.validate(), Ok(()));
        let cases: [(QualitySample, &str); 9] = [
            (QualitySample { rtt_ms: -1.0, ..good() }, "rtt_ms must be between 0 and 60000, got -1"),
            (QualitySample { rtt_ms: f64::NAN, ..good() }, "rtt_ms must be a finite number"),
            (QualitySample { jitter_ms: 10_000.5, ..good() }, "jitter_ms must be between 0 and 10000, got 10000.5"),
            (
                QualitySample { packet_loss_percent: f64::INFINITY, ..good() },
                "packet_loss_percent must be a finite number",
            ),
            (
                QualitySample { packet_loss_percent: 100.1, ..good() },
                "packet_loss_percent must be between 0 and 100, got 100.1",
            ),
            (
                QualitySample { bitrate_kbps: 1_000_001.0, ..good() },
                "bitrate_kbps must be between 0 and 1000000, got 1000001",
            ),
            (QualitySample { width: 7681, ..good() }, "width must be between 0 and 7680, got 7681"),
            (
                QualitySample { height: 0, ..good() },
                "width and height must both be 0 (no video) or both positive, got 1280x0",
            ),
            (QualitySample { fps: 241.0, ..good() }, "fps must be between 0 and 240, got 241"),
        ];
        for (sample, message) in cases {
            assert_eq!(sample.validate(), Err(message.to_owned()));
        }
        assert_eq!(
            "sideways".parse::<Direction>(),
            Err("direction must be `inbound` or `outbound`, got `sideways`".into())
        );
    }

    #[test]
    fn event_data_round_trips() {
        let data = QualityReported::new(Uuid::now_v7(), "alice", &good(), Utc::now());
        let json = serde_json::to_value(&data).expect("encodes");
        assert_eq!(json["direction"], "inbound");
        assert_eq!(json["reporter_id"], "alice");
        assert_eq!(json["width"], 1280);
        let back: QualityReported = serde_json::from_value(json).expect("decodes");
        assert_eq!(back.sample(), good());
    }
}
