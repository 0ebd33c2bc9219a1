//! The offset between this server's clock and Redis's. Fences (see `functions`) are written by
//! this server's clock and read by Redis's: with Redis behind by `d`, a call can still take
//! effect up to `d` after its caller stopped waiting; ahead, calls that reach Redis in the last
//! `d` of their time are refused. Both stay small while the clocks are within
//! [`CLOCK_OFFSET_BOUND`]: the server refuses to start past it and warns when a later check
//! finds it passed.

use std::time::{Duration, Instant};

use super::{Store, StoreResult};
use crate::telemetry;

/// Farthest apart this server's clock and Redis's may be (NTP keeps them within milliseconds).
/// An add's settle step (`queue::settle_add`) lasts at least this long past the fence, so its
/// "outcome unknown" reply comes when the add can no longer take effect.
pub const CLOCK_OFFSET_BOUND: Duration = Duration::from_millis(100);

/// How often a running server checks the offset.
pub const CLOCK_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// Samples per measurement; the one with the shortest round trip is kept.
const SAMPLES: usize = 3;

/// Redis's clock minus this server's, in ms, within `± uncertainty_ms` (half the round trip).
#[derive(Debug, Clone, Copy)]
pub struct ClockOffset {
    pub offset_ms: i64,
    pub uncertainty_ms: i64,
}

impl ClockOffset {
    /// The clocks are surely farther apart than the bound.
    pub fn beyond_bound(&self) -> bool {
        self.offset_ms.abs() - self.uncertainty_ms > CLOCK_OFFSET_BOUND.as_millis() as i64
    }
}

impl std::fmt::Display for ClockOffset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let direction = if self.offset_ms >= 0 {
            "ahead of"
        } else {
            "behind"
        };
        write!(
            f,
            "Redis's clock is {} ms (± {} ms) {direction} this server's; fenced writes need them \
             within {} ms: synchronise both with NTP",
            self.offset_ms.abs(),
            self.uncertainty_ms,
            CLOCK_OFFSET_BOUND.as_millis()
        )
    }
}

impl Store {
    /// Measures the offset with `TIME` (on a cluster, at the node the command is routed to),
    /// and exports it as `mpr_redis_clock_offset_seconds`.
    pub async fn clock_offset(&self) -> StoreResult<ClockOffset> {
        let mut best: Option<(Duration, ClockOffset)> = None;
        for _ in 0..SAMPLES {
            let sent = Instant::now();
            let sent_ms = crate::model::now_ms();
            let (seconds, micros): (i64, i64) = self.query(&redis::cmd("TIME")).await?;
            let round_trip = sent.elapsed();
            let midpoint_ms = sent_ms + round_trip.as_millis() as i64 / 2;
            let sample = ClockOffset {
                offset_ms: seconds * 1000 + micros / 1000 - midpoint_ms,
                uncertainty_ms: (round_trip.as_millis() as i64 + 1) / 2,
            };
            if best.is_none_or(|(shortest, _)| round_trip < shortest) {
                best = Some((round_trip, sample));
            }
        }
        let (_, offset) = best.expect("at least one sample");
        metrics::gauge!(telemetry::REDIS_CLOCK_OFFSET).set(offset.offset_ms as f64 / 1000.0);
        Ok(offset)
    }
}

/// Checks the offset every [`CLOCK_CHECK_INTERVAL`] until `stop`, warning past the bound.
pub async fn watch(store: Store, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(CLOCK_CHECK_INTERVAL) => {}
            () = stop.cancelled() => return,
        }
        match store.clock_offset().await {
            Ok(offset) if offset.beyond_bound() => tracing::warn!("{offset}"),
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "the clock offset could not be measured"),
        }
    }
}
