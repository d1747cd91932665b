//! Per-connection rate limiting: a token bucket with exact continuous
//! refill, and the limiter that counts strikes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::RateLimit;
use crate::jsonrpc::RpcError;

/// A token bucket with continuous refill, in exact integer arithmetic.
///
/// One token is worth `interval` (in nanoseconds) units, and every
/// nanosecond adds `rate` units: so `rate` tokens come back per `interval`,
/// fractions of a token included, and nothing is lost to rounding however
/// often the bucket is looked at.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    /// Units per token: the interval in nanoseconds.
    unit: u128,
    /// Units added per nanosecond.
    rate: u128,
    capacity: u128,
    level: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `rate` per `interval`.
    /// Zero values are taken as 1 (and a zero interval as 1 ns).
    pub(crate) fn new(rate: u32, interval: Duration, burst: u32) -> Self {
        let unit = interval.as_nanos().max(1);
        let capacity = unit * u128::from(burst.max(1));
        TokenBucket {
            unit,
            rate: u128::from(rate.max(1)),
            capacity,
            level: capacity,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = now;
        self.level = self
            .level
            .saturating_add(elapsed.saturating_mul(self.rate))
            .min(self.capacity);
    }

    /// Takes one token, or says how long until one is there.
    pub(crate) fn try_take(&mut self) -> Result<(), Duration> {
        self.try_take_at(Instant::now())
    }

    fn try_take_at(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level >= self.unit {
            self.level -= self.unit;
            Ok(())
        } else {
            let missing = self.unit - self.level;
            let nanos = missing.div_ceil(self.rate);
            Err(Duration::from_nanos(
                u64::try_from(nanos).unwrap_or(u64::MAX),
            ))
        }
    }

    /// Whole tokens available now.
    #[cfg(test)]
    pub(crate) fn available(&mut self) -> u64 {
        self.refill(Instant::now());
        u64::try_from(self.level / self.unit).unwrap_or(u64::MAX)
    }
}

/// Counts live per-connection limiter states (for `/metrics` and tests).
#[derive(Debug, Default)]
pub(crate) struct LiveCount(AtomicUsize);

impl LiveCount {
    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// The rate limiter of one connection.
pub(crate) struct RateLimiter {
    bucket: TokenBucket,
    close_after: u32,
    /// Limited requests in a row.
    strikes: u32,
    live: Arc<LiveCount>,
}

impl RateLimiter {
    pub(crate) fn new(cfg: &RateLimit, live: Arc<LiveCount>) -> Option<Self> {
        if !cfg.enabled {
            return None;
        }
        live.0.fetch_add(1, Ordering::Relaxed);
        Some(RateLimiter {
            bucket: TokenBucket::new(cfg.rate, cfg.interval, cfg.burst),
            close_after: cfg.close_after,
            strikes: 0,
            live,
        })
    }

    /// Admits one request, or returns the error that answers it.
    pub(crate) fn admit(&mut self) -> Result<(), RpcError> {
        match self.bucket.try_take() {
            Ok(()) => {
                self.strikes = 0;
                Ok(())
            }
            Err(wait) => {
                self.strikes = self.strikes.saturating_add(1);
                Err(RpcError::rate_limited(wait))
            }
        }
    }

    /// Whether the client kept going past the threshold and must be closed.
    pub(crate) fn exhausted(&self) -> bool {
        self.close_after > 0 && self.strikes >= self.close_after
    }
}

impl Drop for RateLimiter {
    fn drop(&mut self) {
        self.live.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_starts_full_and_refills_continuously() {
        // 100 per minute: one token every 600 ms; burst 10.
        let mut b = TokenBucket::new(100, Duration::from_secs(60), 10);
        for _ in 0..10 {
            assert!(b.try_take().is_ok());
        }
        assert_eq!(b.try_take(), Err(Duration::from_millis(600)));
        // Partial intervals are not lost: 4 × 150 ms make one token.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_millis(150)).await;
            assert!(b.try_take().is_err());
        }
        tokio::time::advance(Duration::from_millis(150)).await;
        assert!(b.try_take().is_ok());
        assert_eq!(b.try_take(), Err(Duration::from_millis(600)));
        // Retry-after counts what is already refilled.
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(b.try_take(), Err(Duration::from_millis(350)));
        // Never more than the burst.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(b.available(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_rate_over_a_long_run_is_exact() {
        // 3 per second does not divide a second into whole nanoseconds.
        // From an empty bucket, taking whenever a token is there (so the
        // bucket never overflows), 10 s give exactly 30 tokens, the 30th at
        // exactly 10 s, and nothing is left over.
        let mut b = TokenBucket::new(3, Duration::from_secs(1), 50);
        while b.try_take().is_ok() {}
        let mut taken = 0;
        for ms in 1..=10_000 {
            tokio::time::advance(Duration::from_millis(1)).await;
            if b.try_take().is_ok() {
                taken += 1;
                if taken == 30 {
                    assert_eq!(ms, 10_000);
                }
            }
        }
        assert_eq!(taken, 30);
        assert_eq!(b.try_take(), Err(Duration::from_nanos(333_333_334)));
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_counts_strikes_and_resets() {
        let cfg = RateLimit {
            enabled: true,
            rate: 1,
            interval: Duration::from_secs(1),
            burst: 2,
            close_after: 3,
        };
        let live = Arc::new(LiveCount::default());
        let mut l = RateLimiter::new(&cfg, Arc::clone(&live)).unwrap();
        assert_eq!(live.get(), 1);
        assert!(l.admit().is_ok());
        assert!(l.admit().is_ok());
        let e = l.admit().unwrap_err();
        assert_eq!(e.code, crate::jsonrpc::RATE_LIMITED);
        assert_eq!(e.data.as_ref().unwrap()["retry_after_ms"], 1000);
        assert!(l.admit().is_err());
        assert!(!l.exhausted());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(l.admit().is_ok(), "a token came back; strikes reset");
        for _ in 0..3 {
            assert!(l.admit().is_err());
        }
        assert!(l.exhausted());
        drop(l);
        assert_eq!(live.get(), 0);
        let off = RateLimit::default();
        assert!(RateLimiter::new(&off, live).is_none());
    }
}
