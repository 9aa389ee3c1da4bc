//! The quality math, pure: running totals of a scope's samples (O(1) to extend) and the summary
//! derived from them — averages, max loss, most common resolution, stability and E-model MOS.

use std::collections::BTreeMap;

use videocall_calls::quality_sample::QualitySample;

/// A sample with at least this much loss counts as a disconnect (as does bitrate 0).
pub const DISCONNECT_LOSS_PERCENT: f64 = 50.0;
/// Jitter standard deviation (ms) that halves the stability score.
pub const JITTER_SCALE_MS: f64 = 10.0;
/// Distinct resolutions kept in a histogram; further new ones are not counted (bounded rows).
pub const MAX_RESOLUTIONS: usize = 64;

/// Running sums of one scope (a direction, or both) of one call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub count: i64,
    pub sum_rtt_ms: f64,
    pub sum_jitter_ms: f64,
    pub sum_jitter_sq: f64,
    pub sum_packet_loss: f64,
    pub max_packet_loss: f64,
    pub sum_bitrate_kbps: f64,
    pub disconnects: i64,
    /// `"WxH"` → samples; samples without video (0x0) are not counted.
    pub resolutions: BTreeMap<String, i64>,
}

/// What readers see of a scope. With no samples every number is 0 and the resolution empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub sample_count: i64,
    pub avg_rtt_ms: f64,
    pub avg_jitter_ms: f64,
    pub avg_packet_loss: f64,
    pub max_packet_loss: f64,
    pub avg_bitrate_kbps: f64,
    pub resolution: String,
    pub stability: f64,
    pub mos: f64,
}

/// A disconnect: no media flowed (bitrate 0) or at least half of it was lost.
pub fn is_disconnect(s: &QualitySample) -> bool {
    s.bitrate_kbps == 0.0 || s.packet_loss_percent >= DISCONNECT_LOSS_PERCENT
}

impl Totals {
    /// Folds one sample in.
    pub fn add(&mut self, s: &QualitySample) {
        self.count += 1;
        self.sum_rtt_ms += s.rtt_ms;
        self.sum_jitter_ms += s.jitter_ms;
        self.sum_jitter_sq += s.jitter_ms * s.jitter_ms;
        self.sum_packet_loss += s.packet_loss_percent;
        self.max_packet_loss = self.max_packet_loss.max(s.packet_loss_percent);
        self.sum_bitrate_kbps += s.bitrate_kbps;
        if is_disconnect(s) {
            self.disconnects += 1;
        }
        if s.width > 0 && s.height > 0 {
            let key = format!("{}x{}", s.width, s.height);
            if let Some(n) = self.resolutions.get_mut(&key) {
                *n += 1;
            } else if self.resolutions.len() < MAX_RESOLUTIONS {
                self.resolutions.insert(key, 1);
            }
        }
    }

    pub fn summary(&self) -> Summary {
        if self.count <= 0 {
            return Summary::default();
        }
        let n = self.count as f64;
        let (rtt, jitter, loss) = (self.sum_rtt_ms / n, self.sum_jitter_ms / n, self.sum_packet_loss / n);
        let variance = jitter_variance(self.count, self.sum_jitter_ms, self.sum_jitter_sq);
        Summary {
            sample_count: self.count,
            avg_rtt_ms: rtt,
            avg_jitter_ms: jitter,
            avg_packet_loss: loss,
            max_packet_loss: self.max_packet_loss,
            avg_bitrate_kbps: self.sum_bitrate_kbps / n,
            resolution: most_common_resolution(&self.resolutions),
            stability: stability(self.count, self.disconnects, variance),
            mos: mos(rtt, jitter, loss),
        }
    }
}

/// Population variance of jitter from its count, sum and sum of squares (never negative, despite
/// rounding).
pub fn jitter_variance(count: i64, sum: f64, sum_sq: f64) -> f64 {
    if count <= 0 {
        return 0.0;
    }
    let n = count as f64;
    let mean = sum / n;
    (sum_sq / n - mean * mean).max(0.0)
}

/// Stability in 0..1: the share of samples that were not disconnects, scaled down by how much
/// jitter wanders: `(1 − disconnects/n) / (1 + σ_jitter / 10 ms)`.
pub fn stability(count: i64, disconnects: i64, jitter_variance: f64) -> f64 {
    if count <= 0 {
        return 0.0;
    }
    let connected = 1.0 - (disconnects as f64 / count as f64);
    let steadiness = 1.0 / (1.0 + jitter_variance.max(0.0).sqrt() / JITTER_SCALE_MS);
    (connected * steadiness).clamp(0.0, 1.0)
}

/// R factor of the simplified ITU-T G.107 E-model, clamped to 0..100.
pub fn r_factor(rtt_ms: f64, jitter_ms: f64, loss_percent: f64) -> f64 {
    let latency = rtt_ms / 2.0 + 2.0 * jitter_ms + 10.0;
    let delay_impairment = if latency < 160.0 { latency / 40.0 } else { (latency - 120.0) / 10.0 };
    (93.2 - delay_impairment - 2.5 * loss_percent).clamp(0.0, 100.0)
}

/// Mean opinion score 1..4.5 from the R factor: `1 + 0.035R + 7e-6·R(R−60)(100−R)`.
pub fn mos(rtt_ms: f64, jitter_ms: f64, loss_percent: f64) -> f64 {
    let r = r_factor(rtt_ms, jitter_ms, loss_percent);
    (1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r)).clamp(1.0, 4.5)
}

/// The most frequent `WxH`; a tie goes to the larger picture (more pixels, then wider).
pub fn most_common_resolution(histogram: &BTreeMap<String, i64>) -> String {
    let pixels = |key: &str| -> (u64, u64) {
        let (w, h) = key.split_once('x').unwrap_or(("0", "0"));
        let (w, h) = (w.parse::<u64>().unwrap_or(0), h.parse::<u64>().unwrap_or(0));
        (w * h, w)
    };
    histogram
        .iter()
        .max_by(|(a, na), (b, nb)| na.cmp(nb).then_with(|| pixels(a).cmp(&pixels(b))))
        .map(|(key, _)| key.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use videocall_calls::quality_sample::Direction;

    fn close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < 1e-9, "expected {expected}, got {actual}");
    }

    fn sample(rtt: f64, jitter: f64, loss: f64, bitrate: f64, w: u32, h: u32) -> QualitySample {
        QualitySample {
            rtt_ms: rtt,
            jitter_ms: jitter,
            packet_loss_percent: loss,
            bitrate_kbps: bitrate,
            width: w,
            height: h,
            fps: 30.0,
            direction: Direction::Outbound,
        }
    }

    #[test]
    fn mos_matches_hand_computed_values() {
        // rtt 100, jitter 10, loss 1: latency = 100/2 + 2·10 + 10 = 80 (< 160, so 80/40 = 2);
        // R = 93.2 − 2 − 2.5·1 = 88.7;
        // MOS = 1 + 0.035·88.7 + 7e-6·88.7·(88.7−60)·(100−88.7)
        //     = 1 + 3.1045 + 7e-6·88.7·28.7·11.3 = 1 + 3.1045 + 7e-6·28766.297 = 4.305864079
        close(r_factor(100.0, 10.0, 1.0), 88.7);
        close(mos(100.0, 10.0, 1.0), 4.305864079);
        // rtt 400, jitter 20, loss 5: latency = 200 + 40 + 10 = 250 (≥ 160: (250−120)/10 = 13);
        // R = 93.2 − 13 − 12.5 = 67.7; MOS = 1 + 2.3695 + 7e-6·67.7·7.7·32.3
        //     = 1 + 2.3695 + 7e-6·16837.667 = 3.487363669
        close(r_factor(400.0, 20.0, 5.0), 67.7);
        close(mos(400.0, 20.0, 5.0), 3.487363669);
        // A perfect link: latency 10 → 0.25; R = 92.95;
        // MOS = 1 + 3.25325 + 7e-6·92.95·32.95·7.05 = 1 + 3.25325 + 7e-6·21592.052625 = 4.404394368375
        close(mos(0.0, 0.0, 0.0), 4.404394368375);
        // Loss 40 %: R = 93.2 − 0.25 − 100 < 0 → clamped to 0 → MOS = 1.
        close(r_factor(0.0, 0.0, 40.0), 0.0);
        close(mos(0.0, 0.0, 40.0), 1.0);
        // Latency exactly 160 (rtt 300): the second branch, (160−120)/10 = 4; R = 93.2 − 4 = 89.2.
        close(r_factor(300.0, 0.0, 0.0), 89.2);
    }

    #[test]
    fn stability_matches_hand_computed_values() {
        // Jitter 10 and 20: mean 15, variance (100 + 400)/2 − 15² = 25, σ = 5;
        // no disconnects: (1 − 0/2) / (1 + 5/10) = 2/3.
        close(jitter_variance(2, 30.0, 500.0), 25.0);
        close(stability(2, 0, 25.0), 2.0 / 3.0);
        // Steady jitter, one disconnect in four: (1 − 1/4) / (1 + 0) = 0.75.
        close(stability(4, 1, 0.0), 0.75);
        // Every sample a disconnect: 0, whatever the jitter.
        close(stability(2, 2, 16.0), 0.0);
        // No samples: 0 (nothing to judge), and rounding never makes the variance negative.
        close(stability(0, 0, 0.0), 0.0);
        close(jitter_variance(3, 0.3, 0.03), 0.0);
    }

    #[test]
    fn resolution_is_the_most_common_and_ties_go_to_the_larger() {
        let hist = |pairs: &[(&str, i64)]| pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect();
        assert_eq!(most_common_resolution(&hist(&[("640x360", 3), ("1280x720", 2)])), "640x360");
        assert_eq!(most_common_resolution(&hist(&[("640x360", 2), ("1920x1080", 2), ("1280x720", 2)])), "1920x1080");
        // Same pixel count: the wider wins.
        assert_eq!(most_common_resolution(&hist(&[("720x1280", 1), ("1280x720", 1)])), "1280x720");
        assert_eq!(most_common_resolution(&BTreeMap::new()), "");
    }

    #[test]
    fn totals_summarise_two_directions_by_hand() {
        // Uplink A (100 ms, 10 ms, 1 %, 1000 kbps, 1280x720) and B (200, 20, 3 %, 2000, 1280x720).
        // Downlink C (60, 4, 0 %, 0 kbps → disconnect, 640x360) and D (140, 12, 60 % → disconnect, 1920x1080).
        let (a, b) = (sample(100.0, 10.0, 1.0, 1000.0, 1280, 720), sample(200.0, 20.0, 3.0, 2000.0, 1280, 720));
        let (c, d) = (sample(60.0, 4.0, 0.0, 0.0, 640, 360), sample(140.0, 12.0, 60.0, 500.0, 1920, 1080));
        let (mut up, mut down, mut all) = (Totals::default(), Totals::default(), Totals::default());
        for s in [a, b] {
            up.add(&s);
            all.add(&s);
        }
        for s in [c, d] {
            down.add(&s);
            all.add(&s);
        }
        // Uplink: averages 150 / 15 / 2 / 1500, max loss 3, 1280x720; stability 2/3 (see above);
        // latency 75 + 30 + 10 = 115 → 2.875; R = 93.2 − 2.875 − 5 = 85.325;
        // MOS = 1 + 2.986375 + 7e-6·85.325·25.325·14.675 = 1 + 2.986375 + 0.221973894078125.
        let s = up.summary();
        assert_eq!((s.sample_count, s.resolution.as_str()), (2, "1280x720"));
        for (actual, expected) in [
            (s.avg_rtt_ms, 150.0),
            (s.avg_jitter_ms, 15.0),
            (s.avg_packet_loss, 2.0),
            (s.max_packet_loss, 3.0),
            (s.avg_bitrate_kbps, 1500.0),
            (s.stability, 2.0 / 3.0),
            (s.mos, 4.208348894078125),
        ] {
            close(actual, expected);
        }
        // Downlink: averages 100 / 8 / 30 / 250, max loss 60; tie 640x360 vs 1920x1080 → the larger;
        // both samples disconnects → stability 0; latency 50 + 16 + 10 = 76 → 1.9;
        // R = 93.2 − 1.9 − 75 = 16.3; MOS = 1 + 0.5705 + 7e-6·16.3·(−43.7)·83.7 = 1.5705 − 0.417342429.
        let s = down.summary();
        assert_eq!((s.sample_count, s.resolution.as_str()), (2, "1920x1080"));
        for (actual, expected) in [
            (s.avg_rtt_ms, 100.0),
            (s.avg_jitter_ms, 8.0),
            (s.avg_packet_loss, 30.0),
            (s.max_packet_loss, 60.0),
            (s.avg_bitrate_kbps, 250.0),
            (s.stability, 0.0),
            (s.mos, 1.153157571),
        ] {
            close(actual, expected);
        }
        // Both: averages 500/4 = 125, 46/4 = 11.5, 64/4 = 16, 3500/4 = 875; max 60; 1280x720 (2 of 4).
        // Jitter variance 660/4 − 11.5² = 165 − 132.25 = 32.75, σ = 5.722761571129799;
        // stability = (1 − 2/4) / (1 + 0.5722761571129799) = 0.31801029210930865.
        // latency 62.5 + 23 + 10 = 95.5 → 2.3875; R = 93.2 − 2.3875 − 40 = 50.8125;
        // MOS = 1 + 1.7784375 + 7e-6·50.8125·(−9.1875)·49.1875 = 2.7784375 − 0.160738793701172.
        let s = all.summary();
        assert_eq!((s.sample_count, s.resolution.as_str()), (4, "1280x720"));
        for (actual, expected) in [
            (s.avg_rtt_ms, 125.0),
            (s.avg_jitter_ms, 11.5),
            (s.avg_packet_loss, 16.0),
            (s.max_packet_loss, 60.0),
            (s.avg_bitrate_kbps, 875.0),
            (s.stability, 0.31801029210930865),
            (s.mos, 2.617698706298828),
        ] {
            close(actual, expected);
        }
        assert_eq!(Totals::default().summary(), Summary::default());
    }

    #[test]
    fn the_histogram_is_bounded() {
        let mut t = Totals::default();
        for w in 1..=(MAX_RESOLUTIONS as u32 + 10) {
            t.add(&sample(10.0, 1.0, 0.0, 100.0, w, 1));
        }
        t.add(&sample(10.0, 1.0, 0.0, 100.0, 1, 1));
        assert_eq!(t.resolutions.len(), MAX_RESOLUTIONS);
        assert_eq!(t.resolutions["1x1"], 2, "known keys still count");
        assert_eq!(t.count, MAX_RESOLUTIONS as i64 + 11, "every sample counts toward the averages");
    }
}
