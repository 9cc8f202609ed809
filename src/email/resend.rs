//! The Resend API client: sends, fetches, and classifies every answer into
//! "retry (and when)" or "give up (and why)".
//!
//! Classification follows Resend's documented errors: a 429 is a rate limit
//! only when its `name` says so; `daily_quota_exceeded` and
//! `monthly_quota_exceeded` share the status but do not clear in seconds, so
//! they wait for the quota window. 5xx, timeouts, connection errors and 409
//! `concurrent_idempotent_requests` are retried; every other 4xx is final.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Script;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::queue::{Queue, QueueError};
use crate::worker::JobError;

/// Sent with every request; Resend answers 403 without a User-Agent.
pub const USER_AGENT: &str = concat!("rebound/", env!("CARGO_PKG_VERSION"));

/// A `{name, value}` tag as the send API takes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tag {
    /// ASCII letters, digits, `_` and `-`, at most 256.
    pub name: String,
    /// Same alphabet.
    pub value: String,
}

/// Body of `POST /emails`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SendRequest {
    /// Sender, `Name <addr>` or `addr`.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// Subject line.
    pub subject: String,
    /// HTML part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// Plain-text part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Custom headers.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub headers: BTreeMap<String, String>,
    /// Tags; come back on every webhook as an object map.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub tags: Vec<Tag>,
}

/// An email as `GET /emails/{id}` returns it (only what rebound uses; other
/// keys are ignored, nulls tolerated).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct RemoteEmail {
    /// Resend's id.
    #[serde(default)]
    pub id: String,
    /// Sender.
    #[serde(default)]
    pub from: String,
    /// Recipients.
    #[serde(default, deserialize_with = "string_or_list")]
    pub to: Vec<String>,
    /// Subject.
    #[serde(default)]
    pub subject: String,
    /// HTML part, if any.
    #[serde(default)]
    pub html: Option<String>,
    /// Text part, if any.
    #[serde(default)]
    pub text: Option<String>,
    /// Tags as `{name, value}`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<Tag>,
}

fn string_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
        Null,
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        Some(Raw::One(s)) => vec![s],
        Some(Raw::Many(v)) => v,
        Some(Raw::Null) | None => Vec::new(),
    })
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Resend's error body.
#[derive(Debug, Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    message: String,
}

/// What went wrong talking to Resend, classified for retrying.
#[derive(Debug, thiserror::Error)]
pub enum ResendError {
    /// 429 `rate_limit_exceeded`: retry after the given time.
    #[error("rate limited by Resend (retry in {retry_after:?})")]
    RateLimited {
        /// From `retry-after` / `ratelimit-reset`.
        retry_after: Duration,
    },
    /// 429 daily or monthly quota: retry when the window resets.
    #[error("Resend {name}: {message}")]
    Quota {
        /// `daily_quota_exceeded` or `monthly_quota_exceeded`.
        name: String,
        /// Resend's message.
        message: String,
        /// Until the quota window resets.
        retry_after: Duration,
    },
    /// 409 `concurrent_idempotent_requests`: the same key is still in flight.
    #[error("Resend is still processing a request with this idempotency key")]
    Concurrent,
    /// 5xx.
    #[error("Resend answered {status} {name}: {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// Error name.
        name: String,
        /// Message.
        message: String,
    },
    /// No answer within `resend.timeout`.
    #[error("request to Resend timed out")]
    Timeout,
    /// Could not connect or the connection broke.
    #[error("cannot reach Resend: {0}")]
    Connect(String),
    /// A 4xx that will not succeed on retry.
    #[error("Resend refused the request: {status} {name}: {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Error name (`validation_error`, `invalid_idempotent_request`, ...).
        name: String,
        /// Message.
        message: String,
    },
    /// A 2xx whose body we cannot read.
    #[error("unexpected answer from Resend: {0}")]
    Protocol(String),
    /// The shared rate limit is used up for this second; not a failure.
    #[error("shared rate limit reached; next slot in {after:?}")]
    Throttled {
        /// Until the next second starts (plus a little spread).
        after: Duration,
    },
    /// The shared rate limiter could not reach Redis.
    #[error("rate limiter: {0}")]
    Limiter(#[from] QueueError),
}

impl ResendError {
    /// How the worker treats it: retry (maybe not before a time) or dead-letter.
    pub fn into_job_error(self) -> JobError {
        let message = self.to_string();
        match self {
            ResendError::RateLimited { retry_after } | ResendError::Quota { retry_after, .. } => {
                JobError::Transient {
                    message,
                    retry_after: Some(retry_after),
                    max_attempts: None,
                }
            }
            ResendError::Rejected { name, .. } => JobError::Permanent {
                reason: if name.is_empty() {
                    "rejected".into()
                } else {
                    name
                },
                message,
            },
            ResendError::Protocol(_) => JobError::Permanent {
                reason: "protocol".into(),
                message,
            },
            // Waiting for our own limit is not an attempt: hand the slot back.
            ResendError::Throttled { after } => JobError::Defer { after },
            ResendError::Concurrent
            | ResendError::Server { .. }
            | ResendError::Timeout
            | ResendError::Connect(_)
            | ResendError::Limiter(_) => JobError::transient(message),
        }
    }
}

/// The Resend API client; cheap to clone.
#[derive(Clone, Debug)]
pub struct ResendClient {
    http: reqwest::Client,
    base: String,
    api_key: String,
    rate_limit: u32,
    queue: Queue,
    limiter: Arc<Script>,
    metrics: Arc<Metrics>,
}

impl ResendClient {
    /// A client for `cfg.resend`, rate-limited through `queue`'s Redis.
    ///
    /// # Errors
    /// The HTTP client cannot be built (TLS backend failure).
    pub fn new(cfg: &Config, queue: Queue, metrics: Arc<Metrics>) -> Result<Self, ResendError> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(cfg.resend.timeout)
            .connect_timeout(cfg.resend.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| ResendError::Connect(e.to_string()))?;
        Ok(Self {
            http,
            base: cfg.resend.api_url.trim_end_matches('/').to_string(),
            api_key: cfg.resend.api_key.expose().to_string(),
            rate_limit: cfg.resend.rate_limit,
            queue,
            limiter: Arc::new(Script::new(include_str!("lua/rate_limit.lua"))),
            metrics,
        })
    }

    /// Takes a slot of the shared per-second limit, or says how long until
    /// the next second. A job does not wait here: it is deferred, so waiting
    /// for the limit neither holds a worker slot nor eats the job's timeout.
    async fn acquire(&self) -> Result<(), ResendError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let key = self.queue.keys().rate_limit(now.as_secs());
        let mut c = self.queue.redis().conn().await?;
        let ok: i64 = self
            .limiter
            .key(key)
            .arg(self.rate_limit)
            .invoke_async(&mut c)
            .await
            .map_err(QueueError::from)?;
        if ok == 1 {
            return Ok(());
        }
        // Spread the retries over the first part of the next second so they
        // do not all come back at its first millisecond.
        let rest = 1000 - u64::from(now.subsec_millis()).min(999);
        let spread = rand::Rng::random_range(&mut rand::rng(), 0..200);
        Err(ResendError::Throttled {
            after: Duration::from_millis(rest + spread),
        })
    }

    /// `POST /emails`; returns Resend's email id.
    ///
    /// # Errors
    /// See [`ResendError`].
    pub async fn send(
        &self,
        req: &SendRequest,
        idempotency_key: &str,
    ) -> Result<String, ResendError> {
        self.acquire().await?;
        let started = Instant::now();
        let r = self
            .http
            .post(format!("{}/emails", self.base))
            .bearer_auth(&self.api_key)
            .header("Idempotency-Key", idempotency_key)
            .json(req)
            .send()
            .await;
        let resp = self.observe("send", started, r).await?;
        #[derive(Deserialize)]
        struct Sent {
            id: String,
        }
        let sent: Sent = resp
            .json()
            .await
            .map_err(|e| ResendError::Protocol(format!("send answer: {e}")))?;
        Ok(sent.id)
    }

    /// `GET /emails/{id}`: the content of an email the app sent itself.
    ///
    /// # Errors
    /// See [`ResendError`].
    pub async fn get(&self, id: &str) -> Result<RemoteEmail, ResendError> {
        self.acquire().await?;
        let started = Instant::now();
        let r = self
            .http
            .get(format!("{}/emails/{}", self.base, urlencode(id)))
            .bearer_auth(&self.api_key)
            .send()
            .await;
        let resp = self.observe("get", started, r).await?;
        resp.json()
            .await
            .map_err(|e| ResendError::Protocol(format!("email answer: {e}")))
    }

    async fn observe(
        &self,
        endpoint: &str,
        started: Instant,
        r: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<reqwest::Response, ResendError> {
        let status = match &r {
            Ok(resp) => resp.status().as_u16().to_string(),
            Err(e) if e.is_timeout() => "timeout".into(),
            Err(_) => "error".into(),
        };
        self.metrics
            .resend_request_duration
            .with_label_values(&[endpoint, &status])
            .observe(started.elapsed().as_secs_f64());
        match r {
            Err(e) if e.is_timeout() => Err(ResendError::Timeout),
            Err(e) => Err(ResendError::Connect(e.to_string())),
            Ok(resp) if resp.status().is_success() => Ok(resp),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let body = resp.text().await.unwrap_or_default();
                Err(classify(status, &headers, &body, SystemTime::now()))
            }
        }
    }
}

fn urlencode(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.~".contains(c) {
                c.to_string()
            } else {
                format!("%{:02X}", c as u32 & 0xff)
            }
        })
        .collect()
}

/// Classifies a non-2xx answer from its status, headers and error body.
pub fn classify(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &str,
    now: SystemTime,
) -> ResendError {
    let err: ErrorBody = serde_json::from_str(body).unwrap_or_default();
    let name = err.name;
    let message = if err.message.is_empty() {
        body.chars().take(200).collect()
    } else {
        err.message
    };
    let header_secs = |n: &str| -> Option<u64> {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|f| f.ceil().max(0.0) as u64)
    };
    match (status, name.as_str()) {
        (429, "daily_quota_exceeded") | (429, "monthly_quota_exceeded") => {
            let window = if name.starts_with("daily") {
                until_next_utc_day(now)
            } else {
                until_next_utc_month(now)
            };
            let hinted = header_secs("retry-after")
                .filter(|s| *s > 60)
                .map(Duration::from_secs);
            ResendError::Quota {
                retry_after: hinted.unwrap_or(window),
                name,
                message,
            }
        }
        (429, _) => {
            let secs = header_secs("retry-after")
                .or_else(|| header_secs("ratelimit-reset"))
                .unwrap_or(1);
            ResendError::RateLimited {
                retry_after: Duration::from_secs(secs.max(1)),
            }
        }
        (409, "concurrent_idempotent_requests") => ResendError::Concurrent,
        (s, _) if s >= 500 => ResendError::Server {
            status,
            name,
            message,
        },
        _ => ResendError::Rejected {
            status,
            name,
            message,
        },
    }
}

fn until_next_utc_day(now: SystemTime) -> Duration {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    Duration::from_secs(86_400 - secs % 86_400 + 60)
}

fn until_next_utc_month(now: SystemTime) -> Duration {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let days = (secs / 86_400) as i64;
    let (y, m, _) = civil_from_days(days);
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let next = days_from_civil(ny, nm, 1) as u64 * 86_400;
    Duration::from_secs(next.saturating_sub(secs) + 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> reqwest::header::HeaderMap {
        let mut m = reqwest::header::HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn rate_limits_honour_retry_after_and_ratelimit_reset() {
        let now = SystemTime::now();
        let body =
            r#"{"statusCode":429,"name":"rate_limit_exceeded","message":"Too many requests"}"#;
        match classify(429, &h(&[("retry-after", "3")]), body, now) {
            ResendError::RateLimited { retry_after } => {
                assert_eq!(retry_after, Duration::from_secs(3))
            }
            e => panic!("{e:?}"),
        }
        match classify(429, &h(&[("ratelimit-reset", "2")]), body, now) {
            ResendError::RateLimited { retry_after } => {
                assert_eq!(retry_after, Duration::from_secs(2))
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn quota_429s_wait_for_the_window_not_seconds() {
        // 2026-11-22T12:00:00Z
        let now = UNIX_EPOCH + Duration::from_secs(1_795_348_800);
        let daily = r#"{"statusCode":429,"name":"daily_quota_exceeded","message":"You have reached your daily email sending quota."}"#;
        match classify(429, &h(&[("retry-after", "1")]), daily, now) {
            ResendError::Quota { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_secs(12 * 3600 + 60))
            }
            e => panic!("{e:?}"),
        }
        let monthly = r#"{"statusCode":429,"name":"monthly_quota_exceeded","message":"quota"}"#;
        match classify(429, &h(&[]), monthly, now) {
            // Until 2026-12-01T00:00Z: 8 days and 12 hours.
            ResendError::Quota { retry_after, .. } => assert_eq!(
                retry_after,
                Duration::from_secs(8 * 86_400 + 12 * 3600 + 60)
            ),
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            classify(429, &h(&[]), daily, now).into_job_error(),
            JobError::Transient { retry_after: Some(d), .. } if d > Duration::from_secs(3600)
        ));
    }

    #[test]
    fn other_answers_are_retried_or_final_as_documented() {
        let now = SystemTime::now();
        assert!(matches!(
            classify(500, &h(&[]), r#"{"name":"application_error"}"#, now).into_job_error(),
            JobError::Transient { .. }
        ));
        assert!(matches!(
            classify(503, &h(&[]), "oops", now).into_job_error(),
            JobError::Transient { .. }
        ));
        assert!(matches!(
            classify(
                409,
                &h(&[]),
                r#"{"name":"concurrent_idempotent_requests"}"#,
                now
            )
            .into_job_error(),
            JobError::Transient { .. }
        ));
        match classify(
            409,
            &h(&[]),
            r#"{"name":"invalid_idempotent_request","message":"same key, other body"}"#,
            now,
        )
        .into_job_error()
        {
            JobError::Permanent { reason, .. } => assert_eq!(reason, "invalid_idempotent_request"),
            e => panic!("{e:?}"),
        }
        match classify(
            422,
            &h(&[]),
            r#"{"statusCode":422,"message":"Missing `to` field.","name":"missing_required_field"}"#,
            now,
        )
        .into_job_error()
        {
            JobError::Permanent { reason, message } => {
                assert_eq!(reason, "missing_required_field");
                assert!(message.contains("Missing `to` field."));
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            classify(403, &h(&[]), r#"{"name":"validation_error"}"#, now).into_job_error(),
            JobError::Permanent { .. }
        ));
        assert!(matches!(
            ResendError::Timeout.into_job_error(),
            JobError::Transient { .. }
        ));
    }

    #[test]
    fn calendar_math_round_trips() {
        for days in [0i64, 59, 365, 10_957, 20_780, 20_819, 36_524] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(20_779), (2026, 11, 22));
    }

    #[test]
    fn remote_emails_tolerate_nulls_and_unknown_keys() {
        let body = r#"{"object":"email","id":"4ef9a417","to":["a@b.c"],"from":"Acme <x@y.z>","created_at":"2026-04-03 22:13:42.674981+00",
            "subject":"Verify","html":"<p>hi</p>","text":null,"bcc":null,"cc":null,"reply_to":null,"last_event":"bounced","tags":null,"new_field":1}"#;
        let e: RemoteEmail = serde_json::from_str(body).unwrap();
        assert_eq!(e.to, vec!["a@b.c"]);
        assert_eq!(e.text, None);
        assert!(e.tags.is_empty());
        let one: RemoteEmail = serde_json::from_str(r#"{"id":"x","to":"a@b.c"}"#).unwrap();
        assert_eq!(one.to, vec!["a@b.c"]);
    }
}
