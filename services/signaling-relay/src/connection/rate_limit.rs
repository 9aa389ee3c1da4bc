//! The per-connection rate limit: a token bucket.

use std::time::Instant;

/// Token bucket: `rate` per second, at most `burst` saved up.
pub(super) struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    pub(super) fn new(rate: u32, burst: u32) -> Self {
        Self { tokens: f64::from(burst), rate: f64::from(rate), burst: f64::from(burst), at: Instant::now() }
    }

    pub(super) fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
