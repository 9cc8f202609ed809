//! Configuration: defaults, then `config/rebound.toml`, then environment, then
//! [`Config::validate`].
//!
//! Every knob has a default, so an empty file is a working sandbox setup.
//! Durations are written the way people say them (`250ms`, `5m`, `2h`) so a
//! test can run the production retry *shape* in milliseconds. The environment
//! names are part of the contract in `design.md` and are mapped in one place,
//! [`Config::apply_env`]. Secrets are wrapped in [`Secret`] so that neither
//! `Debug` nor `check-config` can print them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Default location of the config file, relative to the working directory.
pub const DEFAULT_PATH: &str = "config/rebound.toml";

/// The whole effective configuration of one rebound process.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Prefix of every Redis key; `{rebound}` keeps all keys in one cluster slot.
    pub prefix: String,
    /// Where Redis is.
    pub redis: RedisConfig,
    /// The HTTP side: webhooks in, send API, admin API.
    pub ingress: IngressConfig,
    /// Consumer-group workers.
    pub worker: WorkerConfig,
    /// The Resend API client.
    pub resend: ResendConfig,
    /// Retry schedules for bounced emails and failed jobs.
    pub retry: RetryConfig,
    /// Email classification and bounce policy.
    pub email: EmailConfig,
    /// Forwarding of events to downstream subscribers.
    pub forward: ForwardConfig,
    /// The Resend emulator used by `rebound sandbox` and `rebound up --sandbox`.
    pub sandbox: SandboxConfig,
}

/// Redis connection settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db` (env `REDIS_URL`); may carry a password, so it is masked.
    pub url: Secret,
    /// Connections per pool; each role keeps one pool for short commands and
    /// one for blocking reads.
    pub pool_size: usize,
    /// How long a command may wait for Redis before it counts as an outage.
    #[serde(with = "duration")]
    pub command_timeout: Duration,
}

/// Ingress (HTTP) settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    /// Address of the HTTP listener.
    pub listen: String,
    /// Largest accepted request body, e.g. `256KiB`.
    #[serde(with = "bytesize")]
    pub body_limit: u64,
    /// Svix signing secrets (`whsec_...`); more than one during rotation
    /// (env `RESEND_WEBHOOK_SECRET`, comma-separated).
    pub webhook_secrets: Vec<Secret>,
    /// Accepted clock skew of `svix-timestamp`, in both directions.
    #[serde(with = "duration")]
    pub tolerance: Duration,
    /// Bearer token for `/v1/*` (env `REBOUND_API_KEY`); empty disables those routes.
    pub api_key: Secret,
    /// Accept webhooks without a signature check (only for local experiments).
    pub allow_unsigned: bool,
    /// How long a webhook message id is remembered for dedupe; must outlast
    /// Resend's ~28 h retry window.
    #[serde(with = "duration")]
    pub dedupe_ttl: Duration,
    /// Additional webhook senders, each served at `/webhooks/{name}`.
    pub sources: Vec<SourceConfig>,
}

/// How a non-Resend webhook source is verified.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceVerify {
    /// Svix / Standard Webhooks headers, like Resend.
    Svix,
    /// Hex HMAC-SHA256 of the raw body in a named header.
    Hmac,
}

/// One extra webhook sender (`[[ingress.sources]]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Route name: the source is served at `/webhooks/{name}`.
    pub name: String,
    /// Signature scheme.
    pub verify: SourceVerify,
    /// Secrets: `whsec_...` for svix, the raw shared key for hmac.
    pub secrets: Vec<Secret>,
    /// Header carrying the hex signature (hmac only).
    #[serde(default = "default_hmac_header")]
    pub header: String,
    /// JSON field (dotted path) that identifies an event for dedupe; the body
    /// hash when empty (svix sources dedupe on the message id).
    #[serde(default)]
    pub dedupe_field: String,
}

fn default_hmac_header() -> String {
    "resend-signature".into()
}

/// Worker settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Jobs run at once, per queue; also the most a worker reads ahead.
    pub concurrency: usize,
    /// A job pending this long without an ack is reclaimed by another worker.
    #[serde(with = "duration")]
    pub visibility_timeout: Duration,
    /// A stream entry delivered more than this many times is dead-lettered as poison.
    pub max_deliveries: u32,
    /// Address of `/metrics` for `rebound work`.
    pub metrics_listen: String,
    /// Longest a single handler run may take; must be below the visibility timeout.
    #[serde(with = "duration")]
    pub job_timeout: Duration,
    /// How long in-flight jobs may finish after SIGTERM before the process exits.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Longest XREADGROUP BLOCK; bounds how long shutdown waits for a read.
    #[serde(with = "duration")]
    pub block: Duration,
    /// How often the scheduler looks for due retries when it knows of none sooner.
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    /// How often the reclaimer looks for abandoned entries.
    #[serde(with = "duration")]
    pub reclaim_interval: Duration,
    /// Consumers idle this long with nothing pending are removed from the group.
    #[serde(with = "duration")]
    pub consumer_ttl: Duration,
    /// Queues this worker consumes.
    pub queues: Vec<String>,
    /// Largest batch read or acknowledged in one Redis call.
    pub batch_size: usize,
}

/// Resend API client settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResendConfig {
    /// Base URL of the API (env `RESEND_API_URL`).
    pub api_url: String,
    /// API key `re_...` (env `RESEND_API_KEY`).
    pub api_key: Secret,
    /// Default sender (env `EMAIL_FROM`).
    pub from: String,
    /// Public base URL of the app, for links (env `BASE_URL`).
    pub base_url: String,
    /// Requests per second shared by every worker process (Resend's team limit).
    pub rate_limit: u32,
    /// Timeout of one Resend request.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

/// Retry schedules.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Delays before the 1st, 2nd, 3rd plain-text re-send of a bounced email.
    #[serde(with = "durations")]
    pub bounce_delays: Vec<Duration>,
    /// Most re-sends per original email (env `RETRY_MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// Appended to the subject of a re-send.
    pub subject_suffix: String,
    /// Email categories that are re-sent when they bounce.
    pub categories: Vec<String>,
    /// Delays between attempts of a failed job; the last one repeats.
    #[serde(with = "durations")]
    pub job_delays: Vec<Duration>,
    /// Attempts of a job before it is dead-lettered.
    pub job_max_attempts: u32,
    /// Random spread applied to job retry delays (0.1 = ±10%) so that a burst
    /// of failures does not come back as a burst.
    pub jitter: f64,
}

/// Email classification and bounce policy.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// Subject substrings (case-insensitive) that give an email a category
    /// when neither the send request nor a `category` tag does.
    pub subject_rules: Vec<SubjectRule>,
    /// Overrides of the bounce policy, matched on type and subtype (`*` matches any).
    pub bounce_policy: Vec<BouncePolicyRule>,
    /// How many delivery records are kept; the oldest are dropped past this.
    pub max_records: u64,
}

/// Maps a subject substring to a category.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectRule {
    /// Case-insensitive substring of the subject.
    pub contains: String,
    /// Category given to a match.
    pub category: String,
}

/// What to do with one kind of bounce.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BounceAction {
    /// Re-send (if the category is re-sendable).
    Retry,
    /// Suppress the address; never mail it again.
    Suppress,
    /// Record only.
    Ignore,
}

/// One override of the bounce policy.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BouncePolicyRule {
    /// `bounce.type` (`Permanent`, `Transient`, `Undetermined`) or `*`.
    #[serde(rename = "type")]
    pub bounce_type: String,
    /// `bounce.subType` or `*`.
    #[serde(default = "star")]
    pub subtype: String,
    /// What happens.
    pub action: BounceAction,
}

fn star() -> String {
    "*".into()
}

/// Forwarding settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// First retry delay; doubles per attempt.
    #[serde(with = "duration")]
    pub base_delay: Duration,
    /// Cap of the retry delay.
    #[serde(with = "duration")]
    pub max_delay: Duration,
    /// Attempts before a subscription is suspended.
    pub max_attempts: u32,
    /// Attempts when the failure is a TLS / certificate error.
    pub tls_max_attempts: u32,
    /// How often suspended subscriptions are probed.
    #[serde(with = "duration")]
    pub auto_resume_interval: Duration,
    /// A suspended subscription is probed only once its last error is this old.
    #[serde(with = "duration")]
    pub resume_after: Duration,
    /// Timeout of one delivery.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Deliveries in flight per subscriber, so one slow receiver cannot take
    /// every worker slot.
    pub concurrency_per_subscription: usize,
    /// Subscribers from config (more can be added through the admin API).
    pub subscriptions: Vec<SubscriptionConfig>,
}

/// One downstream subscriber.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// Unique name (letters, digits, `_`, `-`).
    pub name: String,
    /// Where events are POSTed.
    pub url: String,
    /// Event types to forward, or `["*"]`.
    #[serde(default = "all_events")]
    pub events: Vec<String>,
    /// `whsec_...` used to sign deliveries the Svix way.
    pub secret: Secret,
    /// Probed with GET to decide an automatic resume; a signed test event to
    /// `url` when empty.
    #[serde(default)]
    pub health_url: String,
    /// Extra headers sent with every delivery.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn all_events() -> Vec<String> {
    vec!["*".into()]
}

/// Resend emulator settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Address of the emulator.
    pub listen: String,
    /// Where it posts signed webhooks; the local ingress when empty.
    pub webhook_url: String,
    /// Secret it signs with; the first ingress secret when empty.
    pub webhook_secret: Secret,
    /// Added latency per API request.
    #[serde(with = "duration")]
    pub latency: Duration,
    /// Delay before an event webhook is posted.
    #[serde(with = "duration")]
    pub event_delay: Duration,
    /// Fraction of send requests answered with a 500.
    pub error_rate: f64,
    /// The next N send requests are answered with 429 `rate_limit_exceeded`.
    pub forced_429: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            prefix: "rebound".into(),
            redis: RedisConfig::default(),
            ingress: IngressConfig::default(),
            worker: WorkerConfig::default(),
            resend: ResendConfig::default(),
            retry: RetryConfig::default(),
            email: EmailConfig::default(),
            forward: ForwardConfig::default(),
            sandbox: SandboxConfig::default(),
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("redis://127.0.0.1:6379"),
            pool_size: 64,
            command_timeout: Duration::from_secs(5),
        }
    }
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            body_limit: 256 * 1024,
            webhook_secrets: Vec::new(),
            tolerance: Duration::from_secs(300),
            api_key: Secret::default(),
            allow_unsigned: false,
            dedupe_ttl: Duration::from_secs(7 * 24 * 3600),
            sources: Vec::new(),
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 32,
            visibility_timeout: Duration::from_secs(60),
            max_deliveries: 5,
            metrics_listen: "127.0.0.1:9091".into(),
            job_timeout: Duration::from_secs(45),
            shutdown_grace: Duration::from_secs(20),
            block: Duration::from_secs(1),
            poll_interval: Duration::from_millis(50),
            reclaim_interval: Duration::from_secs(5),
            consumer_ttl: Duration::from_secs(3600),
            queues: vec!["events".into(), "emails".into(), "webhooks".into()],
            batch_size: 256,
        }
    }
}

impl Default for ResendConfig {
    fn default() -> Self {
        Self {
            api_url: "https://api.resend.com".into(),
            api_key: Secret::default(),
            from: String::new(),
            base_url: String::new(),
            rate_limit: 10,
            timeout: Duration::from_secs(30),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            bounce_delays: vec![
                Duration::from_secs(300),
                Duration::from_secs(1800),
                Duration::from_secs(7200),
            ],
            max_attempts: 3,
            subject_suffix: " (Retry)".into(),
            categories: vec![
                "verification".into(),
                "login".into(),
                "password_reset".into(),
            ],
            job_delays: vec![
                Duration::from_secs(60),
                Duration::from_secs(300),
                Duration::from_secs(900),
                Duration::from_secs(3600),
            ],
            job_max_attempts: 5,
            jitter: 0.1,
        }
    }
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            subject_rules: Vec::new(),
            bounce_policy: Vec::new(),
            max_records: 1_000_000,
        }
    }
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            max_attempts: 8,
            tls_max_attempts: 10,
            auto_resume_interval: Duration::from_secs(3600),
            resume_after: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            concurrency_per_subscription: 4,
            subscriptions: Vec::new(),
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8025".into(),
            webhook_url: String::new(),
            webhook_secret: Secret::default(),
            latency: Duration::ZERO,
            event_delay: Duration::from_millis(200),
            error_rate: 0.0,
            forced_429: 0,
        }
    }
}

/// Reads an environment variable; tests pass their own lookup.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Config {
    /// Loads `path` (or the default path when it exists), applies the process
    /// environment and validates.
    ///
    /// # Errors
    /// A missing explicit file, TOML that does not parse, or any validation
    /// problem (all problems, one per line).
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?,
            None => match std::fs::read_to_string(DEFAULT_PATH) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot read {DEFAULT_PATH}"));
                }
            },
        };
        let origin = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| DEFAULT_PATH.to_string());
        Self::from_toml(&text, &|k| std::env::var(k).ok())
            .with_context(|| format!("invalid configuration ({origin})"))
    }

    /// Parses TOML text, applies `env` and validates.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn from_toml(text: &str, env: EnvLookup<'_>) -> anyhow::Result<Config> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            anyhow::anyhow!("{}", e.message().trim()).context(toml_location(text, &e))
        })?;
        cfg.apply_env(env)?;
        let problems = cfg.validate();
        if !problems.is_empty() {
            anyhow::bail!("{}", problems.join("\n"));
        }
        Ok(cfg)
    }

    /// The environment names of the contract; the environment wins over the file.
    fn apply_env(&mut self, env: EnvLookup<'_>) -> anyhow::Result<()> {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = set("REDIS_URL") {
            self.redis.url = Secret::new(v);
        }
        if let Some(v) = set("REBOUND_PREFIX") {
            self.prefix = v;
        }
        if let Some(v) = set("REBOUND_LISTEN") {
            self.ingress.listen = v;
        }
        if let Some(v) = set("REBOUND_METRICS_LISTEN") {
            self.worker.metrics_listen = v;
        }
        if let Some(v) = set("RESEND_WEBHOOK_SECRET") {
            self.ingress.webhook_secrets = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(Secret::new)
                .collect();
        }
        if let Some(v) = set("REBOUND_API_KEY") {
            self.ingress.api_key = Secret::new(v);
        }
        if let Some(v) = set("RESEND_API_URL") {
            self.resend.api_url = v;
        }
        if let Some(v) = set("RESEND_API_KEY") {
            self.resend.api_key = Secret::new(v);
        }
        if let Some(v) = set("EMAIL_FROM") {
            self.resend.from = v;
        }
        if let Some(v) = set("BASE_URL") {
            self.resend.base_url = v;
        }
        if let Some(v) = set("RETRY_MAX_ATTEMPTS") {
            self.retry.max_attempts = v.trim().parse().map_err(|_| {
                anyhow::anyhow!("RETRY_MAX_ATTEMPTS must be a whole number, got `{v}`")
            })?;
        }
        Ok(())
    }

    /// Every problem with the configuration, one sentence each; empty when it is usable.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            p.push("prefix must be non-empty and contain no spaces".to_string());
        }
        let url = self.redis.url.expose();
        if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("unix://")
            || url.starts_with("redis+unix://"))
        {
            p.push("redis.url must start with redis://, rediss:// or unix://".to_string());
        }
        if self.redis.pool_size < 4 {
            p.push("redis.pool_size must be at least 4".to_string());
        }
        check_addr(&mut p, "ingress.listen", &self.ingress.listen);
        check_addr(&mut p, "worker.metrics_listen", &self.worker.metrics_listen);
        check_addr(&mut p, "sandbox.listen", &self.sandbox.listen);
        for (i, s) in self.ingress.webhook_secrets.iter().enumerate() {
            if let Err(e) = decode_whsec(s.expose()) {
                p.push(format!("ingress.webhook_secrets[{i}]: {e}"));
            }
        }
        if self.ingress.tolerance.is_zero() {
            p.push("ingress.tolerance must be above zero".to_string());
        }
        if self.ingress.body_limit < 1024 {
            p.push("ingress.body_limit must be at least 1KiB".to_string());
        }
        if self.ingress.dedupe_ttl < Duration::from_secs(1) {
            p.push("ingress.dedupe_ttl must be at least 1s".to_string());
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.ingress.sources {
            if !valid_name(&s.name) || s.name == "resend" {
                p.push(format!(
                    "ingress.sources: name `{}` must be letters, digits, _ or - and not `resend`",
                    s.name
                ));
            }
            if !names.insert(s.name.clone()) {
                p.push(format!("ingress.sources: name `{}` is used twice", s.name));
            }
            if s.secrets.is_empty() {
                p.push(format!(
                    "ingress.sources `{}`: needs at least one secret",
                    s.name
                ));
            }
            if s.verify == SourceVerify::Svix {
                for sec in &s.secrets {
                    if let Err(e) = decode_whsec(sec.expose()) {
                        p.push(format!("ingress.sources `{}`: {e}", s.name));
                    }
                }
            }
        }
        let w = &self.worker;
        if w.concurrency == 0 || w.concurrency > 10_000 {
            p.push("worker.concurrency must be between 1 and 10000".to_string());
        }
        if w.max_deliveries == 0 {
            p.push("worker.max_deliveries must be at least 1".to_string());
        }
        if w.batch_size == 0 || w.batch_size > 5000 {
            p.push("worker.batch_size must be between 1 and 5000".to_string());
        }
        if w.job_timeout >= w.visibility_timeout {
            p.push(format!(
                "worker.job_timeout ({}) must be below worker.visibility_timeout ({}), or a slow job is run twice",
                fmt_duration(w.job_timeout),
                fmt_duration(w.visibility_timeout)
            ));
        }
        if self.resend.timeout >= w.visibility_timeout {
            p.push(format!(
                "worker.visibility_timeout ({}) must exceed resend.timeout ({}), or a slow send is reclaimed and sent twice",
                fmt_duration(w.visibility_timeout),
                fmt_duration(self.resend.timeout)
            ));
        }
        if self.forward.timeout >= w.visibility_timeout {
            p.push("worker.visibility_timeout must exceed forward.timeout".to_string());
        }
        if w.block.is_zero() || w.poll_interval.is_zero() || w.reclaim_interval.is_zero() {
            p.push(
                "worker.block, worker.poll_interval and worker.reclaim_interval must be above zero"
                    .to_string(),
            );
        }
        if w.queues.is_empty() {
            p.push("worker.queues must name at least one queue".to_string());
        }
        for q in &w.queues {
            if !valid_name(q) {
                p.push(format!(
                    "worker.queues: `{q}` must be letters, digits, _ or -"
                ));
            }
        }
        if !(self.resend.api_url.starts_with("http://")
            || self.resend.api_url.starts_with("https://"))
        {
            p.push("resend.api_url must be an http(s) URL".to_string());
        }
        if self.resend.rate_limit == 0 {
            p.push("resend.rate_limit must be at least 1 request per second".to_string());
        }
        let r = &self.retry;
        if r.bounce_delays.is_empty() {
            p.push("retry.bounce_delays must list at least one delay".to_string());
        }
        if r.max_attempts > 20 {
            p.push("retry.max_attempts must be at most 20".to_string());
        }
        if r.job_delays.is_empty() {
            p.push("retry.job_delays must list at least one delay".to_string());
        }
        if r.job_max_attempts == 0 {
            p.push("retry.job_max_attempts must be at least 1".to_string());
        }
        if !(0.0..=0.5).contains(&r.jitter) {
            p.push("retry.jitter must be between 0 and 0.5".to_string());
        }
        let f = &self.forward;
        if f.max_attempts == 0 || f.tls_max_attempts == 0 {
            p.push(
                "forward.max_attempts and forward.tls_max_attempts must be at least 1".to_string(),
            );
        }
        if f.base_delay.is_zero() || f.max_delay < f.base_delay {
            p.push(
                "forward.base_delay must be above zero and at most forward.max_delay".to_string(),
            );
        }
        if f.concurrency_per_subscription == 0 {
            p.push("forward.concurrency_per_subscription must be at least 1".to_string());
        }
        let mut subs = std::collections::HashSet::new();
        for s in &f.subscriptions {
            if !valid_name(&s.name) {
                p.push(format!(
                    "forward.subscriptions: name `{}` must be letters, digits, _ or -",
                    s.name
                ));
            }
            if !subs.insert(s.name.clone()) {
                p.push(format!(
                    "forward.subscriptions: name `{}` is used twice",
                    s.name
                ));
            }
            if !(s.url.starts_with("http://") || s.url.starts_with("https://")) {
                p.push(format!(
                    "forward.subscriptions `{}`: url must be http(s)",
                    s.name
                ));
            }
            if let Err(e) = decode_whsec(s.secret.expose()) {
                p.push(format!("forward.subscriptions `{}`: {e}", s.name));
            }
            if s.events.is_empty() {
                p.push(format!(
                    "forward.subscriptions `{}`: events must not be empty (use [\"*\"])",
                    s.name
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.sandbox.error_rate) {
            p.push("sandbox.error_rate must be between 0 and 1".to_string());
        }
        p
    }

    /// The configuration as TOML with every secret masked, for `check-config`.
    ///
    /// # Errors
    /// Only if serialization fails, which would be a bug.
    pub fn to_masked_toml(&self) -> anyhow::Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

fn toml_location(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("TOML error at line {line}")
        }
        None => "TOML error".to_string(),
    }
}

fn check_addr(p: &mut Vec<String>, name: &str, v: &str) {
    if v.parse::<SocketAddr>().is_err() {
        p.push(format!(
            "{name} must be host:port with a numeric IP, got `{v}`"
        ));
    }
}

/// Names of queues, sources and subscriptions end up in Redis keys and URLs.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Decodes a `whsec_<base64>` secret into its HMAC key bytes.
///
/// # Errors
/// A message naming what is wrong with the secret (never the secret itself).
pub fn decode_whsec(s: &str) -> Result<Vec<u8>, String> {
    let b64 = s
        .strip_prefix("whsec_")
        .ok_or_else(|| "secret must start with whsec_".to_string())?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "secret after whsec_ is not valid base64".to_string())?;
    if key.is_empty() {
        return Err("secret decodes to an empty key".into());
    }
    Ok(key)
}

/// A configuration value that must never be printed.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn masked(&self) -> String {
        if self.0.is_empty() {
            return String::new();
        }
        // URLs keep their scheme and host so check-config stays useful; only
        // credentials are hidden.
        if let Some((scheme, rest)) = self.0.split_once("://") {
            return match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://****@{host}"),
                None => self.0.clone(),
            };
        }
        let visible: String = self.0.chars().take(6).collect();
        format!("{visible}****")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({:?})", self.masked())
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}

/// Parses `250ms`, `5s`, `5m`, `2h`, `7d`, and combinations like `1h30m`.
///
/// # Errors
/// A message that shows the accepted form.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "duration `{t}` has no unit; write e.g. {t}s or {t}ms"
        ));
    }
    humantime::parse_duration(t)
        .map_err(|_| format!("`{t}` is not a duration like 250ms, 5s, 5m, 2h"))
}

/// Formats a duration the way it is written in the config.
pub fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// Parses `256KiB`, `1MiB`, `512KB` or a plain number of bytes.
///
/// # Errors
/// A message that shows the accepted form.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{t}` is not a size like 256KiB or 1MiB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1024,
        "kb" => 1000,
        "mib" | "m" => 1024 * 1024,
        "mb" => 1_000_000,
        _ => {
            return Err(format!(
                "`{t}` has an unknown unit; use B, KiB, MiB, KB or MB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{t}` is too large"))
}

mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::fmt_duration(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

mod durations {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(d.iter().map(|d| super::fmt_duration(*d)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| super::parse_duration(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

mod bytesize {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(u64),
        Text(String),
    }

    pub(super) fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        if n % (1024 * 1024) == 0 {
            s.serialize_str(&format!("{}MiB", n / (1024 * 1024)))
        } else if n % 1024 == 0 {
            s.serialize_str(&format!("{}KiB", n / 1024))
        } else {
            s.serialize_str(&n.to_string())
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(n),
            Raw::Text(t) => super::parse_size(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = Config::from_toml("", &no_env).expect("defaults are valid");
        assert_eq!(c.prefix, "rebound");
        assert_eq!(c.ingress.body_limit, 256 * 1024);
        assert_eq!(c.ingress.tolerance, Duration::from_secs(300));
        assert_eq!(c.worker.concurrency, 32);
        assert_eq!(
            c.retry.bounce_delays,
            vec![
                Duration::from_secs(300),
                Duration::from_secs(1800),
                Duration::from_secs(7200)
            ]
        );
        assert_eq!(c.retry.max_attempts, 3);
        assert_eq!(c.retry.subject_suffix, " (Retry)");
        assert_eq!(c.forward.max_attempts, 8);
        assert_eq!(c.resend.rate_limit, 10);
    }

    #[test]
    fn durations_and_sizes_parse_in_every_unit() {
        let c = Config::from_toml(
            r#"
            [ingress]
            body_limit = "1MiB"
            tolerance = "90s"
            [retry]
            bounce_delays = ["50ms", "1m", "2h"]
            "#,
            &no_env,
        )
        .expect("valid");
        assert_eq!(c.ingress.body_limit, 1024 * 1024);
        assert_eq!(c.ingress.tolerance, Duration::from_secs(90));
        assert_eq!(c.retry.bounce_delays[0], Duration::from_millis(50));
        assert_eq!(c.retry.bounce_delays[2], Duration::from_secs(7200));
        assert!(parse_duration("300").unwrap_err().contains("no unit"));
        assert_eq!(parse_size("512KB"), Ok(512_000));
        assert!(parse_size("12 parsecs").is_err());
    }

    #[test]
    fn environment_wins_over_the_file() {
        let env = |k: &str| match k {
            "REDIS_URL" => Some("redis://10.0.0.1:6380/2".to_string()),
            "RESEND_WEBHOOK_SECRET" => Some(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
                    .to_string(),
            ),
            "RETRY_MAX_ATTEMPTS" => Some("5".to_string()),
            _ => None,
        };
        let c = Config::from_toml("[redis]\nurl = \"redis://127.0.0.1:1\"\n", &env).expect("valid");
        assert_eq!(c.redis.url.expose(), "redis://10.0.0.1:6380/2");
        assert_eq!(c.ingress.webhook_secrets.len(), 2);
        assert_eq!(c.retry.max_attempts, 5);
        let bad = |k: &str| (k == "RETRY_MAX_ATTEMPTS").then(|| "three".to_string());
        let err = Config::from_toml("", &bad).unwrap_err();
        assert!(format!("{err:#}").contains("RETRY_MAX_ATTEMPTS"));
    }

    #[test]
    fn every_problem_is_reported_on_its_own_line() {
        let err = Config::from_toml(
            r#"
            [ingress]
            listen = "localhost"
            webhook_secrets = ["v1,abc"]
            [worker]
            concurrency = 0
            visibility_timeout = "10s"
            "#,
            &no_env,
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("ingress.listen"), "{msg}");
        assert!(msg.contains("whsec_"), "{msg}");
        assert!(msg.contains("worker.concurrency"), "{msg}");
        assert!(msg.contains("visibility_timeout"), "{msg}");
        assert!(msg.lines().count() >= 4, "{msg}");
    }

    #[test]
    fn unknown_keys_and_bad_units_are_rejected_with_the_line() {
        let err = Config::from_toml("[worker]\nconcurency = 4\n", &no_env).unwrap_err();
        assert!(format!("{err:#}").contains("concurency"));
        let err =
            Config::from_toml("[retry]\nbounce_delays = [\"5 parsecs\"]\n", &no_env).unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    }

    #[test]
    fn secrets_are_masked_everywhere() {
        let env = |k: &str| match k {
            "RESEND_API_KEY" => Some("re_123456789_supersecret".to_string()),
            "REDIS_URL" => Some("redis://:hunter2@redis:6379".to_string()),
            _ => None,
        };
        let c = Config::from_toml("", &env).expect("valid");
        let out = c.to_masked_toml().expect("toml");
        let dbg = format!("{c:?}");
        for text in [&out, &dbg] {
            assert!(!text.contains("supersecret"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
        assert!(out.contains("redis://****@redis:6379"), "{out}");
    }
}
