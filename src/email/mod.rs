//! The email loop: the send API, delivery records, event processing, the
//! plain-text re-send of bounced transactional email, and suppression.
//!
//! A send request becomes a delivery record (`<prefix>:email:<id>`, a hash,
//! with its history in `<prefix>:email:<id>:events`) and an `email.send` job.
//! The worker sends it through Resend with an `Idempotency-Key` derived from
//! the record id (one record per attempt: the original and each re-send), so
//! a job retry after a timeout never sends twice.
//!
//! Resend's events (`resend.event` jobs from the ingress) move the record's
//! status forward. A bounce is judged by type and subtype: transient and
//! general bounces of a re-sendable category (`verification`, `login`,
//! `password_reset`) are re-sent as plain text with an adjusted subject after
//! `retry.bounce_delays`, at most `retry.max_attempts` times per original
//! email; hard bounces and complaints suppress the address instead, and a
//! suppressed address is never mailed again.

pub mod resend;
pub mod text;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use redis::{AsyncCommands as _, Script};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use self::resend::{RemoteEmail, ResendClient, SendRequest, Tag};
use crate::app::Context;
use crate::config::{BounceAction, Config};
use crate::queue::{now_ms, now_rfc3339, Job, QueueError, EMAILS};
use crate::worker::{Handler, JobError};

/// Job kind that sends one delivery record.
pub const SEND: &str = "email.send";

/// How long a send request's idempotency key maps to its record (Resend keeps its own 24 h).
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// What can go wrong in the email loop outside of Resend itself.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    /// The request breaks a rule (422).
    #[error("{0}")]
    Invalid(String),
    /// No such delivery record.
    #[error("email {0} not found")]
    NotFound(String),
    /// Redis failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Resend failed.
    #[error(transparent)]
    Resend(#[from] resend::ResendError),
}

impl From<redis::RedisError> for EmailError {
    fn from(e: redis::RedisError) -> Self {
        EmailError::Queue(QueueError::Redis(e))
    }
}

/// Statuses and their order; the terminal ones end the record's story.
pub fn status_rank(status: &str) -> Option<(u32, bool)> {
    Some(match status {
        "queued" => (1, false),
        "sent" => (2, false),
        "delivery_delayed" => (3, false),
        "delivered" => (4, false),
        "opened" => (5, false),
        "clicked" => (6, false),
        "bounced" | "complained" | "failed" | "suppressed" => (100, true),
        _ => return None,
    })
}

/// The status an event moves a record to, if any.
fn status_of_event(event_type: &str) -> Option<&'static str> {
    Some(match event_type {
        "email.sent" => "sent",
        "email.delivered" => "delivered",
        "email.delivery_delayed" | "email.delivered_delayed" => "delivery_delayed",
        "email.opened" => "opened",
        "email.clicked" => "clicked",
        "email.bounced" => "bounced",
        "email.complained" => "complained",
        "email.failed" => "failed",
        "email.suppressed" => "suppressed",
        _ => return None,
    })
}

/// Decides what a bounce means. Config rules come first (first match wins,
/// `*` matches anything); then the defaults of the design: retry on
/// `Transient`, `Undetermined` and `Permanent/General`; suppress on
/// `Permanent/NoEmail`, `Permanent/Suppressed`,
/// `Permanent/OnAccountSuppressionList`. Any other permanent subtype is
/// recorded only: never retried, never suppressed on a guess.
pub fn bounce_action(cfg: &Config, bounce_type: &str, subtype: &str) -> BounceAction {
    let eq = |pattern: &str, value: &str| pattern == "*" || pattern.eq_ignore_ascii_case(value);
    if let Some(rule) = cfg
        .email
        .bounce_policy
        .iter()
        .find(|r| eq(&r.bounce_type, bounce_type) && eq(&r.subtype, subtype))
    {
        return rule.action;
    }
    match (
        bounce_type.to_ascii_lowercase().as_str(),
        subtype.to_ascii_lowercase().as_str(),
    ) {
        ("transient", _) | ("undetermined", _) => BounceAction::Retry,
        ("permanent", "general") => BounceAction::Retry,
        ("permanent", "noemail" | "suppressed" | "onaccountsuppressionlist") => {
            BounceAction::Suppress
        }
        _ => BounceAction::Ignore,
    }
}

/// A delivery record as stored.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct EmailRecord {
    /// Our id.
    pub id: String,
    /// Recipient.
    pub to: String,
    /// Sender.
    pub from: String,
    /// Subject.
    pub subject: String,
    /// HTML part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// Text part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Category (`verification`, ...), empty when none.
    pub category: String,
    /// Tags sent with it.
    pub tags: Vec<Tag>,
    /// Custom headers.
    pub headers: BTreeMap<String, String>,
    /// Current status.
    pub status: String,
    /// Resend's id once sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    /// When the record was made.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// `api` (sent through rebound), `app` (sent by the app, fetched from Resend), `resend` (a re-send).
    pub origin: String,
    /// For a re-send: the email it re-sends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_id: Option<String>,
    /// 0 for an original, n for its n-th re-send.
    pub attempt: u32,
    /// Re-sends made of this (original) email.
    pub resend_count: u32,
    /// Ids of those re-sends.
    pub resend_ids: Vec<String>,
    /// Last error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl EmailRecord {
    fn from_hash(mut h: HashMap<String, String>) -> Option<Self> {
        let id = h.remove("id")?;
        let mut take = |k: &str| h.remove(k).unwrap_or_default();
        let opt = |s: String| if s.is_empty() { None } else { Some(s) };
        Some(Self {
            id,
            to: take("to"),
            from: take("from"),
            subject: take("subject"),
            html: opt(take("html")),
            text: opt(take("text")),
            category: take("category"),
            tags: serde_json::from_str(&take("tags")).unwrap_or_default(),
            headers: serde_json::from_str(&take("headers")).unwrap_or_default(),
            status: take("status"),
            provider_id: opt(take("provider_id")),
            created_at: take("created_at"),
            updated_at: take("updated_at"),
            origin: take("origin"),
            original_id: opt(take("original_id")),
            attempt: take("attempt").parse().unwrap_or(0),
            resend_count: take("resend_count").parse().unwrap_or(0),
            resend_ids: take("resend_ids")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            error: opt(take("error")),
        })
    }

    fn fields(&self) -> Vec<(String, String)> {
        let (rank, terminal) = status_rank(&self.status).unwrap_or((1, false));
        let mut f = vec![
            ("id".into(), self.id.clone()),
            ("to".into(), self.to.clone()),
            ("from".into(), self.from.clone()),
            ("subject".into(), self.subject.clone()),
            ("html".into(), self.html.clone().unwrap_or_default()),
            ("text".into(), self.text.clone().unwrap_or_default()),
            ("category".into(), self.category.clone()),
            (
                "tags".into(),
                serde_json::to_string(&self.tags).unwrap_or_else(|_| "[]".into()),
            ),
            (
                "headers".into(),
                serde_json::to_string(&self.headers).unwrap_or_else(|_| "{}".into()),
            ),
            ("status".into(), self.status.clone()),
            ("status_rank".into(), rank.to_string()),
            (
                "terminal".into(),
                if terminal { "1".into() } else { "0".into() },
            ),
            ("created_at".into(), self.created_at.clone()),
            ("updated_at".into(), self.updated_at.clone()),
            ("origin".into(), self.origin.clone()),
            ("attempt".into(), self.attempt.to_string()),
            ("resend_count".into(), self.resend_count.to_string()),
        ];
        if let Some(p) = &self.provider_id {
            f.push(("provider_id".into(), p.clone()));
        }
        if let Some(o) = &self.original_id {
            f.push(("original_id".into(), o.clone()));
        }
        f
    }
}

/// A send request as `POST /v1/emails` takes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEmail {
    /// One recipient: a string, or an array holding one string.
    pub to: Value,
    /// Subject.
    pub subject: String,
    /// HTML part.
    #[serde(default)]
    pub html: Option<String>,
    /// Text part.
    #[serde(default)]
    pub text: Option<String>,
    /// Category; re-sends on bounce depend on it.
    #[serde(default)]
    pub category: Option<String>,
    /// Tags: an object map or an array of `{name, value}`.
    #[serde(default)]
    pub tags: Option<Value>,
    /// Custom headers.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Same key, same id, no second send.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Sender; `resend.from` (`EMAIL_FROM`) when absent.
    #[serde(default)]
    pub from: Option<String>,
}

/// Resend's tag alphabet.
fn valid_tag_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `addr` or `Name <addr>` with one `@` and a dotted domain.
pub fn valid_address(s: &str) -> bool {
    let addr = match (s.rfind('<'), s.strip_suffix('>')) {
        (Some(i), Some(_)) => &s[i + 1..s.len() - 1],
        _ => s,
    };
    let Some((local, domain)) = addr.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && addr.len() <= 320
        && !addr.contains(char::is_whitespace)
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
}

/// The bare address of `Name <addr>`, lowercased: the suppression key.
pub fn bare_address(s: &str) -> String {
    let addr = match (s.rfind('<'), s.strip_suffix('>')) {
        (Some(i), Some(_)) => &s[i + 1..s.len() - 1],
        _ => s,
    };
    addr.trim().to_ascii_lowercase()
}

impl NewEmail {
    /// Checks every rule; the error names the first broken one.
    ///
    /// # Errors
    /// [`EmailError::Invalid`] with a message for the caller.
    pub fn validate(&self, cfg: &Config) -> Result<(String, String, Vec<Tag>), EmailError> {
        let inv = |m: &str| Err(EmailError::Invalid(m.to_string()));
        let to = match &self.to {
            Value::String(s) => s.clone(),
            Value::Array(a) if a.len() == 1 => match &a[0] {
                Value::String(s) => s.clone(),
                _ => return inv("`to` must be an email address"),
            },
            Value::Array(_) => {
                return inv("`to` must be exactly one address (send one email per recipient)")
            }
            _ => return inv("`to` must be an email address"),
        };
        if !valid_address(&to) {
            return Err(EmailError::Invalid(format!(
                "`to` is not an email address: `{}`",
                to.chars().take(100).collect::<String>()
            )));
        }
        if self.subject.trim().is_empty() {
            return inv("`subject` must not be empty");
        }
        if self.subject.len() > 998 {
            return inv("`subject` is longer than 998 characters");
        }
        let has = |o: &Option<String>| o.as_deref().is_some_and(|s| !s.trim().is_empty());
        if !has(&self.html) && !has(&self.text) {
            return inv("give `html` or `text` (or both)");
        }
        if let Some(c) = &self.category {
            if !valid_tag_part(c) {
                return inv(
                    "`category` may contain only ASCII letters, digits, `_` and `-` (at most 256)",
                );
            }
        }
        let mut tags = Vec::new();
        match &self.tags {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    let Some(v) = v.as_str() else {
                        return Err(EmailError::Invalid(format!(
                            "tag `{k}` must have a string value"
                        )));
                    };
                    tags.push(Tag {
                        name: k.clone(),
                        value: v.to_string(),
                    });
                }
            }
            Some(Value::Array(a)) => {
                for t in a {
                    let t: Tag = serde_json::from_value(t.clone()).map_err(|_| {
                        EmailError::Invalid(
                            "each tag must be {\"name\": ..., \"value\": ...}".into(),
                        )
                    })?;
                    tags.push(t);
                }
            }
            Some(_) => return inv("`tags` must be an object or an array of {name, value}"),
        }
        for t in &tags {
            if !valid_tag_part(&t.name) || !valid_tag_part(&t.value) {
                return Err(EmailError::Invalid(format!(
                    "tag `{}`: names and values may contain only ASCII letters, digits, `_` and `-` (at most 256)",
                    t.name
                )));
            }
            if t.name == "rebound_id" {
                return inv("the tag name `rebound_id` is reserved");
            }
        }
        if let Some(h) = &self.headers {
            for (k, v) in h {
                if k.is_empty()
                    || !k.chars().all(|c| c.is_ascii_graphic() && c != ':')
                    || v.contains(['\r', '\n'])
                {
                    return Err(EmailError::Invalid(format!(
                        "header `{k}` is not a valid header"
                    )));
                }
            }
        }
        if let Some(k) = &self.idempotency_key {
            if k.is_empty() || k.len() > 256 {
                return inv("`idempotency_key` must be 1 to 256 characters");
            }
        }
        let from = self
            .from
            .clone()
            .filter(|f| !f.trim().is_empty())
            .unwrap_or_else(|| cfg.resend.from.clone());
        if from.trim().is_empty() {
            return inv("no sender: give `from`, or set EMAIL_FROM (resend.from)");
        }
        if !valid_address(&from) {
            return inv("`from` is not an email address");
        }
        Ok((to, from, tags))
    }
}

/// Why an address is suppressed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Suppression {
    /// `bounce`, `complaint`, `resend_suppressed`, `manual`.
    pub reason: String,
    /// Bounce type/subtype or Resend's suppression type, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The email that caused it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_id: Option<String>,
    /// When.
    pub at: String,
}

/// The email loop, shared by the API, the CLI and the handlers.
#[derive(Clone, Debug)]
pub struct EmailService {
    ctx: Context,
    client: ResendClient,
    scripts: Arc<EmailScripts>,
}

#[derive(Debug)]
struct EmailScripts {
    create: Script,
    event: Script,
    resend: Script,
}

/// What `create` did.
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    /// The record id (the first one, for a repeated idempotency key).
    pub id: String,
    /// Its status now.
    pub status: String,
    /// False when an earlier request with the same key created it.
    #[serde(skip)]
    pub new: bool,
}

impl EmailService {
    /// The service over `ctx`.
    ///
    /// # Errors
    /// The Resend client cannot be built.
    pub fn new(ctx: Context) -> Result<Self, EmailError> {
        let client = ResendClient::new(&ctx.cfg, ctx.queue.clone(), ctx.metrics.clone())?;
        Ok(Self {
            ctx,
            client,
            scripts: Arc::new(EmailScripts {
                create: Script::new(include_str!("lua/create_email.lua")),
                event: Script::new(include_str!("lua/email_event.lua")),
                resend: Script::new(include_str!("lua/schedule_resend.lua")),
            }),
        })
    }

    fn history(kind: &str, detail: Value) -> String {
        serde_json::json!({ "at": now_rfc3339(), "type": kind, "detail": detail }).to_string()
    }

    /// Accepts a send request: a record and a queued send, or, for a
    /// suppressed recipient, a record marked `suppressed` and no send.
    ///
    /// # Errors
    /// Validation or Redis.
    pub async fn create(&self, req: NewEmail) -> Result<Created, EmailError> {
        let cfg = &self.ctx.cfg;
        let (to, from, tags) = req.validate(cfg)?;
        let id = uuid::Uuid::now_v7().to_string();
        let suppressed = self.suppression(&to).await?;
        let status = if suppressed.is_some() {
            "suppressed"
        } else {
            "queued"
        };
        let now = now_rfc3339();
        let record = EmailRecord {
            id: id.clone(),
            to: to.clone(),
            from,
            subject: req.subject.clone(),
            html: req.html.clone().filter(|s| !s.is_empty()),
            text: req.text.clone().filter(|s| !s.is_empty()),
            category: req.category.clone().unwrap_or_default(),
            tags,
            headers: req.headers.clone().unwrap_or_default(),
            status: status.into(),
            created_at: now.clone(),
            updated_at: now,
            origin: "api".into(),
            ..Default::default()
        };
        let envelope = if suppressed.is_some() {
            String::new()
        } else {
            let mut job = Job::new(
                EMAILS,
                SEND,
                cfg.retry.job_max_attempts,
                serde_json::json!({ "email_id": id }),
            );
            job.source = Some("api".into());
            serde_json::to_string(&job).map_err(QueueError::from)?
        };
        let first = match &suppressed {
            Some(s) => Self::history(
                "suppressed",
                serde_json::json!({ "reason": "recipient is suppressed", "suppression": s }),
            ),
            None => Self::history("queued", Value::Null),
        };
        let idem = req.idempotency_key.clone().filter(|k| !k.is_empty());
        let (new, rid) = self
            .insert_record(&record, idem.as_deref(), &envelope, first)
            .await?;
        if new {
            if suppressed.is_some() {
                tracing::info!(email = %rid, "send request for a suppressed recipient recorded, not sent");
            }
            return Ok(Created {
                id: rid,
                status: status.into(),
                new: true,
            });
        }
        let existing = self.get(&rid).await?;
        Ok(Created {
            id: rid,
            status: existing.status,
            new: false,
        })
    }

    /// Stores a new record (and queues `envelope` unless it is empty) in one
    /// call. With `idempotency`, a key seen before returns the first record's
    /// id and stores nothing: `(false, that id)`.
    async fn insert_record(
        &self,
        record: &EmailRecord,
        idempotency: Option<&str>,
        envelope: &str,
        first_history: String,
    ) -> Result<(bool, String), EmailError> {
        let keys = self.ctx.queue.keys();
        let id = &record.id;
        let mut inv = self
            .scripts
            .create
            .key(keys.idempotency(idempotency.unwrap_or(id)));
        inv.key(keys.email(id))
            .key(keys.email_events(id))
            .key(keys.email_index())
            .key(keys.stream(EMAILS))
            .arg(if idempotency.is_some() { "1" } else { "0" })
            .arg(id)
            .arg(now_ms())
            .arg(envelope)
            .arg(IDEMPOTENCY_TTL.as_secs())
            .arg(first_history)
            .arg(self.ctx.cfg.email.max_records)
            .arg(keys.base());
        for (k, v) in record.fields() {
            inv.arg(k).arg(v);
        }
        let mut c = self.ctx.queue.redis().conn().await?;
        let (new, rid): (i64, String) = inv.invoke_async(&mut c).await?;
        Ok((new == 1, rid))
    }

    /// One delivery record.
    ///
    /// # Errors
    /// [`EmailError::NotFound`] or Redis.
    pub async fn get(&self, id: &str) -> Result<EmailRecord, EmailError> {
        let mut c = self.ctx.queue.redis().conn().await?;
        let h: HashMap<String, String> = c.hgetall(self.ctx.queue.keys().email(id)).await?;
        EmailRecord::from_hash(h).ok_or_else(|| EmailError::NotFound(id.to_string()))
    }

    /// A record with its history and re-sends, for `GET /v1/emails/{id}`.
    ///
    /// # Errors
    /// [`EmailError::NotFound`] or Redis.
    pub async fn detail(&self, id: &str) -> Result<Value, EmailError> {
        let rec = self.get(id).await?;
        let mut c = self.ctx.queue.redis().conn().await?;
        let events: Vec<String> = c
            .lrange(self.ctx.queue.keys().email_events(id), 0, -1)
            .await?;
        let events: Vec<Value> = events
            .iter()
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect();
        let mut resends = Vec::new();
        for rid in &rec.resend_ids {
            if let Ok(r) = self.get(rid).await {
                resends.push(serde_json::json!({ "id": r.id, "attempt": r.attempt, "status": r.status, "subject": r.subject, "created_at": r.created_at }));
            }
        }
        let mut v = serde_json::to_value(&rec).unwrap_or_default();
        v["events"] = Value::Array(events);
        v["resends"] = Value::Array(resends);
        Ok(v)
    }

    /// Records, newest first, filtered; `cursor` is the last id of the previous page.
    ///
    /// # Errors
    /// Redis.
    pub async fn list(
        &self,
        status: Option<&str>,
        category: Option<&str>,
        to: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<EmailRecord>, Option<String>), EmailError> {
        let keys = self.ctx.queue.keys();
        let mut c = self.ctx.queue.redis().conn().await?;
        let mut start: isize = match cursor {
            Some(cur) => match c
                .zrevrank::<_, _, Option<isize>>(keys.email_index(), cur)
                .await?
            {
                Some(r) => r + 1,
                None => return Err(EmailError::Invalid("unknown cursor".into())),
            },
            None => 0,
        };
        let to = to.map(bare_address);
        let mut out = Vec::new();
        const PAGE: isize = 200;
        loop {
            let ids: Vec<String> = c
                .zrevrange(keys.email_index(), start, start + PAGE - 1)
                .await?;
            if ids.is_empty() {
                return Ok((out, None));
            }
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.hgetall(keys.email(id));
            }
            let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut c).await?;
            for (i, h) in hashes.into_iter().enumerate() {
                let Some(mut r) = EmailRecord::from_hash(h) else {
                    continue;
                };
                let keep = status.is_none_or(|s| r.status == s)
                    && category.is_none_or(|cat| r.category == cat)
                    && to.as_deref().is_none_or(|t| bare_address(&r.to) == t);
                if keep {
                    r.html = None;
                    r.text = None;
                    out.push(r);
                    if out.len() >= limit {
                        let more = (i + 1) < ids.len() || ids.len() as isize == PAGE;
                        let next = more.then(|| out.last().map(|r| r.id.clone())).flatten();
                        return Ok((out, next));
                    }
                }
            }
            start += PAGE;
        }
    }

    /// Records an event on `id` and moves its status forward.
    async fn record_event(
        &self,
        id: &str,
        status: Option<&str>,
        history: String,
        extra: &[(&str, String)],
    ) -> Result<i64, EmailError> {
        let keys = self.ctx.queue.keys();
        let (rank, terminal) = status.and_then(status_rank).unwrap_or((0, false));
        let mut inv = self.scripts.event.key(keys.email(id));
        inv.key(keys.email_events(id))
            .arg(status.unwrap_or(""))
            .arg(rank)
            .arg(if terminal { "1" } else { "0" })
            .arg(history)
            .arg(now_rfc3339());
        for (k, v) in extra {
            inv.arg(*k).arg(v);
        }
        let mut c = self.ctx.queue.redis().conn().await?;
        Ok(inv.invoke_async(&mut c).await?)
    }

    /// The suppression of `address`, if any.
    ///
    /// # Errors
    /// Redis.
    pub async fn suppression(&self, address: &str) -> Result<Option<Suppression>, EmailError> {
        let mut c = self.ctx.queue.redis().conn().await?;
        let v: Option<String> = c
            .hget(self.ctx.queue.keys().suppressed(), bare_address(address))
            .await?;
        Ok(v.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// Suppresses `address`; returns false when it already was.
    ///
    /// # Errors
    /// Redis.
    pub async fn suppress(
        &self,
        address: &str,
        reason: &str,
        detail: &str,
        email_id: Option<&str>,
    ) -> Result<bool, EmailError> {
        let s = Suppression {
            reason: reason.into(),
            detail: detail.into(),
            email_id: email_id.map(str::to_string),
            at: now_rfc3339(),
        };
        let mut c = self.ctx.queue.redis().conn().await?;
        let new: bool = c
            .hset_nx(
                self.ctx.queue.keys().suppressed(),
                bare_address(address),
                serde_json::to_string(&s).unwrap_or_default(),
            )
            .await?;
        if new {
            self.ctx
                .metrics
                .suppressions
                .with_label_values(&[reason])
                .inc();
            tracing::info!(reason, detail, "recipient suppressed");
        }
        Ok(new)
    }

    /// Lifts the suppression of `address`; returns false when there was none.
    ///
    /// # Errors
    /// Redis.
    pub async fn unsuppress(&self, address: &str) -> Result<bool, EmailError> {
        let mut c = self.ctx.queue.redis().conn().await?;
        let n: i64 = c
            .hdel(self.ctx.queue.keys().suppressed(), bare_address(address))
            .await?;
        Ok(n > 0)
    }

    /// Every suppressed address, sorted.
    ///
    /// # Errors
    /// Redis.
    pub async fn suppressions(&self) -> Result<Vec<(String, Suppression)>, EmailError> {
        let mut c = self.ctx.queue.redis().conn().await?;
        let all: HashMap<String, String> = c.hgetall(self.ctx.queue.keys().suppressed()).await?;
        let mut v: Vec<(String, Suppression)> = all
            .into_iter()
            .filter_map(|(k, s)| serde_json::from_str(&s).ok().map(|s| (k, s)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(v)
    }

    /// Sends one record (the `email.send` job). Idempotent: a record already
    /// sent is not sent again, and the Idempotency-Key covers a retry after a
    /// lost answer.
    async fn send(&self, email_id: &str) -> Result<(), JobError> {
        let rec = match self.get(email_id).await {
            Ok(r) => r,
            Err(EmailError::NotFound(_)) => {
                return Err(JobError::Permanent {
                    reason: "not_found".into(),
                    message: format!("email {email_id} has no record"),
                })
            }
            Err(e) => return Err(JobError::transient(e.to_string())),
        };
        if rec.provider_id.is_some() || status_rank(&rec.status).is_some_and(|(_, t)| t) {
            return Ok(());
        }
        match self.suppression(&rec.to).await {
            Ok(Some(s)) => {
                let h = Self::history(
                    "suppressed",
                    serde_json::json!({ "reason": "recipient is suppressed", "suppression": s }),
                );
                self.record_event(&rec.id, Some("suppressed"), h, &[])
                    .await
                    .map_err(|e| JobError::transient(e.to_string()))?;
                tracing::info!(email = %rec.id, "recipient suppressed: send skipped");
                return Ok(());
            }
            Ok(None) => {}
            Err(e) => return Err(JobError::transient(e.to_string())),
        }
        let mut tags = rec.tags.clone();
        tags.push(Tag {
            name: "rebound_id".into(),
            value: rec.id.clone(),
        });
        if !rec.category.is_empty() && !tags.iter().any(|t| t.name == "category") {
            tags.push(Tag {
                name: "category".into(),
                value: rec.category.clone(),
            });
        }
        let req = SendRequest {
            from: rec.from.clone(),
            to: vec![rec.to.clone()],
            subject: rec.subject.clone(),
            html: rec.html.clone(),
            text: rec.text.clone(),
            headers: rec.headers.clone(),
            tags,
        };
        // One record per attempt (original, re-send 1, 2, ...), so the key is
        // stable across job retries and distinct across re-sends.
        let key = format!("rebound-{}", rec.id);
        match self.client.send(&req, &key).await {
            Ok(provider_id) => {
                let mut c = self
                    .ctx
                    .queue
                    .redis()
                    .conn()
                    .await
                    .map_err(|e| JobError::transient(e.to_string()))?;
                let _: () = c
                    .hset(self.ctx.queue.keys().provider_map(), &provider_id, &rec.id)
                    .await
                    .map_err(|e| JobError::transient(e.to_string()))?;
                let h = Self::history("sent", serde_json::json!({ "provider_id": provider_id }));
                self.record_event(
                    &rec.id,
                    Some("sent"),
                    h,
                    &[("provider_id", provider_id.clone())],
                )
                .await
                .map_err(|e| JobError::transient(e.to_string()))?;
                let category = if rec.category.is_empty() {
                    "none"
                } else {
                    rec.category.as_str()
                };
                self.ctx
                    .metrics
                    .emails_sent
                    .with_label_values(&[category, &(rec.attempt + 1).to_string()])
                    .inc();
                tracing::info!(email = %rec.id, provider_id, attempt = rec.attempt, "sent");
                Ok(())
            }
            Err(e) => {
                let je = e.into_job_error();
                if let JobError::Permanent { reason, message } = &je {
                    let h = Self::history(
                        "failed",
                        serde_json::json!({ "reason": reason, "error": message }),
                    );
                    let _ = self
                        .record_event(&rec.id, Some("failed"), h, &[("error", message.clone())])
                        .await;
                }
                Err(je)
            }
        }
    }

    /// Finds our record for a provider event: by the `rebound_id` tag, then by
    /// the provider id map.
    async fn find_record(&self, data: &Value) -> Result<Option<EmailRecord>, EmailError> {
        if let Some(id) = data
            .get("tags")
            .and_then(|t| t.get("rebound_id"))
            .and_then(Value::as_str)
        {
            if let Ok(r) = self.get(id).await {
                return Ok(Some(r));
            }
        }
        let Some(pid) = data.get("email_id").and_then(Value::as_str) else {
            return Ok(None);
        };
        let mut c = self.ctx.queue.redis().conn().await?;
        let id: Option<String> = c.hget(self.ctx.queue.keys().provider_map(), pid).await?;
        match id {
            Some(id) => match self.get(&id).await {
                Ok(r) => Ok(Some(r)),
                Err(EmailError::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            },
            None => Ok(None),
        }
    }

    /// Makes a record for an email the app sent to Resend itself, from
    /// Resend's `GET /emails/{id}`, so that it can be re-sent.
    async fn adopt(&self, provider_id: &str, data: &Value) -> Result<EmailRecord, EmailError> {
        let remote: RemoteEmail = self.client.get(provider_id).await?;
        let tag_category = remote
            .tags
            .iter()
            .find(|t| t.name == "category")
            .map(|t| t.value.clone());
        let event_category = data
            .get("tags")
            .and_then(|t| t.get("category"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let subject = if remote.subject.is_empty() {
            data.get("subject")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        } else {
            remote.subject.clone()
        };
        let category = tag_category
            .or(event_category)
            .unwrap_or_else(|| self.category_from_subject(&subject));
        let to = remote
            .to
            .first()
            .cloned()
            .or_else(|| {
                data.get("to")
                    .and_then(|t| t.get(0))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_rfc3339();
        let rec = EmailRecord {
            id: id.clone(),
            to,
            from: if remote.from.is_empty() {
                data.get("from")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            } else {
                remote.from.clone()
            },
            subject,
            html: remote.html.clone().filter(|s| !s.is_empty()),
            text: remote.text.clone().filter(|s| !s.is_empty()),
            category,
            tags: remote
                .tags
                .into_iter()
                .filter(|t| t.name != "rebound_id")
                .collect(),
            status: "sent".into(),
            provider_id: Some(provider_id.to_string()),
            created_at: now.clone(),
            updated_at: now,
            origin: "app".into(),
            ..Default::default()
        };
        let keys = self.ctx.queue.keys();
        let adopted = Self::history(
            "adopted",
            serde_json::json!({ "provider_id": provider_id, "note": "sent by the app directly; content fetched from Resend" }),
        );
        let (new, rid) = self
            .insert_record(&rec, Some(&format!("provider:{provider_id}")), "", adopted)
            .await?;
        let mut c = self.ctx.queue.redis().conn().await?;
        let _: () = c.hset(keys.provider_map(), provider_id, &rid).await?;
        if new {
            tracing::info!(email = %rid, provider_id, category = %rec.category, "adopted an email the app sent itself");
            Ok(rec)
        } else {
            self.get(&rid).await
        }
    }

    fn category_from_subject(&self, subject: &str) -> String {
        let s = subject.to_lowercase();
        self.ctx
            .cfg
            .email
            .subject_rules
            .iter()
            .find(|r| s.contains(&r.contains.to_lowercase()))
            .map(|r| r.category.clone())
            .unwrap_or_default()
    }

    /// Processes one Resend event (the `resend.event` job).
    async fn handle_event(&self, job: &Job) -> Result<(), EmailError> {
        let event = &job.payload["event"];
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
        let data = event.get("data").cloned().unwrap_or(Value::Null);
        if !kind.starts_with("email.") || kind == "email.received" {
            return Ok(()); // contact.*, domain.*, inbound mail: counted at the ingress, nothing to do here.
        }
        let recipients: Vec<String> = match data.get("to") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        let mut record = self.find_record(&data).await?;
        let detail = serde_json::json!({ "message_id": job.payload["message_id"], "created_at": event.get("created_at") });
        match kind {
            "email.bounced" => {
                let bounce = data.get("bounce").cloned().unwrap_or(Value::Null);
                let btype = bounce
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("Undetermined")
                    .to_string();
                let sub = bounce
                    .get("subType")
                    .and_then(Value::as_str)
                    .unwrap_or("Undetermined")
                    .to_string();
                self.ctx
                    .metrics
                    .bounces
                    .with_label_values(&[&btype, &sub])
                    .inc();
                let action = bounce_action(&self.ctx.cfg, &btype, &sub);
                if action == BounceAction::Retry && record.is_none() {
                    if let Some(pid) = data.get("email_id").and_then(Value::as_str) {
                        record = Some(self.adopt(pid, &data).await?);
                    }
                }
                let h = Self::history(
                    "email.bounced",
                    serde_json::json!({ "type": btype, "subType": sub, "message": bounce.get("message"), "action": format!("{action:?}").to_lowercase(), "event": detail }),
                );
                if let Some(r) = &record {
                    self.record_event(&r.id, Some("bounced"), h, &[]).await?;
                }
                match action {
                    BounceAction::Suppress => {
                        for to in &recipients {
                            self.suppress(
                                to,
                                "bounce",
                                &format!("{btype}/{sub}"),
                                record.as_ref().map(|r| r.id.as_str()),
                            )
                            .await?;
                        }
                    }
                    BounceAction::Retry => {
                        if let Some(r) = &record {
                            self.schedule_resend(r).await?;
                        }
                    }
                    BounceAction::Ignore => {}
                }
            }
            "email.complained" => {
                for to in &recipients {
                    self.suppress(to, "complaint", "", record.as_ref().map(|r| r.id.as_str()))
                        .await?;
                }
                if let Some(r) = &record {
                    self.record_event(&r.id, Some("complained"), Self::history(kind, detail), &[])
                        .await?;
                }
            }
            "email.suppressed" => {
                let s = data.get("suppressed").cloned().unwrap_or(Value::Null);
                let why = [s.get("type"), s.get("reason")]
                    .iter()
                    .filter_map(|v| v.and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("/");
                for to in &recipients {
                    self.suppress(
                        to,
                        "resend_suppressed",
                        &why,
                        record.as_ref().map(|r| r.id.as_str()),
                    )
                    .await?;
                }
                if let Some(r) = &record {
                    self.record_event(
                        &r.id,
                        Some("suppressed"),
                        Self::history(
                            kind,
                            serde_json::json!({ "suppressed": s, "event": detail }),
                        ),
                        &[],
                    )
                    .await?;
                }
            }
            _ => {
                if let Some(r) = &record {
                    let mut d = detail;
                    if let Some(f) = data.get("failed") {
                        d["failed"] = f.clone();
                    }
                    if let Some(c) = data.get("click") {
                        d["click"] = c.clone();
                    }
                    self.record_event(&r.id, status_of_event(kind), Self::history(kind, d), &[])
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Schedules the next plain-text re-send of `bounced` (an original or a
    /// re-send of one), if its category is re-sendable and attempts are left.
    async fn schedule_resend(&self, bounced: &EmailRecord) -> Result<(), EmailError> {
        let cfg = &self.ctx.cfg;
        let original = match &bounced.original_id {
            Some(oid) => self.get(oid).await?,
            None => bounced.clone(),
        };
        if !cfg.retry.categories.contains(&original.category) {
            tracing::info!(email = %bounced.id, category = %original.category, "bounced; category is not re-sent");
            return Ok(());
        }
        let keys = self.ctx.queue.keys();
        let text = match (&original.text, &original.html) {
            (Some(t), _) if !t.trim().is_empty() => t.clone(),
            (_, Some(h)) => text::html_to_text(h),
            _ => String::new(),
        };
        let mut seen = original.resend_count;
        for _ in 0..5 {
            let n = seen + 1;
            let delay = cfg
                .retry
                .bounce_delays
                .get(n as usize - 1)
                .or(cfg.retry.bounce_delays.last())
                .copied()
                .unwrap_or(Duration::from_secs(300));
            let id = uuid::Uuid::now_v7().to_string();
            let now = now_rfc3339();
            let rec = EmailRecord {
                id: id.clone(),
                to: original.to.clone(),
                from: original.from.clone(),
                subject: format!("{}{}", original.subject, cfg.retry.subject_suffix),
                html: None,
                text: Some(text.clone()),
                category: original.category.clone(),
                tags: original.tags.clone(),
                headers: original.headers.clone(),
                status: "queued".into(),
                created_at: now.clone(),
                updated_at: now,
                origin: "resend".into(),
                original_id: Some(original.id.clone()),
                attempt: n,
                ..Default::default()
            };
            let mut job = Job::new(
                EMAILS,
                SEND,
                cfg.retry.job_max_attempts,
                serde_json::json!({ "email_id": id }),
            );
            job.source = Some("resend".into());
            let due = now_ms() + delay.as_millis() as i64;
            let mut inv = self.scripts.resend.key(keys.email(&bounced.id));
            inv.key(keys.email(&original.id))
                .key(keys.email(&id))
                .key(keys.email_events(&id))
                .key(keys.email_index())
                .key(keys.retry())
                .key(keys.job(&job.id))
                .key(keys.email_events(&original.id))
                .arg(seen)
                .arg(cfg.retry.max_attempts)
                .arg(&id)
                .arg(now_ms())
                .arg(serde_json::to_string(&job).map_err(QueueError::from)?)
                .arg(due)
                .arg(&job.id)
                .arg(Self::history("queued", serde_json::json!({ "resend_of": original.id, "attempt": n, "bounced": bounced.id, "delay": crate::config::fmt_duration(delay) })))
                .arg(Self::history("resend_scheduled", serde_json::json!({ "resend_id": id, "attempt": n, "delay": crate::config::fmt_duration(delay) })));
            for (k, v) in rec.fields() {
                inv.arg(k).arg(v);
            }
            let mut c = self.ctx.queue.redis().conn().await?;
            let r: Vec<Value> = inv
                .invoke_async::<redis::Value>(&mut c)
                .await
                .map(redis_to_json)?;
            let scheduled = r.first().and_then(Value::as_i64) == Some(1);
            let why = r.get(1).and_then(Value::as_str).unwrap_or("");
            if scheduled {
                tracing::info!(original = %original.id, resend = %id, attempt = n, delay = ?delay, "plain-text re-send scheduled");
                return Ok(());
            }
            match why {
                "duplicate" => return Ok(()),
                "exhausted" => {
                    tracing::info!(original = %original.id, max = cfg.retry.max_attempts, "bounced again; no re-sends left");
                    let h = Self::history(
                        "resends_exhausted",
                        serde_json::json!({ "max_attempts": cfg.retry.max_attempts }),
                    );
                    self.record_event(&original.id, None, h, &[]).await?;
                    return Ok(());
                }
                _ => {
                    seen = r.get(2).and_then(Value::as_i64).unwrap_or(seen as i64 + 1) as u32;
                }
            }
        }
        Err(EmailError::Invalid(
            "re-send scheduling kept conflicting".into(),
        ))
    }
}

fn redis_to_json(v: redis::Value) -> Vec<Value> {
    match v {
        redis::Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                redis::Value::Int(n) => Value::from(n),
                redis::Value::BulkString(b) => {
                    Value::from(String::from_utf8_lossy(&b).into_owned())
                }
                redis::Value::SimpleString(s) => Value::from(s),
                _ => Value::Null,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Sends delivery records (`email.send`).
#[derive(Debug)]
pub struct SendHandler(pub Arc<EmailService>);

impl Handler for SendHandler {
    fn handle<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let Some(id) = job.payload.get("email_id").and_then(Value::as_str) else {
                return Err(JobError::Permanent {
                    reason: "invalid_payload".into(),
                    message: "email.send job without email_id".into(),
                });
            };
            self.0.send(id).await
        })
    }
}

/// Processes Resend events (`resend.event`).
#[derive(Debug)]
pub struct EventHandler(pub Arc<EmailService>);

impl Handler for EventHandler {
    fn handle<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            self.0.handle_event(job).await.map_err(|e| match e {
                EmailError::Resend(r) => r.into_job_error(),
                other => JobError::transient(other.to_string()),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::from_toml("[resend]\nfrom = \"Acme <no-reply@acme.test>\"\n", &|_| {
            None
        })
        .unwrap()
    }

    #[test]
    fn default_bounce_policy_follows_the_design() {
        let c = cfg();
        assert_eq!(
            bounce_action(&c, "Transient", "MailboxFull"),
            BounceAction::Retry
        );
        assert_eq!(
            bounce_action(&c, "Undetermined", "Undetermined"),
            BounceAction::Retry
        );
        assert_eq!(
            bounce_action(&c, "Permanent", "General"),
            BounceAction::Retry
        );
        assert_eq!(
            bounce_action(&c, "Permanent", "NoEmail"),
            BounceAction::Suppress
        );
        assert_eq!(
            bounce_action(&c, "Permanent", "Suppressed"),
            BounceAction::Suppress
        );
        assert_eq!(
            bounce_action(&c, "Permanent", "OnAccountSuppressionList"),
            BounceAction::Suppress
        );
        assert_eq!(
            bounce_action(&c, "Permanent", "MessageRejected"),
            BounceAction::Ignore
        );
    }

    #[test]
    fn config_rules_override_the_policy() {
        let c = Config::from_toml(
            r#"
            [[email.bounce_policy]]
            type = "Permanent"
            subtype = "General"
            action = "suppress"
            [[email.bounce_policy]]
            type = "Transient"
            action = "ignore"
            "#,
            &|_| None,
        )
        .unwrap();
        assert_eq!(
            bounce_action(&c, "Permanent", "General"),
            BounceAction::Suppress
        );
        assert_eq!(
            bounce_action(&c, "Transient", "MailboxFull"),
            BounceAction::Ignore
        );
        assert_eq!(
            bounce_action(&c, "Permanent", "NoEmail"),
            BounceAction::Suppress
        );
    }

    #[test]
    fn statuses_only_move_forward() {
        assert!(status_rank("delivered").unwrap().0 > status_rank("sent").unwrap().0);
        assert!(status_rank("clicked").unwrap().0 > status_rank("opened").unwrap().0);
        assert!(status_rank("bounced").unwrap().1);
        assert!(!status_rank("opened").unwrap().1);
        assert_eq!(
            status_of_event("email.delivered_delayed"),
            Some("delivery_delayed")
        );
        assert_eq!(status_of_event("contact.created"), None);
    }

    fn req(v: Value) -> Result<(String, String, Vec<Tag>), EmailError> {
        let n: NewEmail =
            serde_json::from_value(v).map_err(|e| EmailError::Invalid(e.to_string()))?;
        n.validate(&cfg())
    }

    #[test]
    fn send_requests_are_validated_with_clear_messages() {
        let ok = req(
            serde_json::json!({"to": "ada@example.com", "subject": "Verify", "html": "<p>x</p>", "category": "verification", "tags": {"campaign": "signup-2"}}),
        );
        let (to, from, tags) = ok.unwrap();
        assert_eq!(to, "ada@example.com");
        assert_eq!(from, "Acme <no-reply@acme.test>");
        assert_eq!(
            tags,
            vec![Tag {
                name: "campaign".into(),
                value: "signup-2".into()
            }]
        );
        let bad = |v: Value, needle: &str| {
            let e = req(v).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should mention {needle}");
        };
        bad(
            serde_json::json!({"to": "not-an-address", "subject": "x", "text": "y"}),
            "`to`",
        );
        bad(
            serde_json::json!({"to": ["a@b.co", "c@d.co"], "subject": "x", "text": "y"}),
            "exactly one",
        );
        bad(
            serde_json::json!({"to": "a@b.co", "subject": " ", "text": "y"}),
            "subject",
        );
        bad(serde_json::json!({"to": "a@b.co", "subject": "x"}), "html");
        bad(
            serde_json::json!({"to": "a@b.co", "subject": "x", "text": "y", "category": "pass word"}),
            "category",
        );
        bad(
            serde_json::json!({"to": "a@b.co", "subject": "x", "text": "y", "tags": {"bad tag": "v"}}),
            "tag",
        );
        bad(
            serde_json::json!({"to": "a@b.co", "subject": "x", "text": "y", "idempotency_key": ""}),
            "idempotency_key",
        );
        bad(
            serde_json::json!({"to": "a@b.co", "subject": "x", "text": "y", "headers": {"X-Bad": "a\r\nBcc: evil@x.y"}}),
            "header",
        );
        bad(
            serde_json::json!({"to": "a@b.co", "subject": "x", "text": "y", "cc": "z@z.zz"}),
            "unknown field",
        );
        assert!(req(serde_json::json!({"to": ["Ada <ada@example.com>"], "subject": "x", "text": "y", "tags": [{"name": "a", "value": "b"}]})).is_ok());
    }

    #[test]
    fn addresses_and_their_suppression_keys() {
        assert!(valid_address("Ada Lovelace <Ada@Example.com>"));
        assert!(valid_address("user+nomail@resend.dev"));
        assert!(!valid_address("a@b"));
        assert!(!valid_address("a b@c.de"));
        assert!(!valid_address("@c.de"));
        assert_eq!(bare_address("Ada <Ada@Example.COM>"), "ada@example.com");
    }
}
