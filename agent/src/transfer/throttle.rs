//! Bandwidth limits that can change while a transfer runs.
//!
//! A governor quota is fixed once built, so a new rate is a new limiter,
//! published through a watch channel that running transfers follow.

use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::watch;

use super::protocol::MAX_FRAME;

/// One governor cell is this many bytes.
const CELL: u64 = 1024;
/// The burst is at least this, and a wait is for at most this many cells.
const MIN_BURST: u64 = 4 * (MAX_FRAME as u64).div_ceil(CELL);

/// On `Instant`, as tokio's timers: with governor's default TSC clock
/// (quanta), measured rates came out up to 20% low in a loaded VM.
type Limiter = RateLimiter<
    NotKeyed,
    InMemoryState,
    MonotonicClock,
    NoOpMiddleware<<MonotonicClock as Clock>::Instant>,
>;

#[derive(Clone)]
struct Limit {
    bytes_per_sec: NonZeroU64,
    limiter: Arc<Limiter>,
}

impl Limit {
    fn new(bytes_per_sec: NonZeroU64) -> Limit {
        // One cell per `period`; sub-nanosecond periods round up to 1 ns.
        let nanos = (CELL as u128 * 1_000_000_000 / u128::from(bytes_per_sec.get())).max(1);
        let period = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        // A frame waits until it fits; the slack beyond a frame (several
        // frames, or 250 ms of traffic) absorbs timer lateness and scheduling
        // stalls that would otherwise add up to a lower rate.
        let cells = (bytes_per_sec.get() / 4 / CELL).clamp(MIN_BURST, u64::from(u32::MAX));
        let burst = NonZeroU32::new(cells as u32).expect("MIN_BURST is not zero");
        let quota = Quota::with_period(period)
            .expect("period is at least 1 ns")
            .allow_burst(burst);
        let limiter = RateLimiter::direct_with_clock(quota, MonotonicClock);
        // A fresh limiter holds a full burst: spend it, so that a new rate
        // starts from now and not with a head start.
        let _ = limiter.check_n(burst);
        Limit {
            bytes_per_sec,
            limiter: Arc::new(limiter),
        }
    }
}

/// The rate of one link, in bytes per second on the wire; `None` is unlimited.
/// Clones share the limit, so transfers given clones share the bandwidth.
#[derive(Clone)]
pub struct RateHandle(Arc<watch::Sender<Option<Limit>>>);

impl RateHandle {
    pub fn new(bytes_per_sec: Option<NonZeroU64>) -> RateHandle {
        RateHandle(Arc::new(watch::Sender::new(bytes_per_sec.map(Limit::new))))
    }

    pub fn unlimited() -> RateHandle {
        RateHandle::new(None)
    }

    /// Applies to running transfers at their next frame, or at once to one
    /// waiting for the old limit.
    pub fn set(&self, bytes_per_sec: Option<NonZeroU64>) {
        self.0.send_if_modified(|current| {
            if current.as_ref().map(|l| l.bytes_per_sec) == bytes_per_sec {
                return false;
            }
            *current = bytes_per_sec.map(Limit::new);
            true
        });
    }

    pub fn get(&self) -> Option<NonZeroU64> {
        self.0.borrow().as_ref().map(|l| l.bytes_per_sec)
    }

    pub(super) fn meter(&self) -> Meter {
        Meter {
            limits: self.0.subscribe(),
            owed: 0,
        }
    }
}

impl Default for RateHandle {
    fn default() -> RateHandle {
        RateHandle::unlimited()
    }
}

impl fmt::Debug for RateHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.get() {
            Some(rate) => write!(f, "RateHandle({rate} B/s)"),
            None => f.write_str("RateHandle(unlimited)"),
        }
    }
}

/// Copies `src` to `dst` no faster than `rate` allows, then shuts `dst`
/// down: the pace of a stream that does not go through the framed
/// protocol (an upload to a bucket). Returns the bytes copied.
pub async fn pace<R, W>(mut src: R, mut dst: W, rate: &RateHandle) -> std::io::Result<u64>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut meter = rate.meter();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = src.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        meter.take(n).await;
        dst.write_all(&buf[..n]).await?;
        total += n as u64;
    }
    dst.shutdown().await?;
    Ok(total)
}

/// One transfer's view of a [`RateHandle`].
pub(super) struct Meter {
    limits: watch::Receiver<Option<Limit>>,
    /// Bytes sent but not yet paid for: less than a cell after each `take`.
    owed: u64,
}

impl Meter {
    /// Waits until `bytes` more may go on the wire.
    pub(super) async fn take(&mut self, bytes: usize) {
        self.owed += bytes as u64;
        loop {
            let Some(limit) = self.limits.borrow_and_update().clone() else {
                self.owed = 0;
                return;
            };
            let cells = (self.owed / CELL).min(MIN_BURST);
            let Some(n) = NonZeroU32::new(cells as u32) else {
                return;
            };
            // n <= MIN_BURST, so the limiter never reports InsufficientCapacity.
            let Ok(Err(not_until)) = limit.limiter.check_n(n) else {
                self.owed -= cells * CELL;
                continue;
            };
            let wait = not_until.wait_time_from(limit.limiter.clock().now());
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                // A new rate: wait on the new limiter instead.
                Ok(()) = self.limits.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lower bound only (a slow machine is slower, never faster): 2 MiB
    /// at 4 MiB/s take at least the 1 MiB beyond the spent burst's worth.
    #[tokio::test]
    async fn pace_holds_a_stream_to_its_rate_and_copies_it_whole() {
        let data: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let rate = RateHandle::new(NonZeroU64::new(4 * 1024 * 1024));
        let mut out = Vec::new();
        let start = std::time::Instant::now();
        let n = pace(&data[..], &mut out, &rate).await.unwrap();
        assert_eq!((n, &out), (data.len() as u64, &data));
        assert!(
            start.elapsed() >= Duration::from_millis(240),
            "{:?}",
            start.elapsed()
        );
        // Unlimited: no wait at all.
        let mut out = Vec::new();
        pace(&data[..], &mut out, &RateHandle::unlimited())
            .await
            .unwrap();
        assert_eq!(out, data);
    }
}
