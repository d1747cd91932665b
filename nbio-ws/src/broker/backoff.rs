//! Reconnect backoff for broker backends.

use std::time::Duration;

/// Capped exponential backoff with a little jitter: 50 ms, 100 ms, …, 2 s.
///
/// ```
/// use nbio_ws::broker::Backoff;
/// use std::time::Duration;
///
/// let mut backoff = Backoff::default();
/// assert!(backoff.next_delay() >= Duration::from_millis(50));
/// assert!(backoff.next_delay() >= Duration::from_millis(100));
/// backoff.reset();
/// assert_eq!(Backoff::delay_for(30), Backoff::MAX);
/// ```
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The first delay.
    pub const MIN: Duration = Duration::from_millis(50);
    /// The longest delay (before jitter).
    pub const MAX: Duration = Duration::from_secs(2);

    /// The delay before attempt `attempt` (0-based), without jitter.
    pub fn delay_for(attempt: u32) -> Duration {
        Backoff::MIN
            .saturating_mul(1u32 << attempt.min(16))
            .min(Backoff::MAX)
    }

    /// The next delay (with up to 20% jitter, so instances that lost the
    /// broker together do not reconnect in lockstep).
    pub fn next_delay(&mut self) -> Duration {
        let base = Backoff::delay_for(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(self.attempt);
        let jitter = base.mul_f64((h.finish() % 200) as f64 / 1000.0);
        base + jitter
    }

    /// Starts again from the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        assert_eq!(Backoff::delay_for(0), Duration::from_millis(50));
        assert_eq!(Backoff::delay_for(1), Duration::from_millis(100));
        assert_eq!(Backoff::delay_for(10), Backoff::MAX);
        assert_eq!(Backoff::delay_for(u32::MAX), Backoff::MAX);
        let mut b = Backoff::default();
        for _ in 0..100 {
            assert!(b.next_delay() <= Backoff::MAX.mul_f64(1.2));
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(61));
    }
}
