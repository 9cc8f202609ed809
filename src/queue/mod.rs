//! Durable jobs on Redis Streams.
//!
//! # Redis Streams in brief
//!
//! Each queue is a stream (`<prefix>:stream:<queue>`) read by the consumer
//! group `rebound`. `XREADGROUP ... >` hands every new entry to exactly one
//! consumer and records it in the group's pending entries list (PEL) until
//! that consumer acknowledges it. A worker that dies leaves its entries in the
//! PEL; the reclaimer takes them over with `XAUTOCLAIM` once they have been
//! idle longer than the visibility timeout. Acknowledged entries are deleted
//! (`XACK` + `XDEL` in one script), so a stream holds only work not yet done.
//!
//! A failed job with attempts left is handed to the retry sorted set
//! (`<prefix>:retry`, score = due unix ms, envelope in `<prefix>:job:<id>`)
//! in the same script that acknowledges it; the scheduler moves due jobs back
//! to their stream in bounded atomic batches. A job that finally fails goes to
//! the dead-letter stream `<prefix>:dead`, again in the same script that
//! acknowledges it. So at every instant a job is in exactly one place:
//! a stream (maybe pending), the retry set, or the dead letters.

mod conn;
mod scripts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deadpool_redis::{Pool, Runtime};
use redis::streams::{StreamId, StreamReadReply};
use redis::{AsyncCommands, Value};
use serde::{Deserialize, Serialize};

pub use self::conn::Conn;
pub use self::scripts::Scripts;
use crate::config::Config;
use crate::keys::{Keys, GROUP};

/// Queue of Resend (and other) webhook events.
pub const EVENTS: &str = "events";
/// Queue of email sends and re-sends.
pub const EMAILS: &str = "emails";
/// Queue of deliveries to forwarding subscribers.
pub const WEBHOOKS: &str = "webhooks";

/// What can go wrong talking to the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No connection could be had from the pool (Redis down or overloaded).
    #[error("redis unavailable: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    /// The pool could not be built from the configuration.
    #[error("cannot create redis pool: {0}")]
    CreatePool(#[from] deadpool_redis::CreatePoolError),
    /// A job envelope could not be encoded.
    #[error("job envelope: {0}")]
    Envelope(#[from] serde_json::Error),
    /// A dead letter or job that was asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A reply had an unexpected shape.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
}

impl QueueError {
    /// Whether the error means "Redis is unreachable" rather than "Redis said no".
    pub fn is_unavailable(&self) -> bool {
        match self {
            QueueError::Pool(_) => true,
            QueueError::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
            }
            _ => false,
        }
    }

    fn is_nogroup(&self) -> bool {
        matches!(self, QueueError::Redis(e) if e.code() == Some("NOGROUP"))
    }
}

/// The job envelope, stored as JSON in the stream field `job`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Job {
    /// Stable id across retries and replays; idempotency keys derive from it.
    pub id: String,
    /// Queue (stream) the job belongs to.
    pub queue: String,
    /// Selects the handler.
    pub kind: String,
    /// 1-based number of the attempt this delivery is.
    pub attempt: u32,
    /// Attempts allowed before the job is dead-lettered.
    pub max_attempts: u32,
    /// When the job was first enqueued, unix ms.
    pub enqueued_at: i64,
    /// Handler-specific data.
    pub payload: serde_json::Value,
    /// Error of the previous attempt, for logs and dead letters.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Where the job came from (`resend`, an `[[ingress.sources]]` name, `api`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Job {
    /// A new job with a fresh time-ordered id.
    pub fn new(queue: &str, kind: &str, max_attempts: u32, payload: serde_json::Value) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            queue: queue.to_string(),
            kind: kind.to_string(),
            attempt: 1,
            max_attempts: max_attempts.max(1),
            enqueued_at: now_ms(),
            payload,
            last_error: None,
            source: None,
        }
    }

    /// Uses `id` instead of a generated one (for deterministic ids).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
}

/// Milliseconds since the unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Now as RFC 3339 with milliseconds, the format of `failed_at` and records.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// An entry read from a stream: its id and the raw `job` field, which is
/// parsed by the worker so that an unreadable one can be dead-lettered.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Stream entry id (`<ms>-<seq>`).
    pub id: String,
    /// The `job` field; empty when the entry had none.
    pub raw: String,
}

/// Redis connections: one pool for short commands, one for blocking reads,
/// because a blocking `XREADGROUP` must not trip the short-command timeout.
#[derive(Clone, Debug)]
pub struct RedisPools {
    /// Short commands; every call times out after `redis.command_timeout`.
    pub pool: Pool,
    /// `XREADGROUP BLOCK`; the timeout is the block time plus the command timeout.
    pub blocking: Pool,
    shared: conn::Shared,
}

impl RedisPools {
    /// Builds both pools; connects lazily.
    ///
    /// # Errors
    /// The URL cannot be parsed.
    pub fn new(cfg: &Config) -> Result<Self, QueueError> {
        let url = cfg.redis.url.expose();
        let timeout = cfg.redis.command_timeout;
        let build = |response: Duration, size: usize| -> Result<Pool, QueueError> {
            let conn_cfg = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(response));
            let manager = deadpool_redis::Manager::new_with_config(url, conn_cfg)?;
            Pool::builder(manager)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(timeout))
                .create_timeout(Some(timeout))
                .recycle_timeout(Some(timeout))
                .build()
                .map_err(|e| QueueError::Protocol(format!("pool: {e}")))
        };
        Ok(Self {
            pool: build(timeout, cfg.redis.pool_size)?,
            blocking: build(
                cfg.worker.block + timeout,
                cfg.worker.queues.len().max(1) * 2 + 2,
            )?,
            shared: conn::Shared::new(),
        })
    }

    /// A shared multiplexed connection for short commands (no checkout round trip).
    ///
    /// # Errors
    /// No connection can be made.
    pub async fn conn(&self) -> Result<Conn, QueueError> {
        Ok(self.shared.get(&self.pool).await?)
    }

    /// Fails unless Redis answers PING; used at startup and by `/readyz`.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut c = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }
}

/// Tracks whether Redis is reachable, so an outage is logged once when it
/// starts and once when it ends instead of once per failed call. One per
/// process (inside [`Queue`]), shared by the worker, the scheduler and the
/// ingress.
#[derive(Debug, Default)]
pub struct Health {
    down: AtomicBool,
    since_ms: AtomicU64,
}

impl Health {
    /// Records a failed call; logs only on the transition to "down".
    /// Returns whether this call started an outage.
    pub fn failed(&self, what: &str, err: &QueueError) -> bool {
        if !err.is_unavailable() {
            tracing::warn!(error = %err, during = what, "redis command failed");
            return false;
        }
        if self.down.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.since_ms.store(now_ms() as u64, Ordering::SeqCst);
        tracing::error!(error = %err, during = what, "redis unavailable; retrying with backoff");
        true
    }

    /// Records a successful call; logs only on the transition back to "up".
    /// Returns how long the outage lasted when this call ended one.
    pub fn ok(&self) -> Option<Duration> {
        // A plain load first: the hot path only reads a shared cache line.
        if !self.down.load(Ordering::Relaxed) || !self.down.swap(false, Ordering::SeqCst) {
            return None;
        }
        let ms = (now_ms() as u64).saturating_sub(self.since_ms.load(Ordering::SeqCst));
        tracing::info!(outage_seconds = ms as f64 / 1000.0, "redis reachable again");
        Some(Duration::from_millis(ms))
    }

    /// Whether the last call failed for lack of Redis.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }
}

/// Exponential backoff for loops that wait for Redis to come back.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at 50 ms and doubles up to `max`.
    pub fn new(max: Duration) -> Self {
        Self {
            next: Duration::from_millis(50),
            max,
        }
    }

    /// The delay to wait now; the next one is twice as long.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the shortest delay after a success.
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(50);
    }
}

/// What a job-completion hand-over did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// Scheduled for a later attempt.
    Retry,
    /// Put in the dead-letter stream.
    Dead,
}

/// Result of one scheduler pass.
#[derive(Debug, Default, Clone)]
pub struct Promoted {
    /// Jobs moved back to their streams.
    pub moved: usize,
    /// How late each moved job was, in ms.
    pub lateness_ms: Vec<i64>,
    /// Ids in the retry set without an envelope (removed).
    pub orphans: usize,
    /// Envelopes without a readable queue (dead-lettered).
    pub poisoned: usize,
}

/// Result of one reclaim pass.
#[derive(Debug, Default)]
pub struct Reclaimed {
    /// Cursor for the next pass (`0-0` when the PEL was scanned to its end).
    pub cursor: String,
    /// Entries now owned by this consumer.
    pub entries: Vec<Entry>,
    /// Kinds of the entries dead-lettered as poison.
    pub poisoned: Vec<String>,
}

/// Per-queue numbers for `rebound stats` and the gauges.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStats {
    /// Queue name.
    pub queue: String,
    /// Entries in the stream (waiting or pending).
    pub length: u64,
    /// Delivered but not acknowledged.
    pub pending: u64,
    /// Consumers in the group.
    pub consumers: u64,
    /// Age of the oldest pending entry, ms (0 when none).
    pub oldest_pending_ms: u64,
}

/// Numbers for the whole deployment.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// One row per queue.
    pub queues: Vec<QueueStats>,
    /// Jobs in the retry set.
    pub retry: u64,
    /// Entries in the dead-letter stream.
    pub dead: u64,
}

/// One dead letter, as stored in the dead-letter stream.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Entry id in the dead-letter stream.
    pub id: String,
    /// The envelope as it was when it failed (raw text; may be unparseable).
    pub job: String,
    /// Queue it came from.
    pub queue: String,
    /// Job kind.
    pub kind: String,
    /// `exhausted`, `permanent`, `poison`, `unknown_kind`.
    pub reason: String,
    /// Last error text.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it failed (RFC 3339).
    pub failed_at: String,
}

/// Producer and admin side of the queue; cheap to clone.
#[derive(Clone, Debug)]
pub struct Queue {
    keys: Keys,
    redis: RedisPools,
    scripts: Arc<Scripts>,
    health: Arc<Health>,
}

impl Queue {
    /// A queue handle over `redis` for the deployment named by `keys`.
    pub fn new(keys: Keys, redis: RedisPools) -> Self {
        Self {
            keys,
            redis,
            scripts: Arc::new(Scripts::new()),
            health: Arc::default(),
        }
    }

    /// Whether Redis is reachable, as this process last saw it.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The key names in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The pools in use.
    pub fn redis(&self) -> &RedisPools {
        &self.redis
    }

    async fn conn(&self) -> Result<Conn, QueueError> {
        self.redis.conn().await
    }

    /// Creates the group of `queue` (and the stream) unless it exists. New
    /// groups start at `0` so entries already in the stream are not skipped.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn ensure_group(&self, queue: &str) -> Result<(), QueueError> {
        let mut c = self.conn().await?;
        let r: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys.stream(queue))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Appends `job` to its stream; returns the entry id. Durable once this
    /// returns (as durable as the Redis persistence settings make it).
    ///
    /// # Errors
    /// Redis is unreachable or the envelope cannot be encoded.
    pub async fn enqueue(&self, job: &Job) -> Result<String, QueueError> {
        let body = serde_json::to_string(job)?;
        let mut c = self.conn().await?;
        let id: String = c
            .xadd(self.keys.stream(&job.queue), "*", &[("job", body)])
            .await?;
        Ok(id)
    }

    /// Appends many jobs in one pipelined round trip (bulk producers, bench).
    ///
    /// # Errors
    /// As [`Queue::enqueue`].
    pub async fn enqueue_many(&self, jobs: &[Job]) -> Result<(), QueueError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for job in jobs {
            pipe.xadd(
                self.keys.stream(&job.queue),
                "*",
                &[("job", serde_json::to_string(job)?)],
            )
            .ignore();
        }
        let mut c = self.conn().await?;
        let () = pipe.query_async(&mut c).await?;
        Ok(())
    }

    /// Appends `job` unless `dedupe_key` was seen within `ttl`; returns
    /// whether it was new. One atomic call: the event is either recorded and
    /// queued, or neither.
    ///
    /// # Errors
    /// Redis is unreachable or the envelope cannot be encoded.
    pub async fn ingest(
        &self,
        dedupe_key: &str,
        ttl: Duration,
        job: &Job,
    ) -> Result<bool, QueueError> {
        let body = serde_json::to_string(job)?;
        self.ingest_encoded(dedupe_key, ttl, &job.queue, &job.id, &body)
            .await
    }

    /// [`Queue::ingest`] for an envelope already encoded as JSON (the ingress
    /// builds it around the raw event body, without parsing it into a tree).
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn ingest_encoded(
        &self,
        dedupe_key: &str,
        ttl: Duration,
        queue: &str,
        job_id: &str,
        envelope: &str,
    ) -> Result<bool, QueueError> {
        let mut c = self.conn().await?;
        let (new, _): (i64, String) = self
            .scripts
            .ingest
            .key(dedupe_key)
            .key(self.keys.stream(queue))
            .arg(ttl.as_secs().max(1))
            .arg(envelope)
            .arg(job_id)
            .invoke_async(&mut c)
            .await?;
        Ok(new == 1)
    }

    /// Puts `job` in the retry set to run at `due_ms` (a delayed job).
    ///
    /// # Errors
    /// As [`Queue::enqueue`].
    pub async fn schedule(&self, job: &Job, due_ms: i64) -> Result<(), QueueError> {
        self.hand_over_retry(None, job, due_ms).await
    }

    /// Schedules many jobs for `due_ms` in one atomic pipelined call (bulk
    /// delayed producers, bench).
    ///
    /// # Errors
    /// As [`Queue::enqueue`].
    pub async fn schedule_many(&self, jobs: &[Job], due_ms: i64) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for job in jobs {
            pipe.set(self.keys.job(&job.id), serde_json::to_string(job)?)
                .ignore();
            pipe.zadd(self.keys.retry(), &job.id, due_ms).ignore();
        }
        let mut c = self.conn().await?;
        let () = pipe.query_async(&mut c).await?;
        Ok(())
    }

    /// Acknowledges and deletes processed entries of `queue` in one call.
    ///
    /// # Errors
    /// Redis is unreachable; the entries then stay pending and are reclaimed.
    pub async fn ack(&self, queue: &str, ids: &[String]) -> Result<u64, QueueError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut inv = self.scripts.ack.key(self.keys.stream(queue));
        inv.arg(GROUP);
        for id in ids {
            inv.arg(id);
        }
        let mut c = self.conn().await?;
        Ok(inv.invoke_async(&mut c).await?)
    }

    /// Stores `job` (already updated for its next attempt) in the retry set
    /// and acknowledges `entry` in one atomic call.
    ///
    /// # Errors
    /// Redis is unreachable; the entry then stays pending and is reclaimed.
    pub async fn retry(&self, entry: &str, job: &Job, due_ms: i64) -> Result<(), QueueError> {
        self.hand_over_retry(Some(entry), job, due_ms).await
    }

    async fn hand_over_retry(
        &self,
        entry: Option<&str>,
        job: &Job,
        due_ms: i64,
    ) -> Result<(), QueueError> {
        let body = serde_json::to_string(job)?;
        let mut c = self.conn().await?;
        let _: i64 = self
            .scripts
            .schedule
            .key(self.keys.stream(&job.queue))
            .key(self.keys.retry())
            .key(self.keys.job(&job.id))
            .arg(GROUP)
            .arg(entry.unwrap_or(""))
            .arg(body)
            .arg(due_ms)
            .arg(&job.id)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    /// Moves a failed job to the dead letters and acknowledges `entry` in one
    /// atomic call. `raw` is the envelope as text (it may not parse).
    ///
    /// # Errors
    /// Redis is unreachable; the entry then stays pending and is reclaimed.
    #[allow(clippy::too_many_arguments)]
    pub async fn dead(
        &self,
        queue: &str,
        entry: Option<&str>,
        raw: &str,
        kind: &str,
        reason: &str,
        error: &str,
        attempts: u32,
    ) -> Result<String, QueueError> {
        let mut c = self.conn().await?;
        let id: String = self
            .scripts
            .dead
            .key(self.keys.stream(queue))
            .key(self.keys.dead())
            .arg(GROUP)
            .arg(entry.unwrap_or(""))
            .arg(raw)
            .arg(queue)
            .arg(kind)
            .arg(reason)
            .arg(error)
            .arg(attempts)
            .arg(now_rfc3339())
            .invoke_async(&mut c)
            .await?;
        Ok(id)
    }

    /// Reads up to `count` new entries of `queue` for `consumer`, blocking up
    /// to `block`. Recreates the group when it vanished (FLUSHALL, a restart
    /// without persistence) and reads again.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn read(
        &self,
        queue: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry>, QueueError> {
        match self.read_once(queue, consumer, count, block).await {
            Err(e) if e.is_nogroup() => {
                tracing::warn!(queue, "consumer group missing; recreating it");
                self.ensure_group(queue).await?;
                self.read_once(queue, consumer, count, block).await
            }
            other => other,
        }
    }

    async fn read_once(
        &self,
        queue: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry>, QueueError> {
        let mut c = self.redis.blocking.get().await?;
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(self.keys.stream(queue))
            .arg(">")
            .query_async(&mut *c)
            .await?;
        Ok(reply
            .map(|r| {
                r.keys
                    .into_iter()
                    .flat_map(|k| k.ids)
                    .map(entry_of)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// One scheduler pass: moves up to `batch` due jobs back to their streams.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn promote(&self, now_ms: i64, batch: usize) -> Result<Promoted, QueueError> {
        let mut c = self.conn().await?;
        let (moved, lateness_ms, orphans, poisoned): (usize, Vec<i64>, usize, usize) = self
            .scripts
            .promote
            .key(self.keys.retry())
            .arg(now_ms)
            .arg(batch)
            .arg(self.keys.base())
            .arg(now_rfc3339())
            .invoke_async(&mut c)
            .await?;
        Ok(Promoted {
            moved,
            lateness_ms,
            orphans,
            poisoned,
        })
    }

    /// Due time (unix ms) of the earliest job in the retry set, if any.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn next_due(&self) -> Result<Option<i64>, QueueError> {
        let mut c = self.conn().await?;
        let first: Vec<(String, f64)> = c.zrange_withscores(self.keys.retry(), 0, 0).await?;
        Ok(first.first().map(|(_, s)| *s as i64))
    }

    /// One reclaim pass over `queue`: claims up to `count` entries idle longer
    /// than `min_idle`, dead-lettering those delivered more than `max_deliveries` times.
    ///
    /// # Errors
    /// Redis is unreachable.
    #[allow(clippy::too_many_arguments)]
    pub async fn reclaim(
        &self,
        queue: &str,
        consumer: &str,
        min_idle: Duration,
        cursor: &str,
        count: usize,
        max_deliveries: u32,
    ) -> Result<Reclaimed, QueueError> {
        let mut c = self.conn().await?;
        let r: Result<ReclaimReply, redis::RedisError> = self
            .scripts
            .reclaim
            .key(self.keys.stream(queue))
            .key(self.keys.dead())
            .arg(GROUP)
            .arg(consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(cursor)
            .arg(count)
            .arg(max_deliveries)
            .arg(queue)
            .arg(now_rfc3339())
            .invoke_async(&mut c)
            .await;
        match r {
            Ok((cursor, entries, poisoned)) => Ok(Reclaimed {
                cursor,
                entries: entries
                    .into_iter()
                    .map(|(id, raw)| Entry { id, raw })
                    .collect(),
                poisoned,
            }),
            // No group yet: nothing can be pending, and the reader recreates it.
            Err(e) if e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP") => {
                Ok(Reclaimed {
                    cursor: "0-0".into(),
                    ..Default::default()
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes consumers of `queue` idle longer than `ttl` with nothing
    /// pending (workers that are gone); returns their names.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn prune_consumers(
        &self,
        queue: &str,
        ttl: Duration,
        keep: &str,
    ) -> Result<Vec<String>, QueueError> {
        let mut c = self.conn().await?;
        let stream = self.keys.stream(queue);
        let infos: Result<Vec<HashMap<String, Value>>, _> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&stream)
            .arg(GROUP)
            .query_async(&mut c)
            .await;
        let infos = match infos {
            Ok(i) => i,
            Err(e) if e.code() == Some("NOGROUP") => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut removed = Vec::new();
        for info in infos {
            let name = value_str(info.get("name"));
            let pending = value_int(info.get("pending"));
            let idle = value_int(info.get("idle"));
            if name.is_empty() || name == keep || pending > 0 || (idle as u128) < ttl.as_millis() {
                continue;
            }
            let _: i64 = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(&stream)
                .arg(GROUP)
                .arg(&name)
                .query_async(&mut c)
                .await?;
            removed.push(name);
        }
        Ok(removed)
    }

    /// Numbers for every queue in `queues` plus the retry and dead counts.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn stats(&self, queues: &[String]) -> Result<Stats, QueueError> {
        let mut c = self.conn().await?;
        let mut rows = Vec::new();
        for q in queues {
            let stream = self.keys.stream(q);
            let length: u64 = c.xlen(&stream).await?;
            let summary: Result<Value, _> = redis::cmd("XPENDING")
                .arg(&stream)
                .arg(GROUP)
                .query_async(&mut c)
                .await;
            let (pending, oldest_id) = match summary {
                Ok(Value::Array(v)) if !v.is_empty() => {
                    (value_int(v.first()) as u64, value_str(v.get(1)))
                }
                _ => (0, String::new()),
            };
            let consumers: u64 = match redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&stream)
                .arg(GROUP)
                .query_async::<Vec<Value>>(&mut c)
                .await
            {
                Ok(v) => v.len() as u64,
                Err(_) => 0,
            };
            let oldest_pending_ms = oldest_id
                .split('-')
                .next()
                .and_then(|ms| ms.parse::<i64>().ok())
                .map(|ms| (now_ms() - ms).max(0) as u64)
                .unwrap_or(0);
            rows.push(QueueStats {
                queue: q.clone(),
                length,
                pending,
                consumers,
                oldest_pending_ms: if pending > 0 { oldest_pending_ms } else { 0 },
            });
        }
        let retry: u64 = c.zcard(self.keys.retry()).await?;
        let dead: u64 = c.xlen(self.keys.dead()).await?;
        Ok(Stats {
            queues: rows,
            retry,
            dead,
        })
    }

    /// Dead letters, oldest first, optionally of one queue.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn dead_letters(
        &self,
        queue: Option<&str>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        let mut c = self.conn().await?;
        let mut out = Vec::new();
        let mut start = after.map(|a| format!("({a}")).unwrap_or_else(|| "-".into());
        loop {
            let page: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
                .arg(self.keys.dead())
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(500)
                .query_async(&mut c)
                .await?;
            let done = page.len() < 500;
            for (id, fields) in page {
                start = format!("({id}");
                let dl = dead_letter_of(id, fields);
                if queue.is_none_or(|q| dl.queue == q) {
                    out.push(dl);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            if done {
                return Ok(out);
            }
        }
    }

    /// One dead letter by its entry id.
    ///
    /// # Errors
    /// [`QueueError::NotFound`] when there is no such entry.
    pub async fn dead_letter(&self, id: &str) -> Result<DeadLetter, QueueError> {
        let mut c = self.conn().await?;
        let page: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(self.keys.dead())
            .arg(id)
            .arg(id)
            .query_async(&mut c)
            .await
            .map_err(|e| {
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) {
                    QueueError::NotFound(format!("dead letter {id}"))
                } else {
                    e.into()
                }
            })?;
        page.into_iter()
            .next()
            .map(|(id, f)| dead_letter_of(id, f))
            .ok_or_else(|| QueueError::NotFound(format!("dead letter {id}")))
    }

    /// Re-enqueues a dead letter with its attempts reset and removes it from
    /// the dead letters; returns the new job.
    ///
    /// # Errors
    /// [`QueueError::NotFound`] when it is gone (maybe replayed by someone
    /// else); [`QueueError::Protocol`] when its envelope cannot be read.
    pub async fn replay(&self, id: &str) -> Result<Job, QueueError> {
        let dl = self.dead_letter(id).await?;
        let mut job: Job = serde_json::from_str(&dl.job).map_err(|e| {
            QueueError::Protocol(format!("dead letter {id} holds an unreadable envelope ({e}); inspect it with `rebound dlq show {id}`"))
        })?;
        job.attempt = 1;
        job.last_error = Some(format!("replayed after: {}", dl.error));
        if job.queue.is_empty() {
            job.queue = dl.queue.clone();
        }
        let body = serde_json::to_string(&job)?;
        let mut c = self.conn().await?;
        let r: Option<String> = self
            .scripts
            .replay
            .key(self.keys.dead())
            .key(self.keys.stream(&job.queue))
            .arg(id)
            .arg(body)
            .invoke_async(&mut c)
            .await?;
        match r {
            Some(_) => Ok(job),
            None => Err(QueueError::NotFound(format!("dead letter {id}"))),
        }
    }

    /// Deletes dead letters (of one queue, or all); returns how many.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn purge_dead(&self, queue: Option<&str>) -> Result<u64, QueueError> {
        let mut c = self.conn().await?;
        if queue.is_none() {
            let n: u64 = c.xlen(self.keys.dead()).await?;
            let _: i64 = c.del(self.keys.dead()).await?;
            return Ok(n);
        }
        let mut n = 0;
        for dl in self.dead_letters(queue, usize::MAX, None).await? {
            let d: u64 = c.xdel(self.keys.dead(), &[&dl.id]).await?;
            n += d;
        }
        Ok(n)
    }
}

/// Reply of `reclaim.lua`: next cursor, claimed `(id, job)` pairs, poisoned kinds.
type ReclaimReply = (String, Vec<(String, String)>, Vec<String>);

fn entry_of(id: StreamId) -> Entry {
    let raw = match id.map.get("job") {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    };
    Entry { id: id.id, raw }
}

fn dead_letter_of(id: String, mut f: HashMap<String, String>) -> DeadLetter {
    let mut take = |k: &str| f.remove(k).unwrap_or_default();
    DeadLetter {
        id,
        job: take("job"),
        queue: take("queue"),
        kind: take("kind"),
        reason: take("reason"),
        error: take("error"),
        attempts: take("attempts").parse().unwrap_or(0),
        failed_at: take("failed_at"),
    }
}

fn value_str(v: Option<&Value>) -> String {
    match v {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    }
}

fn value_int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Int(i)) => *i,
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).parse().unwrap_or(0),
        _ => 0,
    }
}

/// Measures how long ago something happened, for log fields.
pub fn elapsed_ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_with_the_contract_fields() {
        let job = Job::new(EMAILS, "email.send", 3, serde_json::json!({"to": "a@b.c"}));
        let text = serde_json::to_string(&job).expect("encode");
        for field in [
            "\"id\"",
            "\"queue\"",
            "\"kind\"",
            "\"attempt\"",
            "\"max_attempts\"",
            "\"enqueued_at\"",
            "\"payload\"",
            "\"last_error\"",
        ] {
            assert!(text.contains(field), "{field} missing in {text}");
        }
        let back: Job = serde_json::from_str(&text).expect("decode");
        assert_eq!(back, job);
        assert_eq!(back.attempt, 1);
    }

    #[test]
    fn an_outage_is_reported_once_when_it_starts_and_once_when_it_ends() {
        let h = Health::default();
        let down = || {
            QueueError::Redis(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "refused",
            )))
        };
        assert!(h.ok().is_none(), "no outage to end");
        assert!(
            h.failed("read", &down()),
            "the first failure starts the outage"
        );
        assert!(
            !h.failed("read", &down()),
            "later failures are the same outage"
        );
        assert!(!h.failed("ack", &down()));
        assert!(h.is_down());
        assert!(h.ok().is_some(), "the first success ends it");
        assert!(h.ok().is_none());
        assert!(
            !h.failed("script", &QueueError::Protocol("bad reply".into())),
            "an error reply is not an outage"
        );
        assert!(!h.is_down());
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(300));
        assert_eq!(b.next_delay(), Duration::from_millis(50));
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        assert_eq!(b.next_delay(), Duration::from_millis(200));
        assert_eq!(b.next_delay(), Duration::from_millis(300));
        assert_eq!(b.next_delay(), Duration::from_millis(300));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(50));
    }
}
