//! Consumer-group workers.
//!
//! One [`Worker`] consumes any number of queues; run as many `rebound work`
//! processes as you like, each joins the group under a unique consumer name.
//! Per queue it runs two loops around one semaphore of `worker.concurrency`
//! permits:
//!
//! - the **reader** takes permits *before* it asks Redis for work, so a
//!   worker never reads more than it can run (the rest stays in the stream
//!   for other workers). Every `worker.reclaim_interval` it first spends its
//!   permits on entries other consumers left pending past the visibility
//!   timeout (dead-lettering poison), then reads new entries with the rest;
//! - the **acker** batches successful entries into one `XACK`+`XDEL` script
//!   call, which is what lets one process drain tens of thousands of jobs a
//!   second. A permit is released only when its entry's outcome is in Redis.
//!
//! A failed job is handed to the retry set or the dead letters by one atomic
//! script that also acknowledges it. On shutdown the reader stops, in-flight
//! jobs get `worker.shutdown_grace` to finish, and what does not finish stays
//! pending for another worker to reclaim: nothing is half-done.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rand::Rng as _;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::queue::{now_ms, Backoff, Entry, Job, Queue, QueueError};

/// Why a handler run failed; decides between retry and dead letter.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt (network, 5xx, rate limit).
    #[error("{message}")]
    Transient {
        /// What happened.
        message: String,
        /// Do not retry sooner than this (a `retry-after`).
        retry_after: Option<Duration>,
        /// Raises or lowers the job's attempt budget (TLS errors get more).
        max_attempts: Option<u32>,
    },
    /// Not now, and not a failure: run it again after `after` without using
    /// up an attempt (a subscriber at its concurrency limit).
    #[error("deferred for {after:?}")]
    Defer {
        /// How long to wait.
        after: Duration,
    },
    /// Will never succeed (a 4xx, invalid payload): dead-letter at once.
    #[error("{message}")]
    Permanent {
        /// Short machine-readable reason, the `reason` field of the dead letter.
        reason: String,
        /// What happened.
        message: String,
    },
}

impl JobError {
    /// A transient failure with the default schedule.
    pub fn transient(message: impl Into<String>) -> Self {
        JobError::Transient {
            message: message.into(),
            retry_after: None,
            max_attempts: None,
        }
    }

    /// A permanent failure with reason `permanent`.
    pub fn permanent(message: impl Into<String>) -> Self {
        JobError::Permanent {
            reason: "permanent".into(),
            message: message.into(),
        }
    }
}

/// Runs one kind of job. Must be idempotent: delivery is at-least-once.
pub trait Handler: Send + Sync + 'static {
    /// Does the work of one attempt.
    fn handle<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), JobError>>;

    /// The delay before attempt `job.attempt + 1`; `None` uses `retry.job_delays`.
    fn retry_delay(&self, _job: &Job) -> Option<Duration> {
        None
    }
}

/// Handlers by job kind.
#[derive(Clone, Default)]
pub struct Handlers {
    by_kind: HashMap<String, Arc<dyn Handler>>,
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handlers")
            .field("kinds", &self.by_kind.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Handlers {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for `kind`, replacing any earlier one.
    pub fn register(&mut self, kind: &str, handler: Arc<dyn Handler>) -> &mut Self {
        self.by_kind.insert(kind.to_string(), handler);
        self
    }

    fn get(&self, kind: &str) -> Option<&Arc<dyn Handler>> {
        self.by_kind.get(kind)
    }
}

/// The worker knobs, taken from `[worker]` and `[retry]`.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Unique consumer name in the group.
    pub consumer: String,
    /// Jobs in flight per queue.
    pub concurrency: usize,
    /// Largest read / ack batch.
    pub batch_size: usize,
    /// XREADGROUP BLOCK.
    pub block: Duration,
    /// Longest handler run.
    pub job_timeout: Duration,
    /// Drain time on shutdown.
    pub shutdown_grace: Duration,
    /// Idle time before another worker reclaims an entry.
    pub visibility_timeout: Duration,
    /// Deliveries before an entry is poison.
    pub max_deliveries: u32,
    /// How often to reclaim.
    pub reclaim_interval: Duration,
    /// Idle time after which a consumer with nothing pending is removed.
    pub consumer_ttl: Duration,
    /// Default delays between attempts; the last repeats.
    pub job_delays: Vec<Duration>,
    /// ± spread applied to those delays.
    pub jitter: f64,
}

impl WorkerOptions {
    /// Options from the configuration, with a fresh consumer name.
    pub fn from_config(cfg: &Config) -> Self {
        let w = &cfg.worker;
        Self {
            consumer: consumer_name(),
            concurrency: w.concurrency,
            batch_size: w.batch_size,
            block: w.block,
            job_timeout: w.job_timeout,
            shutdown_grace: w.shutdown_grace,
            visibility_timeout: w.visibility_timeout,
            max_deliveries: w.max_deliveries,
            reclaim_interval: w.reclaim_interval,
            consumer_ttl: w.consumer_ttl,
            job_delays: cfg.retry.job_delays.clone(),
            jitter: cfg.retry.jitter,
        }
    }
}

/// `host-pid-random`: unique across processes and restarts, and readable in
/// `XINFO CONSUMERS`.
pub fn consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into());
    let tag: u32 = rand::rng().random();
    format!("{host}-{}-{tag:08x}", std::process::id())
}

/// The delay before the next attempt after `attempt` failed: the
/// `attempt`-th entry of `delays` (the last one repeats), spread by ±`jitter`.
pub fn backoff_delay(delays: &[Duration], attempt: u32, jitter: f64) -> Duration {
    let Some(last) = delays.last() else {
        return Duration::from_secs(1);
    };
    let base = delays
        .get(attempt.saturating_sub(1) as usize)
        .unwrap_or(last);
    if jitter <= 0.0 {
        return *base;
    }
    let factor = 1.0 + rand::rng().random_range(-jitter..=jitter);
    base.mul_f64(factor.max(0.0))
}

/// A consumer-group worker over one or more queues.
#[derive(Clone, Debug)]
pub struct Worker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    queue: Queue,
    handlers: Handlers,
    opts: WorkerOptions,
    metrics: Arc<Metrics>,
}

impl Worker {
    /// A worker that runs `handlers` on jobs of `queue`.
    pub fn new(
        queue: Queue,
        handlers: Handlers,
        opts: WorkerOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                queue,
                handlers,
                opts,
                metrics,
            }),
        }
    }

    /// This worker's consumer name.
    pub fn consumer(&self) -> &str {
        &self.shared.opts.consumer
    }

    /// Consumes `queues` until `shutdown` is cancelled, then drains. Redis
    /// outages are waited out; this returns only on shutdown.
    pub async fn run(&self, queues: &[String], shutdown: CancellationToken) {
        tracing::info!(consumer = %self.shared.opts.consumer, ?queues, concurrency = self.shared.opts.concurrency, "worker started");
        let runs = queues.iter().map(|q| {
            let shared = self.shared.clone();
            let q = q.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { shared.run_queue(q, shutdown).await })
        });
        for r in futures::future::join_all(runs).await {
            if let Err(e) = r {
                tracing::error!(error = %e, "queue loop ended abnormally");
            }
        }
        tracing::info!(consumer = %self.shared.opts.consumer, "worker stopped");
    }
}

/// A successful entry waiting to be acknowledged, holding its permit.
type Done = (String, OwnedSemaphorePermit);

impl Shared {
    async fn run_queue(self: Arc<Self>, queue: String, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_secs(2));
        // The group must exist before the first read; keep trying through an outage.
        loop {
            match self.queue.ensure_group(&queue).await {
                Ok(()) => {
                    self.queue.health().ok();
                    break;
                }
                Err(e) => {
                    self.queue.health().failed("create group", &e);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
        let sem = Arc::new(Semaphore::new(self.opts.concurrency));
        let (ack_tx, ack_rx) = mpsc::channel::<Done>(self.opts.concurrency.max(16));
        let tracker = TaskTracker::new();
        // Cancelled when the grace period is over: handlers still running are
        // dropped and their entries stay pending for reclaim.
        let hard = CancellationToken::new();
        let acker = tokio::spawn(self.clone().ack_loop(queue.clone(), ack_rx, hard.clone()));

        self.clone()
            .read_loop(
                queue.clone(),
                sem,
                ack_tx.clone(),
                tracker.clone(),
                shutdown,
                hard.clone(),
            )
            .await;
        drop(ack_tx);

        tracker.close();
        let in_flight = tracker.len();
        if in_flight > 0 {
            tracing::info!(queue, in_flight, grace = ?self.opts.shutdown_grace, "draining in-flight jobs");
        }
        if tokio::time::timeout(self.opts.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                queue,
                left = tracker.len(),
                "grace period over; unfinished jobs stay pending for reclaim"
            );
            hard.cancel();
            tracker.wait().await;
        }
        if acker.await.is_err() {
            tracing::error!(
                queue,
                "acknowledgement loop panicked; its entries will be reclaimed"
            );
        }
    }

    /// The one loop that owns this queue's permits: it takes them before it
    /// asks Redis for work, reclaims abandoned entries first when a reclaim is
    /// due, and reads new entries with whatever permits are left.
    #[allow(clippy::too_many_arguments)]
    async fn read_loop(
        self: Arc<Self>,
        queue: String,
        sem: Arc<Semaphore>,
        ack_tx: mpsc::Sender<Done>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        hard: CancellationToken,
    ) {
        let mut backoff = Backoff::new(Duration::from_secs(2));
        let prune_every =
            (self.opts.consumer_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut last_prune = Instant::now();
        // Reclaim at once on start: a restarted worker picks up its own leftovers.
        let mut last_reclaim: Option<Instant> = None;
        let mut cursor = "0-0".to_string();
        loop {
            let mut permits = tokio::select! {
                p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = shutdown.cancelled() => return,
            };
            let extra = sem
                .available_permits()
                .min(self.opts.batch_size.saturating_sub(1));
            if extra > 0 {
                if let Ok(more) = sem.clone().try_acquire_many_owned(extra as u32) {
                    permits.merge(more);
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
            if last_prune.elapsed() >= prune_every {
                last_prune = Instant::now();
                match self
                    .queue
                    .prune_consumers(&queue, self.opts.consumer_ttl, &self.opts.consumer)
                    .await
                {
                    Ok(gone) if !gone.is_empty() => {
                        tracing::info!(queue, consumers = ?gone, "removed departed consumers")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.queue.health().failed("prune consumers", &e);
                    }
                }
            }
            if last_reclaim.is_none_or(|t| t.elapsed() >= self.opts.reclaim_interval) {
                last_reclaim = Some(Instant::now());
                let r = self
                    .queue
                    .reclaim(
                        &queue,
                        &self.opts.consumer,
                        self.opts.visibility_timeout,
                        &cursor,
                        permits.num_permits(),
                        self.opts.max_deliveries,
                    )
                    .await;
                match r {
                    Ok(r) => {
                        self.queue.health().ok();
                        cursor = r.cursor;
                        for kind in &r.poisoned {
                            tracing::warn!(
                                queue,
                                kind,
                                "entry delivered too often without an ack; dead-lettered as poison"
                            );
                            self.metrics
                                .dead_letters
                                .with_label_values(&[&queue, kind, "poison"])
                                .inc();
                        }
                        if !r.entries.is_empty() {
                            tracing::info!(
                                queue,
                                count = r.entries.len(),
                                "reclaimed abandoned entries"
                            );
                        }
                        for entry in r.entries {
                            let Some(permit) = permits.split(1) else {
                                break;
                            };
                            self.spawn_process(&tracker, &queue, entry, permit, &ack_tx, &hard);
                        }
                    }
                    Err(e) => {
                        self.queue.health().failed("reclaim", &e);
                    }
                }
                if permits.num_permits() == 0 {
                    continue;
                }
            }
            let want = permits.num_permits();
            match self
                .queue
                .read(&queue, &self.opts.consumer, want, self.opts.block)
                .await
            {
                Ok(entries) => {
                    self.queue.health().ok();
                    backoff.reset();
                    for entry in entries {
                        let Some(permit) = permits.split(1) else {
                            break;
                        };
                        self.spawn_process(&tracker, &queue, entry, permit, &ack_tx, &hard);
                    }
                }
                Err(e) => {
                    self.queue.health().failed("read", &e);
                    drop(permits);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    fn spawn_process(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        queue: &str,
        entry: Entry,
        permit: OwnedSemaphorePermit,
        ack_tx: &mpsc::Sender<Done>,
        hard: &CancellationToken,
    ) {
        let this = self.clone();
        let queue = queue.to_string();
        let ack_tx = ack_tx.clone();
        let hard = hard.clone();
        tracker.spawn(async move { this.process(queue, entry, permit, ack_tx, hard).await });
    }

    #[tracing::instrument(skip_all, fields(queue = %queue, entry = %entry.id))]
    async fn process(
        &self,
        queue: String,
        entry: Entry,
        permit: OwnedSemaphorePermit,
        ack_tx: mpsc::Sender<Done>,
        hard: CancellationToken,
    ) {
        let job: Job = match serde_json::from_str(&entry.raw) {
            Ok(j) => j,
            Err(e) => {
                let error = format!("unreadable job envelope: {e}");
                tracing::warn!(%error, "poison entry");
                self.hand_over(&hard, || {
                    self.queue.dead(
                        &queue,
                        Some(&entry.id),
                        &entry.raw,
                        "unknown",
                        "poison",
                        &error,
                        0,
                    )
                })
                .await;
                self.metrics
                    .dead_letters
                    .with_label_values(&[&queue, "unknown", "poison"])
                    .inc();
                return;
            }
        };
        let Some(handler) = self.handlers.get(&job.kind) else {
            let error = format!("no handler for job kind `{}`", job.kind);
            tracing::warn!(job = %job.id, %error, "dead-lettering");
            self.hand_over(&hard, || {
                self.queue.dead(
                    &queue,
                    Some(&entry.id),
                    &entry.raw,
                    &job.kind,
                    "unknown_kind",
                    &error,
                    job.attempt,
                )
            })
            .await;
            self.metrics
                .dead_letters
                .with_label_values(&[&queue, &job.kind, "unknown_kind"])
                .inc();
            return;
        };
        self.metrics
            .job_attempts
            .with_label_values(&[&queue, &job.kind])
            .inc();
        let started = Instant::now();
        let result = tokio::select! {
            r = tokio::time::timeout(self.opts.job_timeout, handler.handle(&job)) => r,
            _ = hard.cancelled() => return, // stays pending; reclaimed by someone else
        };
        self.metrics
            .job_duration
            .with_label_values(&[&queue, &job.kind])
            .observe(started.elapsed().as_secs_f64());
        let error = match result {
            Ok(Ok(())) => {
                self.metrics
                    .jobs_processed
                    .with_label_values(&[&queue, &job.kind, "ok"])
                    .inc();
                // The permit travels with the id and is released once the ack is in Redis.
                if ack_tx.send((entry.id, permit)).await.is_err() {
                    tracing::warn!(job = %job.id, "acknowledgement loop gone; entry will be reclaimed");
                }
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => JobError::transient(format!("timed out after {:?}", self.opts.job_timeout)),
        };
        self.fail(&queue, &entry, job, handler.as_ref(), error, &hard)
            .await;
        drop(permit);
    }

    async fn fail(
        &self,
        queue: &str,
        entry: &Entry,
        mut job: Job,
        handler: &dyn Handler,
        error: JobError,
        hard: &CancellationToken,
    ) {
        let kind = job.kind.clone();
        match error {
            JobError::Defer { after } => {
                let due = now_ms() + after.as_millis() as i64;
                self.hand_over(hard, || self.queue.retry(&entry.id, &job, due))
                    .await;
                self.metrics
                    .jobs_processed
                    .with_label_values(&[queue, &kind, "deferred"])
                    .inc();
            }
            JobError::Permanent { reason, message } => {
                tracing::warn!(job = %job.id, kind, attempt = job.attempt, %reason, error = %message, "permanent failure; dead-lettering");
                job.last_error = Some(message.clone());
                let raw = serde_json::to_string(&job).unwrap_or_else(|_| entry.raw.clone());
                self.hand_over(hard, || {
                    self.queue.dead(
                        queue,
                        Some(&entry.id),
                        &raw,
                        &kind,
                        &reason,
                        &message,
                        job.attempt,
                    )
                })
                .await;
                self.metrics
                    .jobs_processed
                    .with_label_values(&[queue, &kind, "dead"])
                    .inc();
                self.metrics
                    .dead_letters
                    .with_label_values(&[queue, &kind, &reason])
                    .inc();
            }
            JobError::Transient {
                message,
                retry_after,
                max_attempts,
            } => {
                if let Some(m) = max_attempts {
                    job.max_attempts = m.max(1);
                }
                job.last_error = Some(message.clone());
                if job.attempt >= job.max_attempts {
                    tracing::warn!(job = %job.id, kind, attempts = job.attempt, error = %message, "attempts exhausted; dead-lettering");
                    let raw = serde_json::to_string(&job).unwrap_or_else(|_| entry.raw.clone());
                    self.hand_over(hard, || {
                        self.queue.dead(
                            queue,
                            Some(&entry.id),
                            &raw,
                            &kind,
                            "exhausted",
                            &message,
                            job.attempt,
                        )
                    })
                    .await;
                    self.metrics
                        .jobs_processed
                        .with_label_values(&[queue, &kind, "dead"])
                        .inc();
                    self.metrics
                        .dead_letters
                        .with_label_values(&[queue, &kind, "exhausted"])
                        .inc();
                    return;
                }
                let delay = handler.retry_delay(&job).unwrap_or_else(|| {
                    backoff_delay(&self.opts.job_delays, job.attempt, self.opts.jitter)
                });
                let delay = retry_after.map_or(delay, |r| r.max(delay));
                job.attempt += 1;
                let due = now_ms() + delay.as_millis() as i64;
                tracing::info!(job = %job.id, kind, next_attempt = job.attempt, delay_ms = delay.as_millis() as u64, error = %message, "retry scheduled");
                self.hand_over(hard, || self.queue.retry(&entry.id, &job, due))
                    .await;
                self.metrics
                    .jobs_processed
                    .with_label_values(&[queue, &kind, "retry"])
                    .inc();
                self.metrics
                    .retries_scheduled
                    .with_label_values(&[queue, &kind])
                    .inc();
            }
        }
    }

    /// Runs a hand-over until Redis takes it. Through an outage it keeps
    /// trying; only when the grace period is over does it give up, leaving
    /// the entry pending so that it is reclaimed rather than lost.
    async fn hand_over<F, Fut, T>(&self, hard: &CancellationToken, op: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, QueueError>>,
    {
        let mut backoff = Backoff::new(Duration::from_secs(2));
        loop {
            match op().await {
                Ok(_) => {
                    self.queue.health().ok();
                    return;
                }
                Err(e) => {
                    self.queue.health().failed("hand over failed job", &e);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = hard.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn ack_loop(
        self: Arc<Self>,
        queue: String,
        mut rx: mpsc::Receiver<Done>,
        hard: CancellationToken,
    ) {
        let mut batch: Vec<Done> = Vec::with_capacity(self.opts.batch_size);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < self.opts.batch_size {
                match rx.try_recv() {
                    Ok(d) => batch.push(d),
                    Err(_) => break,
                }
            }
            let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
            self.hand_over(&hard, || self.queue.ack(&queue, &ids)).await;
            batch.clear(); // releases the permits
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_the_list_and_the_last_repeats() {
        let d = [
            Duration::from_secs(60),
            Duration::from_secs(300),
            Duration::from_secs(900),
        ];
        assert_eq!(backoff_delay(&d, 1, 0.0), Duration::from_secs(60));
        assert_eq!(backoff_delay(&d, 2, 0.0), Duration::from_secs(300));
        assert_eq!(backoff_delay(&d, 3, 0.0), Duration::from_secs(900));
        assert_eq!(backoff_delay(&d, 9, 0.0), Duration::from_secs(900));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let d = [Duration::from_secs(100)];
        let mut seen_low = false;
        let mut seen_high = false;
        for _ in 0..500 {
            let x = backoff_delay(&d, 1, 0.1).as_secs_f64();
            assert!((90.0..=110.0).contains(&x), "{x}");
            seen_low |= x < 99.0;
            seen_high |= x > 101.0;
        }
        assert!(seen_low && seen_high, "jitter spreads both ways");
    }

    #[test]
    fn consumer_names_are_unique() {
        assert_ne!(consumer_name(), consumer_name());
        assert!(consumer_name().contains(&std::process::id().to_string()));
    }
}
