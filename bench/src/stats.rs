//! Latency percentiles from every call's latency (a window holds at most
//! `--max-calls` of them, so a sorted vector is exact and small).

use serde::Serialize;

/// Latency figures of one window, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Slowest call.
    pub max_ms: f64,
}

/// Percentiles (nearest rank) of latencies given in microseconds.
pub fn summarize(mut micros: Vec<u32>) -> Latency {
    if micros.is_empty() {
        return Latency::default();
    }
    micros.sort_unstable();
    let rank = |p: f64| {
        let n = micros.len();
        let i = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
        f64::from(micros[i]) / 1000.0
    };
    let sum: u64 = micros.iter().map(|&m| u64::from(m)).sum();
    Latency {
        p50_ms: rank(0.50),
        p99_ms: rank(0.99),
        mean_ms: sum as f64 / micros.len() as f64 / 1000.0,
        max_ms: micros.last().map_or(0.0, |&m| f64::from(m) / 1000.0),
    }
}

/// A small, fast, deterministic random number generator (xorshift64*), so
/// ids are spread over the table without a dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded; a zero seed is replaced.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `1..=n` (n ≥ 1).
    pub fn one_to(&mut self, n: u64) -> u64 {
        1 + self.next_u64() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let l = summarize((1..=100).map(|i| i * 1000).collect());
        assert_eq!((l.p50_ms, l.p99_ms, l.max_ms), (50.0, 99.0, 100.0));
        assert_eq!(summarize(vec![]).p50_ms, 0.0);
        assert_eq!(summarize(vec![7000]).p99_ms, 7.0);
    }

    #[test]
    fn rng_stays_in_range() {
        let mut r = Rng::new(0);
        assert!((0..1000)
            .map(|_| r.one_to(10))
            .all(|v| (1..=10).contains(&v)));
    }
}
