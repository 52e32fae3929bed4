//! Exponential backoff with jitter: the one policy for polls, reconnects and restarts.

use std::time::Duration;

/// Exponential backoff with jitter: the n-th consecutive failure waits a random time between
/// half and all of `initial · 2ⁿ`, capped at `max`; a server's `Retry-After` wins when longer.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
    seed: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15)
            | 1;
        Backoff {
            initial,
            max,
            failures: 0,
            seed,
        }
    }

    /// The pause before the next attempt after a failure.
    pub fn next(&mut self, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        // xorshift64: jitter needs no cryptographic randomness.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let fraction = 0.5 + (self.seed % 1000) as f64 / 2000.0;
        let jittered = exp.mul_f64(fraction);
        match retry_after {
            Some(asked) if asked > jittered => asked.min(self.max),
            _ => jittered,
        }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap_and_honours_retry_after() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let waits: Vec<Duration> = (0..8).map(|_| b.next(None)).collect();
        for (n, w) in waits.iter().enumerate() {
            let full = Duration::from_secs(1 << n).min(Duration::from_secs(30));
            assert!(
                *w >= full / 2 && *w <= full,
                "failure {n}: {w:?} vs {full:?}"
            );
        }
        assert_eq!(
            b.next(Some(Duration::from_secs(3600))),
            Duration::from_secs(30)
        );
        b.reset();
        assert!(b.next(Some(Duration::from_secs(7))) >= Duration::from_secs(7));
    }
}
