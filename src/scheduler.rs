//! Moves due jobs from the retry sorted set back to their streams.
//!
//! Each pass is one Lua call over at most `batch` jobs, repeated while full
//! batches come back, so a backlog of any size drains without one giant
//! script blocking Redis. Any number of schedulers may run (one per worker
//! process): the script removes each job from the set in the same call that
//! enqueues it, so none is moved twice or lost. Between passes it sleeps until
//! the earliest due time, capped by `worker.poll_interval`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::queue::{now_ms, Backoff, Queue};

/// Jobs moved per script call.
pub const BATCH: usize = 1000;

/// Runs the scheduler until `shutdown`.
pub async fn run(queue: Queue, metrics: Arc<Metrics>, poll: Duration, shutdown: CancellationToken) {
    let health = queue.health();
    let mut backoff = Backoff::new(Duration::from_secs(2));
    loop {
        let mut failed = false;
        loop {
            match queue.promote(now_ms(), BATCH).await {
                Ok(p) => {
                    health.ok();
                    backoff.reset();
                    for ms in &p.lateness_ms {
                        metrics.retry_lateness.observe(*ms as f64 / 1000.0);
                    }
                    if p.orphans > 0 {
                        tracing::warn!(
                            count = p.orphans,
                            "retry set held ids without an envelope; removed"
                        );
                    }
                    if p.poisoned > 0 {
                        tracing::warn!(
                            count = p.poisoned,
                            "retry envelopes without a readable queue; dead-lettered"
                        );
                        metrics
                            .dead_letters
                            .with_label_values(&["", "unknown", "poison"])
                            .inc_by(p.poisoned as u64);
                    }
                    if p.moved + p.orphans + p.poisoned < BATCH || shutdown.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    health.failed("promote due jobs", &e);
                    failed = true;
                    break;
                }
            }
        }
        let wait = if failed {
            backoff.next_delay()
        } else {
            match queue.next_due().await {
                Ok(Some(due)) => {
                    Duration::from_millis((due - now_ms()).clamp(0, poll.as_millis() as i64) as u64)
                }
                _ => poll,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
