//! Latency percentiles, rates and the progress lines printed on stderr while a run goes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

/// Percentiles of a set of latencies (microseconds), exact (the sets are bounded).
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub count: usize,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Summary {
    pub fn of(mut samples: Vec<u64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
        Self { count: samples.len(), p50_us: at(0.50), p99_us: at(0.99), max_us: samples[samples.len() - 1] }
    }
}

/// Microseconds as milliseconds with two decimals.
pub fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

pub fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// A clock shared by senders and receivers in this process: microseconds since `base`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self { base: Instant::now() }
    }

    pub fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Prints `[label] n/total <unit> (rate/s)` on stderr every second until dropped.
pub struct Progress {
    stop: CancellationToken,
}

impl Progress {
    pub fn start(label: String, unit: &'static str, total: u64, done: Arc<AtomicU64>) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => {
                        let n = done.load(Ordering::Relaxed);
                        eprintln!("[{label}] {n}/{total} {unit} ({:.0}/s)", rate(n, started.elapsed()));
                    }
                }
            }
        });
        Self { stop }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One line on stderr for a phase.
pub fn phase(label: &str, message: impl std::fmt::Display) {
    eprintln!("[{label}] {message}");
}
