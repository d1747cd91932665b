//! Latency histograms and their summaries.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest trackable latency: 120 s in nanoseconds.
const MAX_NS: u64 = 120_000_000_000;

/// Creates the latency histogram used everywhere: nanoseconds, 1 ns..120 s,
/// 3 significant digits. Values above the range are clamped.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("static bounds are valid")
}

/// Records `ns` into `h`, clamping into the trackable range.
#[inline]
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.clamp(1, MAX_NS));
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Maximum.
    pub max_us: f64,
}

impl LatencySummary {
    /// Summarizes a nanosecond histogram.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1e3;
        LatencySummary {
            count: h.len(),
            mean_us: h.mean() / 1e3,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }

    /// One human-readable line.
    pub fn line(&self) -> String {
        format!(
            "p50 {} | p90 {} | p99 {} | p99.9 {} | max {} | mean {} (n={})",
            fmt_us(self.p50_us),
            fmt_us(self.p90_us),
            fmt_us(self.p99_us),
            fmt_us(self.p999_us),
            fmt_us(self.max_us),
            fmt_us(self.mean_us),
            self.count
        )
    }
}

/// Formats microseconds with a unit that keeps 3-4 significant digits.
pub fn fmt_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2}s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{us:.0}µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_values() {
        let mut h = new_histogram();
        for i in 1..=100u64 {
            record(&mut h, i * 1000);
        }
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.count, 100);
        assert!((s.p50_us - 50.0).abs() < 0.1);
        assert!((s.p99_us - 99.0).abs() < 0.1);
        assert!((s.max_us - 100.0).abs() < 0.1);
        assert_eq!(fmt_us(1500.0), "1.50ms");
        assert_eq!(fmt_us(12.0), "12µs");
    }

    #[test]
    fn empty_and_clamped() {
        let mut h = new_histogram();
        assert_eq!(LatencySummary::from_histogram(&h).count, 0);
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
    }
}
