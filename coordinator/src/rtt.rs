//! Command round trips: each signed command's time from send to reply, in an
//! HDR histogram, exported as quantile gauges. Pure: the caller gives the
//! time.
//!
//! The rules:
//! - Values are microseconds from 1 µs to [`MAX_MICROS`], 3 significant
//!   digits; a longer one is counted as [`MAX_MICROS`]. A command that timed
//!   out counts with its timeout (the real time is at least that); a request
//!   that failed at once (no responder) is not a round trip and is not
//!   counted.
//! - The quantiles cover a sliding window: the histogram of the current
//!   [`WINDOW_SECS`] and of the one before, so they speak of the last 5 to
//!   10 minutes, never of a morning long gone.
//! - With nothing in the window there are no quantiles: the gauges say NaN,
//!   as a Prometheus summary without observations does, never 0.

use hdrhistogram::Histogram;

/// One window's length.
pub const WINDOW_SECS: i64 = 300;
/// Ten minutes, far past any command timeout.
pub const MAX_MICROS: u64 = 600_000_000;
/// The quantiles exported, as the `quantile` label says them.
pub const QUANTILES: [(f64, &str); 4] = [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99"), (1.0, "1")];

#[derive(Debug, Clone)]
pub struct Rtt {
    current: Histogram<u64>,
    previous: Histogram<u64>,
    /// Unix seconds: when `current` began.
    started: i64,
}

/// The window's figures, seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// (label, seconds) for each of [`QUANTILES`].
    pub quantiles: Vec<(&'static str, f64)>,
    pub count: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("constant bounds are valid")
}

impl Rtt {
    pub fn new(now: i64) -> Rtt {
        Rtt {
            current: histogram(),
            previous: histogram(),
            started: now,
        }
    }

    /// Moves the window on to `now`.
    fn roll(&mut self, now: i64) {
        let elapsed = now - self.started;
        if elapsed < WINDOW_SECS {
            return;
        }
        if elapsed < 2 * WINDOW_SECS {
            std::mem::swap(&mut self.previous, &mut self.current);
            self.current.reset();
            self.started += WINDOW_SECS;
        } else {
            // Idle for two windows or more: both are history.
            self.previous.reset();
            self.current.reset();
            self.started = now;
        }
    }

    pub fn record(&mut self, micros: u64, now: i64) {
        self.roll(now);
        self.current.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    /// The quantiles over the window; `None` when it is empty.
    pub fn figures(&mut self, now: i64) -> Option<Figures> {
        self.roll(now);
        let mut all = self.previous.clone();
        all.add(&self.current).ok()?;
        if all.is_empty() {
            return None;
        }
        Some(Figures {
            quantiles: QUANTILES
                .iter()
                .map(|(q, label)| (*label, all.value_at_quantile(*q) as f64 / 1e6))
                .collect(),
            count: all.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(f: &Figures, label: &str) -> f64 {
        f.quantiles.iter().find(|(l, _)| *l == label).unwrap().1
    }

    #[test]
    fn quantiles_of_the_window() {
        let mut r = Rtt::new(0);
        assert_eq!(r.figures(0), None);
        // 99 fast answers and one slow one.
        for _ in 0..99 {
            r.record(2_000, 10);
        }
        r.record(1_500_000, 10);
        let f = r.figures(10).unwrap();
        assert_eq!(f.count, 100);
        assert!((q(&f, "0.5") - 0.002).abs() < 0.00001, "{f:?}");
        assert!((q(&f, "0.99") - 0.002).abs() < 0.00001, "{f:?}");
        assert!((q(&f, "1") - 1.5).abs() < 0.002, "{f:?}");
    }

    #[test]
    fn the_window_slides_and_forgets() {
        let mut r = Rtt::new(0);
        r.record(1_000, 1);
        // The next window still counts the previous one.
        r.record(3_000, WINDOW_SECS + 1);
        assert_eq!(r.figures(WINDOW_SECS + 2).unwrap().count, 2);
        // One more window on: only the last one's answer is left.
        assert_eq!(r.figures(2 * WINDOW_SECS + 1).unwrap().count, 1);
        // Long idle: nothing.
        assert_eq!(r.figures(10 * WINDOW_SECS), None);
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut r = Rtt::new(0);
        r.record(0, 1);
        r.record(u64::MAX, 1);
        let f = r.figures(1).unwrap();
        assert_eq!(f.count, 2);
        assert!(q(&f, "1") >= MAX_MICROS as f64 / 1e6 * 0.999, "{f:?}");
    }
}
