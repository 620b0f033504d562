//! Median and spread of a handful of samples, and their formatting.

use std::time::Duration;

/// Summary of samples in milliseconds (or any unit the caller picks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for no samples.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 0 {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        };
        Some(Summary {
            n: v.len(),
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }
}

/// A 95 % confidence interval for the median of `samples`, from their
/// order statistics (the sign test's interval: it assumes nothing about the
/// distribution). `None` below 6 samples, where no such interval exists.
pub fn median_ci95(samples: &[f64]) -> Option<(f64, f64)> {
    let n = samples.len();
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    // The largest k with P(Binomial(n, 1/2) < k) ≤ 2.5 %: the interval is
    // the k-th smallest to the k-th largest.
    let mut below = 0.0; // P(X < k)
    let mut p = 0.5f64.powi(n as i32); // P(X = k), from k = 0
    let mut k = 0;
    while below + p <= 0.025 {
        below += p;
        p *= (n - k) as f64 / (k + 1) as f64;
        k += 1;
    }
    (k >= 1).then(|| (v[k - 1], v[n - k]))
}

/// Per-round ratios (berth / raw) as a figure: their median, its 95 %
/// interval when there are enough rounds, and how many rounds berth won.
pub fn paired_figure(ratios: &[f64]) -> String {
    let Some(median) = Summary::of(ratios).map(|s| s.median) else {
        return "n/a".into();
    };
    let won = ratios.iter().filter(|r| **r < 1.0).count();
    match median_ci95(ratios) {
        Some((lo, hi)) => format!(
            "{median:.3}× ({lo:.3}× – {hi:.3}×); berth faster in {won} of {} rounds",
            ratios.len()
        ),
        None => format!(
            "{median:.3}× (an interval needs 6 rounds); berth faster in {won} of {} rounds",
            ratios.len()
        ),
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `1234 ms` below 10 s, else `12.3 s`; sub-millisecond values keep decimals.
pub fn fmt_ms(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{:.1} s", v / 1000.0)
    } else if v.abs() >= 100.0 {
        format!("{v:.0} ms")
    } else if v.abs() >= 1.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.3} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd_counts() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn the_median_interval_matches_the_sign_test_tables() {
        let up = |n: usize| (1..=n).map(|i| i as f64).collect::<Vec<_>>();
        // n = 6: the extremes (1.6 % outside); n = 5 has no 95 % interval.
        assert_eq!(median_ci95(&up(6)), Some((1.0, 6.0)));
        assert_eq!(median_ci95(&up(5)), None);
        // n = 10: 2nd to 9th; n = 40: 14th to 27th (tables of the sign test).
        assert_eq!(median_ci95(&up(10)), Some((2.0, 9.0)));
        assert_eq!(median_ci95(&up(40)), Some((14.0, 27.0)));
    }
}
