//! Latency statistics for `edge bench`: run a closure, time every call, report percentiles.

use std::time::{Duration, Instant};

/// Latency percentiles of a series of timed calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Timed calls.
    pub runs: usize,
    /// Fastest call.
    pub min: Duration,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest call.
    pub max: Duration,
    /// Mean.
    pub mean: Duration,
}

impl Stats {
    /// Statistics of `samples` (nearest-rank percentiles); `None` when there is none.
    pub fn from_samples(mut samples: Vec<Duration>) -> Option<Self> {
        samples.sort_unstable();
        let (first, last) = (*samples.first()?, *samples.last()?);
        let n = samples.len();
        // Nearest rank: the smallest sample with at least p% of the samples at or below it.
        let rank = |p: usize| samples[(n * p).div_ceil(100).clamp(1, n) - 1];
        let total: Duration = samples.iter().sum();
        Some(Stats {
            runs: n,
            min: first,
            p50: rank(50),
            p90: rank(90),
            p99: rank(99),
            max: last,
            mean: total / n as u32,
        })
    }

    /// Calls per second at the mean latency.
    pub fn per_second(&self) -> f64 {
        1.0 / self.mean.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Calls `run` `warmup` times untimed, then `runs` times timed; stops at the first error.
///
/// # Errors
/// The first error `run` returns.
pub fn measure<E>(
    warmup: usize,
    runs: usize,
    mut run: impl FnMut() -> Result<(), E>,
) -> Result<Option<Stats>, E> {
    for _ in 0..warmup {
        run()?;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        run()?;
        samples.push(start.elapsed());
    }
    Ok(Stats::from_samples(samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let ms = |v: u64| Duration::from_millis(v);
        // 1..=100 ms, shuffled.
        let samples: Vec<Duration> = (1..=100).map(|i| ms((i * 37) % 100 + 1)).collect();
        let s = Stats::from_samples(samples).expect("samples");
        assert_eq!(
            (s.min, s.p50, s.p90, s.p99, s.max),
            (ms(1), ms(50), ms(90), ms(99), ms(100))
        );
        assert_eq!(s.mean, Duration::from_micros(50_500));
        assert_eq!(s.runs, 100);
        let one = Stats::from_samples(vec![ms(3)]).expect("one sample");
        assert_eq!((one.p50, one.p99), (ms(3), ms(3)));
        assert!(Stats::from_samples(Vec::new()).is_none());
    }

    #[test]
    fn measure_counts_runs_and_stops_at_errors() {
        let mut calls = 0;
        let stats = measure(3, 5, || {
            calls += 1;
            Ok::<_, ()>(())
        })
        .expect("no error")
        .expect("five samples");
        assert_eq!((calls, stats.runs), (8, 5));
        let mut calls = 0;
        let failed = measure(0, 5, || {
            calls += 1;
            if calls == 2 { Err("boom") } else { Ok(()) }
        });
        assert_eq!(failed, Err("boom"));
    }
}
