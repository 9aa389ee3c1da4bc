//! Live quality alerts, the rule: each media path of a call (sender → receiver) is judged on its
//! newest samples. When the newest `samples` of them, all reported within `window`, are all poor
//! (MOS below `mos_below` or loss above `loss_above`) an episode opens (`call.quality_degraded`);
//! an open episode ends when the newest `samples` are all good again (`call.quality_recovered`).
//! One poor sample among good ones, or one good sample in a bad spell, changes nothing, so an
//! alert never flaps on a single sample. This module only decides; `summaries` stores and publishes.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::quality_math;

/// When a path is poor, and for how long it must be so (or good again) before we say so.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertPolicy {
    pub mos_below: f64,
    pub loss_above: f64,
    pub samples: usize,
    pub window: Duration,
}

impl Default for AlertPolicy {
    fn default() -> Self {
        Self { mos_below: 3.1, loss_above: 5.0, samples: 3, window: Duration::from_secs(10) }
    }
}

/// One sample of a path, as the rule sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub at: DateTime<Utc>,
    pub rtt_ms: f64,
    pub jitter_ms: f64,
    pub loss_percent: f64,
}

impl Point {
    pub fn mos(&self) -> f64 {
        quality_math::mos(self.rtt_ms, self.jitter_ms, self.loss_percent)
    }
}

/// Averages over the judged samples (MOS of the averages, as the summaries compute it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub mos: f64,
    pub loss_percent: f64,
    pub rtt_ms: f64,
    pub jitter_ms: f64,
    /// `reported_at` of the newest sample judged.
    pub newest: DateTime<Utc>,
}

/// What the newest samples say about a path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// An episode starts (none was open).
    Degraded(Window),
    /// The open episode ends.
    Recovered(Window),
    /// Nothing changes, though the window (if one was judged) may lower an open episode's worst MOS.
    Unchanged(Option<Window>),
}

impl AlertPolicy {
    pub fn is_poor(&self, p: &Point) -> bool {
        p.mos() < self.mos_below || p.loss_percent > self.loss_above
    }

    /// Judges a path from its newest samples (`newest_first`, at least `samples` of them wanted)
    /// and whether an episode is open on it.
    pub fn judge(&self, newest_first: &[Point], open: bool) -> Verdict {
        let Some(judged) = newest_first.get(..self.samples) else {
            return Verdict::Unchanged(None);
        };
        let newest = judged[0].at;
        let spread = judged.iter().map(|p| newest - p.at).max().unwrap_or_default();
        if spread.to_std().unwrap_or(Duration::MAX) > self.window {
            // Too far apart (a gap: reconnecting, a stalled reporter): not a run of samples.
            return Verdict::Unchanged(None);
        }
        let n = judged.len() as f64;
        let avg = |f: fn(&Point) -> f64| judged.iter().map(f).sum::<f64>() / n;
        let (rtt_ms, jitter_ms, loss_percent) = (avg(|p| p.rtt_ms), avg(|p| p.jitter_ms), avg(|p| p.loss_percent));
        let window =
            Window { mos: quality_math::mos(rtt_ms, jitter_ms, loss_percent), loss_percent, rtt_ms, jitter_ms, newest };
        let poor = judged.iter().filter(|p| self.is_poor(p)).count();
        match (open, poor) {
            (false, p) if p == judged.len() => Verdict::Degraded(window),
            (true, 0) => Verdict::Recovered(window),
            _ => Verdict::Unchanged(Some(window)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: (f64, f64) = (40.0, 0.2);
    const BAD: (f64, f64) = (80.0, 12.0);

    /// Points 2 s apart from `(rtt, loss)` pairs, oldest first as they arrive.
    fn series(samples: &[(f64, f64)]) -> Vec<Point> {
        let start = DateTime::parse_from_rfc3339("2026-12-04T10:00:00Z").expect("time").to_utc();
        samples
            .iter()
            .enumerate()
            .map(|(i, &(rtt_ms, loss_percent))| Point {
                at: start + chrono::Duration::seconds(2 * i as i64),
                rtt_ms,
                jitter_ms: 3.0,
                loss_percent,
            })
            .collect()
    }

    /// Feeds the series one sample at a time, as the aggregator sees it, and names each change.
    fn changes(policy: &AlertPolicy, points: &[Point]) -> Vec<(usize, &'static str)> {
        let mut open = false;
        let mut out = Vec::new();
        for i in 0..points.len() {
            let newest_first: Vec<Point> = points[..=i].iter().rev().copied().collect();
            match policy.judge(&newest_first, open) {
                Verdict::Degraded(_) => {
                    open = true;
                    out.push((i, "degraded"));
                }
                Verdict::Recovered(_) => {
                    open = false;
                    out.push((i, "recovered"));
                }
                Verdict::Unchanged(_) => {}
            }
        }
        out
    }

    #[test]
    fn a_steady_call_raises_nothing_and_one_bad_sample_is_not_an_episode() {
        let policy = AlertPolicy::default();
        assert_eq!(changes(&policy, &series(&[GOOD; 10])), []);
        let dip = series(&[GOOD, GOOD, GOOD, BAD, GOOD, GOOD, GOOD, (40.0, 60.0), GOOD]);
        assert_eq!(changes(&policy, &dip), []);
        let two = series(&[GOOD, BAD, BAD, GOOD, BAD, BAD, GOOD]);
        assert_eq!(changes(&policy, &two), [], "two in a row are not three");
    }

    #[test]
    fn a_lasting_drop_opens_one_episode_and_a_lasting_recovery_closes_it() {
        let policy = AlertPolicy::default();
        // Good, then a drop with one good sample inside, then good for good.
        let points = series(&[GOOD, GOOD, BAD, BAD, BAD, BAD, GOOD, BAD, BAD, GOOD, GOOD, GOOD, GOOD]);
        assert_eq!(changes(&policy, &points), [(4, "degraded"), (11, "recovered")]);
    }

    #[test]
    fn mos_alone_or_loss_alone_makes_a_sample_poor_at_the_configured_thresholds() {
        let policy = AlertPolicy::default();
        let at = Utc::now();
        // 1 % loss but 900 ms round trips: MOS about 2.4.
        let slow = Point { at, rtt_ms: 900.0, jitter_ms: 3.0, loss_percent: 1.0 };
        assert!(slow.mos() < 3.1 && policy.is_poor(&slow));
        // 6 % loss on a short path: MOS still about 3.9, but over the loss threshold.
        let lossy = Point { at, rtt_ms: 20.0, jitter_ms: 1.0, loss_percent: 6.0 };
        assert!(lossy.mos() > 3.1 && policy.is_poor(&lossy));
        let fine = Point { at, rtt_ms: 20.0, jitter_ms: 1.0, loss_percent: 5.0 };
        assert!(!policy.is_poor(&fine), "at the threshold is not over it");
        let strict = AlertPolicy { mos_below: 4.3, ..policy };
        assert!(strict.is_poor(&fine));
        let loose = AlertPolicy { loss_above: 10.0, ..policy };
        assert!(!loose.is_poor(&lossy));
    }

    #[test]
    fn samples_spread_wider_than_the_window_are_not_judged() {
        let policy = AlertPolicy { window: Duration::from_secs(3), ..AlertPolicy::default() };
        // 2 s apart: three samples span 4 s, wider than 3 s.
        assert_eq!(changes(&policy, &series(&[BAD; 6])), []);
        let longer = AlertPolicy { samples: 2, ..policy };
        assert_eq!(changes(&longer, &series(&[BAD; 6])), [(1, "degraded")]);
    }

    #[test]
    fn the_window_reports_averages_and_the_mos_of_them() {
        let policy = AlertPolicy::default();
        let points = series(&[(60.0, 10.0), (80.0, 12.0), (100.0, 14.0)]);
        let newest_first: Vec<Point> = points.iter().rev().copied().collect();
        let Verdict::Degraded(w) = policy.judge(&newest_first, false) else { panic!("degraded") };
        assert_eq!((w.rtt_ms, w.loss_percent, w.jitter_ms), (80.0, 12.0, 3.0));
        assert_eq!(w.mos, quality_math::mos(80.0, 3.0, 12.0));
        assert_eq!(w.newest, points[2].at);
        assert_eq!(policy.judge(&newest_first[..2], false), Verdict::Unchanged(None), "too few samples");
    }
}
