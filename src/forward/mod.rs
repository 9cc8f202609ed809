//! Forwarding events to downstream webhook subscribers: signed the Svix way,
//! retried, suspended, parked, and resumed automatically.
//!
//! Each ingested event that a subscription matches becomes one
//! `webhook.deliver` job per subscriber on the `webhooks` queue (fan-out is
//! deduplicated, so a redelivered event job fans out once). A delivery is a
//! POST with `webhook-id` (stable across retries, so receivers dedupe),
//! `webhook-timestamp` and `webhook-signature` (`v1,` HMAC-SHA256 keyed with
//! the subscription's `whsec_` secret): the official svix libraries verify it.
//!
//! A failed delivery is retried after `min(base_delay * 2^(n-1), max_delay)`,
//! `max_attempts` times (`tls_max_attempts` when the failure is TLS or a
//! certificate). When a delivery runs out of attempts its subscription is
//! suspended: that delivery and every later one are parked in order in
//! `<prefix>:parked:<name>`, neither attempted nor dead-lettered. Every
//! `auto_resume_interval`, a suspended subscription whose last error is older
//! than `resume_after` is probed (GET `health_url`, or a signed test event to
//! `url`); on success it is active again and its parked deliveries are
//! released in order. A 410 Gone disables a subscription at once (its
//! deliveries are parked too, until an operator resumes it).

use std::collections::{BTreeMap, HashMap};
use std::error::Error as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use redis::{AsyncCommands as _, Script};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::app::Context;
use crate::config::{decode_whsec, valid_name, Secret, SubscriptionConfig};
use crate::ingress::signature::{now_secs, sign};
use crate::queue::{now_ms, now_rfc3339, Job, QueueError, WEBHOOKS};
use crate::worker::{Handler, JobError};

/// Job kind of one delivery to one subscriber.
pub const DELIVER: &str = "webhook.deliver";

/// What can go wrong managing subscriptions.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The request breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// No such subscription.
    #[error("subscription `{0}` not found")]
    NotFound(String),
    /// A subscription of that name exists.
    #[error("subscription `{0}` already exists")]
    Exists(String),
    /// Redis failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl From<redis::RedisError> for ForwardError {
    fn from(e: redis::RedisError) -> Self {
        ForwardError::Queue(QueueError::Redis(e))
    }
}

/// A subscription with its state, as the API and CLI show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subscription {
    /// Unique name.
    pub name: String,
    /// Where deliveries go.
    pub url: String,
    /// Event types, or `["*"]`.
    pub events: Vec<String>,
    /// Signing secret (masked when shown).
    #[serde(skip_serializing)]
    pub secret: Secret,
    /// Probed before an automatic resume.
    pub health_url: String,
    /// Extra headers on every delivery.
    pub headers: BTreeMap<String, String>,
    /// `config` or `api`.
    pub origin: String,
    /// `active`, `suspended` or `disabled`.
    pub state: String,
    /// Why it is not active.
    pub reason: String,
    /// Last delivery error.
    pub last_error: String,
    /// When that was (RFC 3339), empty when never.
    pub last_error_at: String,
    /// Failed delivery attempts since it was last active.
    pub failures: u64,
    /// Deliveries waiting for a resume.
    pub parked: u64,
}

/// A subscription as `POST /v1/subscriptions` takes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    /// Unique name (letters, digits, `_`, `-`).
    pub name: String,
    /// http(s) URL.
    pub url: String,
    /// Event types or `["*"]` (default).
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// `whsec_...`.
    pub secret: String,
    /// Optional health URL.
    #[serde(default)]
    pub health_url: Option<String>,
    /// Optional extra headers.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
}

fn validate_definition(
    name: &str,
    url: &str,
    events: &[String],
    secret: &str,
    health_url: &str,
) -> Result<(), ForwardError> {
    if !valid_name(name) {
        return Err(ForwardError::Invalid(
            "`name` must be letters, digits, `_` or `-` (at most 64)".into(),
        ));
    }
    let http = |u: &str| u.starts_with("http://") || u.starts_with("https://");
    if !http(url) {
        return Err(ForwardError::Invalid("`url` must be an http(s) URL".into()));
    }
    if !health_url.is_empty() && !http(health_url) {
        return Err(ForwardError::Invalid(
            "`health_url` must be an http(s) URL".into(),
        ));
    }
    if events.is_empty() || events.iter().any(|e| e.trim().is_empty()) {
        return Err(ForwardError::Invalid(
            "`events` must list event types, or [\"*\"]".into(),
        ));
    }
    decode_whsec(secret).map_err(|e| ForwardError::Invalid(format!("`secret`: {e}")))?;
    Ok(())
}

/// Whether `events` (a subscription's filter) takes `event_type`.
pub fn matches(events: &[String], event_type: &str) -> bool {
    events.iter().any(|e| {
        e == "*"
            || e == event_type
            || e.strip_suffix(".*").is_some_and(|p| {
                event_type
                    .strip_prefix(p)
                    .is_some_and(|r| r.starts_with('.'))
            })
    })
}

/// The delay after failed attempt `n` (1-based): `min(base * 2^(n-1), max)`.
pub fn delivery_delay(base: Duration, max: Duration, n: u32) -> Duration {
    let factor = 2u32.saturating_pow(n.saturating_sub(1).min(30));
    base.saturating_mul(factor).min(max)
}

/// Whether a request error is a TLS / certificate problem (those get more attempts:
/// certificates are often fixed within hours).
fn is_tls(e: &reqwest::Error) -> bool {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        let text = s.to_string().to_ascii_lowercase();
        if text.contains("certificate")
            || text.contains("tls")
            || text.contains("handshake")
            || text.contains("ssl")
        {
            return true;
        }
        src = s.source();
    }
    false
}

/// The forwarding side: subscriptions, fan-out, delivery, resume.
#[derive(Clone, Debug)]
pub struct ForwardService {
    ctx: Context,
    http: reqwest::Client,
    limits: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    release: Arc<Script>,
}

impl ForwardService {
    /// The service over `ctx`.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(ctx: Context) -> Result<Self, ForwardError> {
        let http = reqwest::Client::builder()
            .timeout(ctx.cfg.forward.timeout)
            .user_agent(crate::email::resend::USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ForwardError::Invalid(format!("http client: {e}")))?;
        Ok(Self {
            ctx,
            http,
            limits: Arc::default(),
            release: Arc::new(Script::new(include_str!("lua/release.lua"))),
        })
    }

    /// Writes the `[[forward.subscriptions]]` of the config to Redis, keeping
    /// each one's state (a suspended subscription stays suspended across a restart).
    ///
    /// # Errors
    /// Redis.
    pub async fn sync_config(&self) -> Result<(), ForwardError> {
        for s in &self.ctx.cfg.forward.subscriptions {
            self.write_definition(s, "config").await?;
        }
        Ok(())
    }

    async fn write_definition(
        &self,
        s: &SubscriptionConfig,
        origin: &str,
    ) -> Result<(), ForwardError> {
        let keys = self.ctx.queue.keys();
        let key = keys.subscription(&s.name);
        let mut c = self.ctx.queue.redis().conn().await?;
        let () = redis::pipe()
            .atomic()
            .hset_multiple(
                &key,
                &[
                    ("name", s.name.clone()),
                    ("url", s.url.clone()),
                    (
                        "events",
                        serde_json::to_string(&s.events).unwrap_or_default(),
                    ),
                    ("secret", s.secret.expose().to_string()),
                    ("health_url", s.health_url.clone()),
                    (
                        "headers",
                        serde_json::to_string(&s.headers).unwrap_or_default(),
                    ),
                    ("origin", origin.to_string()),
                ],
            )
            .ignore()
            .hset_nx(&key, "state", "active")
            .ignore()
            .sadd(keys.subscriptions(), &s.name)
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// Every subscription with its state.
    ///
    /// # Errors
    /// Redis.
    pub async fn list(&self) -> Result<Vec<Subscription>, ForwardError> {
        let keys = self.ctx.queue.keys();
        let mut c = self.ctx.queue.redis().conn().await?;
        let mut names: Vec<String> = c.smembers(keys.subscriptions()).await?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            if let Some(s) = self.get_opt(&n).await? {
                out.push(s);
            }
        }
        Ok(out)
    }

    async fn get_opt(&self, name: &str) -> Result<Option<Subscription>, ForwardError> {
        let keys = self.ctx.queue.keys();
        let mut c = self.ctx.queue.redis().conn().await?;
        let (mut h, parked): (HashMap<String, String>, u64) = redis::pipe()
            .hgetall(keys.subscription(name))
            .llen(keys.parked(name))
            .query_async(&mut c)
            .await?;
        if !h.contains_key("url") {
            return Ok(None);
        }
        let mut take = |k: &str| h.remove(k).unwrap_or_default();
        let last_ms: i64 = take("last_error_at").parse().unwrap_or(0);
        Ok(Some(Subscription {
            name: take("name"),
            url: take("url"),
            events: serde_json::from_str(&take("events")).unwrap_or_else(|_| vec!["*".into()]),
            secret: Secret::new(take("secret")),
            health_url: take("health_url"),
            headers: serde_json::from_str(&take("headers")).unwrap_or_default(),
            origin: take("origin"),
            state: Some(take("state"))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "active".into()),
            reason: take("reason"),
            last_error: take("last_error"),
            last_error_at: if last_ms > 0 {
                humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + Duration::from_millis(last_ms as u64),
                )
                .to_string()
            } else {
                String::new()
            },
            failures: take("failures").parse().unwrap_or(0),
            parked,
        }))
    }

    /// One subscription.
    ///
    /// # Errors
    /// [`ForwardError::NotFound`] or Redis.
    pub async fn get(&self, name: &str) -> Result<Subscription, ForwardError> {
        self.get_opt(name)
            .await?
            .ok_or_else(|| ForwardError::NotFound(name.to_string()))
    }

    /// Adds a subscription at runtime.
    ///
    /// # Errors
    /// Validation, a name in use, or Redis.
    pub async fn create(&self, req: NewSubscription) -> Result<Subscription, ForwardError> {
        let events = req.events.clone().unwrap_or_else(|| vec!["*".into()]);
        let health = req.health_url.clone().unwrap_or_default();
        validate_definition(&req.name, &req.url, &events, &req.secret, &health)?;
        if self.get_opt(&req.name).await?.is_some() {
            return Err(ForwardError::Exists(req.name));
        }
        let s = SubscriptionConfig {
            name: req.name.clone(),
            url: req.url,
            events,
            secret: Secret::new(req.secret),
            health_url: health,
            headers: req.headers.unwrap_or_default(),
        };
        self.write_definition(&s, "api").await?;
        self.get(&s.name).await
    }

    /// Removes a subscription added through the API, with its parked deliveries.
    ///
    /// # Errors
    /// Not found, defined in config, or Redis.
    pub async fn delete(&self, name: &str) -> Result<u64, ForwardError> {
        let s = self.get(name).await?;
        if s.origin == "config" {
            return Err(ForwardError::Invalid(format!(
                "subscription `{name}` is defined in the config file; remove it there"
            )));
        }
        let keys = self.ctx.queue.keys();
        let mut c = self.ctx.queue.redis().conn().await?;
        let () = redis::pipe()
            .atomic()
            .del(keys.subscription(name))
            .ignore()
            .del(keys.parked(name))
            .ignore()
            .srem(keys.subscriptions(), name)
            .ignore()
            .query_async(&mut c)
            .await?;
        self.ctx
            .metrics
            .subscription_suspended
            .with_label_values(&[name])
            .set(0);
        if s.parked > 0 {
            tracing::warn!(
                name,
                parked = s.parked,
                "subscription deleted with parked deliveries; they are dropped"
            );
        }
        Ok(s.parked)
    }

    /// One delivery job per subscription that takes this event; deduplicated,
    /// so a redelivered event job fans out once.
    ///
    /// # Errors
    /// Redis.
    pub async fn fan_out(&self, event_job: &Job) -> Result<usize, ForwardError> {
        let event = &event_job.payload["event"];
        let event_type = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        let subs = self.list().await?;
        let mut n = 0;
        for s in subs.iter().filter(|s| matches(&s.events, event_type)) {
            let digest = Sha256::digest(format!("{}:{}", event_job.id, s.name).as_bytes());
            let message_id = format!("msg_{}", &hex::encode(digest)[..26]);
            let mut job = Job::new(
                WEBHOOKS,
                DELIVER,
                self.ctx
                    .cfg
                    .forward
                    .max_attempts
                    .max(self.ctx.cfg.forward.tls_max_attempts),
                serde_json::json!({ "subscription": s.name, "message_id": message_id, "event_type": event_type, "event": event }),
            );
            job.source = event_job.source.clone();
            let dedupe = self
                .ctx
                .queue
                .keys()
                .seen(&format!("fwd:{}:{}", event_job.id, s.name));
            if self
                .ctx
                .queue
                .ingest(&dedupe, self.ctx.cfg.ingress.dedupe_ttl, &job)
                .await?
            {
                n += 1;
            }
        }
        Ok(n)
    }

    fn limit(&self, name: &str) -> Arc<Semaphore> {
        let mut m = match self.limits.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(
                    self.ctx.cfg.forward.concurrency_per_subscription,
                ))
            })
            .clone()
    }

    async fn set_fields(&self, name: &str, fields: &[(&str, String)]) -> Result<(), ForwardError> {
        let mut c = self.ctx.queue.redis().conn().await?;
        let () = c
            .hset_multiple(self.ctx.queue.keys().subscription(name), fields)
            .await?;
        Ok(())
    }

    async fn park(&self, name: &str, job: &Job) -> Result<(), ForwardError> {
        let mut parked = job.clone();
        parked.attempt = 1;
        let mut c = self.ctx.queue.redis().conn().await?;
        let _: i64 = c
            .rpush(
                self.ctx.queue.keys().parked(name),
                serde_json::to_string(&parked).map_err(QueueError::from)?,
            )
            .await?;
        Ok(())
    }

    /// Posts one delivery (the `webhook.deliver` job).
    async fn deliver(&self, job: &Job) -> Result<(), JobError> {
        let name = job
            .payload
            .get("subscription")
            .and_then(Value::as_str)
            .unwrap_or("");
        let transient = |e: ForwardError| JobError::transient(e.to_string());
        let Some(sub) = self.get_opt(name).await.map_err(transient)? else {
            tracing::warn!(
                subscription = name,
                "delivery for a deleted subscription dropped"
            );
            self.ctx
                .metrics
                .forward_deliveries
                .with_label_values(&[name, "dropped"])
                .inc();
            return Ok(());
        };
        if sub.state != "active" {
            self.park(name, job).await.map_err(transient)?;
            self.ctx
                .metrics
                .forward_deliveries
                .with_label_values(&[name, "parked"])
                .inc();
            return Ok(());
        }
        // Per-subscriber limit: a slow receiver waits its turn without
        // holding a slot of the webhooks queue that another subscriber could use.
        let Ok(_permit) = self.limit(name).try_acquire_owned() else {
            return Err(JobError::Defer {
                after: Duration::from_millis(100),
            });
        };
        let message_id = job
            .payload
            .get("message_id")
            .and_then(Value::as_str)
            .unwrap_or(&job.id);
        let body = serde_json::to_vec(&job.payload["event"]).unwrap_or_default();
        let key = decode_whsec(sub.secret.expose()).map_err(|e| JobError::Permanent {
            reason: "invalid_secret".into(),
            message: e,
        })?;
        let ts = now_secs();
        let mut req = self
            .http
            .post(&sub.url)
            .header("webhook-id", message_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sign(&key, message_id, ts, &body))
            .header("content-type", "application/json");
        for (k, v) in &sub.headers {
            req = req.header(k, v);
        }
        let (error, tls) = match req.body(body).send().await {
            Ok(resp) if resp.status().is_success() => {
                self.ctx
                    .metrics
                    .forward_deliveries
                    .with_label_values(&[name, "ok"])
                    .inc();
                return Ok(());
            }
            Ok(resp) if resp.status().as_u16() == 410 => {
                self.disable(name, "the receiver answered 410 Gone")
                    .await
                    .map_err(transient)?;
                self.park(name, job).await.map_err(transient)?;
                self.ctx
                    .metrics
                    .forward_deliveries
                    .with_label_values(&[name, "gone"])
                    .inc();
                return Ok(());
            }
            Ok(resp) => (format!("HTTP {}", resp.status()), false),
            Err(e) => {
                let tls = is_tls(&e);
                let mut msg = e.to_string();
                let mut src = e.source();
                while let Some(s) = src {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    src = s.source();
                }
                (msg, tls)
            }
        };
        self.ctx
            .metrics
            .forward_deliveries
            .with_label_values(&[name, "failed"])
            .inc();
        let f = &self.ctx.cfg.forward;
        let budget = if tls {
            f.tls_max_attempts
        } else {
            f.max_attempts
        };
        let mut c = self
            .ctx
            .queue
            .redis()
            .conn()
            .await
            .map_err(|e| JobError::transient(e.to_string()))?;
        let () = redis::pipe()
            .hset_multiple(
                self.ctx.queue.keys().subscription(name),
                &[
                    ("last_error", error.clone()),
                    ("last_error_at", now_ms().to_string()),
                ],
            )
            .ignore()
            .hincr(self.ctx.queue.keys().subscription(name), "failures", 1)
            .ignore()
            .query_async(&mut c)
            .await
            .map_err(|e| JobError::transient(e.to_string()))?;
        if job.attempt >= budget {
            self.suspend(name, &error, job.attempt)
                .await
                .map_err(transient)?;
            self.park(name, job).await.map_err(transient)?;
            return Ok(());
        }
        Err(JobError::Transient {
            message: error,
            retry_after: None,
            max_attempts: Some(budget),
        })
    }

    async fn suspend(&self, name: &str, error: &str, attempts: u32) -> Result<(), ForwardError> {
        self.set_fields(
            name,
            &[
                ("state", "suspended".into()),
                ("reason", format!("a delivery failed {attempts} times")),
                ("suspended_at", now_rfc3339()),
            ],
        )
        .await?;
        self.ctx
            .metrics
            .subscription_suspended
            .with_label_values(&[name])
            .set(1);
        tracing::warn!(
            subscription = name,
            attempts,
            last_error = error,
            "subscription suspended; its deliveries are parked until it is healthy again"
        );
        Ok(())
    }

    async fn disable(&self, name: &str, reason: &str) -> Result<(), ForwardError> {
        self.set_fields(
            name,
            &[
                ("state", "disabled".into()),
                ("reason", reason.into()),
                ("last_error", reason.into()),
                ("last_error_at", now_ms().to_string()),
            ],
        )
        .await?;
        self.ctx
            .metrics
            .subscription_suspended
            .with_label_values(&[name])
            .set(1);
        tracing::warn!(
            subscription = name,
            reason,
            "subscription disabled; resume it by hand once the receiver is back"
        );
        Ok(())
    }

    /// Makes a subscription active and releases its parked deliveries in
    /// order; returns how many were released.
    ///
    /// # Errors
    /// Not found or Redis.
    pub async fn resume(&self, name: &str) -> Result<u64, ForwardError> {
        self.get(name).await?;
        self.set_fields(
            name,
            &[
                ("state", "active".into()),
                ("reason", String::new()),
                ("failures", "0".into()),
            ],
        )
        .await?;
        self.ctx
            .metrics
            .subscription_suspended
            .with_label_values(&[name])
            .set(0);
        let keys = self.ctx.queue.keys();
        let mut released = 0u64;
        loop {
            let mut c = self.ctx.queue.redis().conn().await?;
            let n: u64 = self
                .release
                .key(keys.parked(name))
                .key(keys.stream(WEBHOOKS))
                .arg(500)
                .invoke_async(&mut c)
                .await?;
            released += n;
            if n < 500 {
                break;
            }
        }
        tracing::info!(subscription = name, released, "subscription active again");
        Ok(released)
    }

    /// GET `health_url` (2xx), or POST a signed `rebound.probe` event to `url` (2xx).
    async fn probe(&self, s: &Subscription) -> Result<(), String> {
        let r = if s.health_url.is_empty() {
            let key = decode_whsec(s.secret.expose())?;
            let id = format!("msg_probe_{}", uuid::Uuid::new_v4().simple());
            let body = serde_json::json!({ "type": "rebound.probe", "created_at": now_rfc3339(), "data": {} }).to_string();
            let ts = now_secs();
            self.http
                .post(&s.url)
                .header("webhook-id", &id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", sign(&key, &id, ts, body.as_bytes()))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
        } else {
            self.http.get(&s.health_url).send().await
        };
        match r {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => Err(format!("probe answered HTTP {}", resp.status())),
            Err(e) => Err(format!("probe failed: {e}")),
        }
    }

    /// One pass of the automatic resume: probe every suspended subscription
    /// whose last error is older than `resume_after`.
    ///
    /// # Errors
    /// Redis.
    pub async fn auto_resume_once(&self) -> Result<(), ForwardError> {
        let resume_after = self.ctx.cfg.forward.resume_after.as_millis() as i64;
        for s in self.list().await? {
            self.ctx
                .metrics
                .subscription_suspended
                .with_label_values(&[&s.name])
                .set(i64::from(s.state != "active"));
            if s.state != "suspended" {
                continue;
            }
            let mut c = self.ctx.queue.redis().conn().await?;
            let last: i64 = c
                .hget::<_, _, Option<String>>(
                    self.ctx.queue.keys().subscription(&s.name),
                    "last_error_at",
                )
                .await?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if now_ms() - last < resume_after {
                continue;
            }
            match self.probe(&s).await {
                Ok(()) => {
                    self.resume(&s.name).await?;
                }
                Err(e) => {
                    tracing::info!(subscription = %s.name, error = %e, "still unhealthy; stays suspended");
                    self.set_fields(
                        &s.name,
                        &[("last_error", e), ("last_error_at", now_ms().to_string())],
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Runs [`ForwardService::auto_resume_once`] every `auto_resume_interval` until `shutdown`.
    pub async fn auto_resume(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.ctx.cfg.forward.auto_resume_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if let Err(e) = self.auto_resume_once().await {
                tracing::warn!(error = %e, "automatic resume pass failed; trying again next interval");
            }
        }
    }
}

/// Delivers to one subscriber (`webhook.deliver`).
#[derive(Debug)]
pub struct DeliverHandler(pub Arc<ForwardService>);

impl Handler for DeliverHandler {
    fn handle<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(self.0.deliver(job))
    }

    fn retry_delay(&self, job: &Job) -> Option<Duration> {
        let f = &self.0.ctx.cfg.forward;
        Some(delivery_delay(f.base_delay, f.max_delay, job.attempt))
    }
}

/// Fans an event out to subscribers, then runs `inner` on it.
#[derive(Debug)]
pub struct FanOut<H> {
    /// The forwarding service.
    pub forward: Arc<ForwardService>,
    /// What else the event is for (the email loop), if anything.
    pub inner: H,
}

impl<H: Handler> Handler for FanOut<H> {
    fn handle<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            self.forward
                .fan_out(job)
                .await
                .map_err(|e| JobError::transient(e.to_string()))?;
            self.inner.handle(job).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let (b, m) = (Duration::from_secs(1), Duration::from_secs(30));
        let d: Vec<u64> = (1..=8).map(|n| delivery_delay(b, m, n).as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(delivery_delay(b, m, 200), m);
    }

    #[test]
    fn event_filters() {
        let e = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches(&e(&["*"]), "email.bounced"));
        assert!(matches(
            &e(&["email.bounced", "email.complained"]),
            "email.complained"
        ));
        assert!(!matches(&e(&["email.bounced"]), "email.delivered"));
        assert!(matches(&e(&["email.*"]), "email.delivered"));
        assert!(!matches(&e(&["email.*"]), "emails.x"));
    }

    #[test]
    fn definitions_are_validated() {
        let ok = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let ev = vec!["*".to_string()];
        assert!(validate_definition("crm", "https://crm.test/hook", &ev, ok, "").is_ok());
        assert!(validate_definition("c rm", "https://x", &ev, ok, "").is_err());
        assert!(validate_definition("crm", "ftp://x", &ev, ok, "").is_err());
        assert!(validate_definition("crm", "https://x", &[], ok, "").is_err());
        assert!(validate_definition("crm", "https://x", &ev, "secret", "").is_err());
        assert!(validate_definition("crm", "https://x", &ev, ok, "gopher://x").is_err());
    }
}
