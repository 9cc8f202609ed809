//! The HTTP side: signed webhooks in, the admin API, and one place that turns
//! errors into HTTP answers.
//!
//! A webhook is answered 200 only after Redis confirmed the write: verify the
//! raw body, then one Lua call that dedupes on the message id and appends the
//! job, then reply. A duplicate (the sender retrying a message we already
//! have) gets 200 and creates no second job. When Redis is down the answer
//! is 503, so Svix keeps the event and retries it later: nothing accepted is
//! ever lost, and nothing is accepted that is not stored.

pub mod emails;
pub mod signature;
pub mod subscriptions;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt as _};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use self::signature::{now_secs, verify_hex_hmac, SignatureError, Verifier, WebhookHeaders};
use crate::app::Context;
use crate::config::{SourceConfig, SourceVerify};
use crate::queue::{QueueError, EVENTS};

/// Job kind of a Resend event.
pub const RESEND_EVENT: &str = "resend.event";
/// Job kind of an event from an `[[ingress.sources]]` sender.
pub const SOURCE_EVENT: &str = "source.event";

/// Everything the HTTP side can answer with besides success.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// A required header is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header is present but unusable.
    #[error("invalid header {0}")]
    InvalidHeader(&'static str),
    /// No signature matches a configured secret.
    #[error("signature does not match any configured secret")]
    BadSignature,
    /// The signed timestamp is outside the tolerance.
    #[error("timestamp outside the accepted window: {0}")]
    StaleTimestamp(&'static str),
    /// Verified, but not an event we can read.
    #[error("{0}")]
    Malformed(String),
    /// Body over `ingress.body_limit` (0 when the limit is not known here).
    #[error("body larger than the limit ({0} bytes)")]
    TooLarge(u64),
    /// Redis did not take the write; the sender should retry.
    #[error("storage unavailable, retry later")]
    Unavailable,
    /// Missing or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// `/v1/*` without `REBOUND_API_KEY` configured.
    #[error("the API is disabled: set REBOUND_API_KEY (ingress.api_key)")]
    ApiDisabled,
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// A request that parses but breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// A request that does not parse.
    #[error("{0}")]
    BadRequest(String),
    /// The resource exists already.
    #[error("{0}")]
    Conflict(String),
    /// Something that is our fault.
    #[error("internal error")]
    Internal,
}

impl warp::reject::Reject for IngressError {}

impl IngressError {
    /// HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        use IngressError::*;
        match self {
            MissingHeader(_) | InvalidHeader(_) | Malformed(_) | BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            BadSignature | StaleTimestamp(_) | Unauthorized => StatusCode::UNAUTHORIZED,
            ApiDisabled => StatusCode::FORBIDDEN,
            NotFound(_) => StatusCode::NOT_FOUND,
            TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Conflict(_) => StatusCode::CONFLICT,
            Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Machine-readable code: the `error` field and the metric outcome.
    pub fn code(&self) -> &'static str {
        use IngressError::*;
        match self {
            MissingHeader(_) => "missing_header",
            InvalidHeader(_) => "invalid_header",
            BadSignature => "invalid_signature",
            StaleTimestamp(_) => "invalid_timestamp",
            Malformed(_) => "malformed_payload",
            TooLarge(_) => "payload_too_large",
            Unavailable => "storage_unavailable",
            Unauthorized => "unauthorized",
            ApiDisabled => "api_disabled",
            NotFound(_) => "not_found",
            Invalid(_) => "validation_error",
            BadRequest(_) => "bad_request",
            Conflict(_) => "conflict",
            Internal => "internal_error",
        }
    }
}

impl From<SignatureError> for IngressError {
    fn from(e: SignatureError) -> Self {
        match e {
            SignatureError::MissingHeader(h) => IngressError::MissingHeader(h),
            SignatureError::InvalidHeader(h) => IngressError::InvalidHeader(h),
            SignatureError::TimestampTooOld => IngressError::StaleTimestamp("too old"),
            SignatureError::FutureTimestamp => IngressError::StaleTimestamp("in the future"),
            SignatureError::NoMatchingSignature | SignatureError::InvalidSecret(_) => {
                IngressError::BadSignature
            }
        }
    }
}

impl From<QueueError> for IngressError {
    fn from(e: QueueError) -> Self {
        if e.is_unavailable() {
            IngressError::Unavailable
        } else {
            match e {
                QueueError::NotFound(what) => IngressError::NotFound(format!("{what} not found")),
                other => {
                    tracing::error!(error = %other, "redis refused a write");
                    IngressError::Unavailable
                }
            }
        }
    }
}

/// The one mapping from errors to HTTP: `{"error": code, "message": text}`.
/// Details beyond the message go to the log, not the response.
impl Reply for IngressError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code(), "message": self.to_string() });
        warp::reply::with_status(warp::reply::json(&body), self.status()).into_response()
    }
}

/// Turns warp's own rejections (no route, wrong method) and ours into JSON.
pub async fn recover(r: Rejection) -> Result<Response, Infallible> {
    if let Some(e) = r.find::<IngressError>() {
        let e = match e {
            IngressError::Unauthorized => IngressError::Unauthorized,
            IngressError::ApiDisabled => IngressError::ApiDisabled,
            IngressError::NotFound(m) => IngressError::NotFound(m.clone()),
            IngressError::BadRequest(m) => IngressError::BadRequest(m.clone()),
            other => IngressError::BadRequest(other.to_string()),
        };
        return Ok(e.into_response());
    }
    if r.is_not_found() {
        return Ok(IngressError::NotFound("no such route".into()).into_response());
    }
    if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        let body = serde_json::json!({"error": "method_not_allowed", "message": "method not allowed on this route"});
        return Ok(warp::reply::with_status(
            warp::reply::json(&body),
            StatusCode::METHOD_NOT_ALLOWED,
        )
        .into_response());
    }
    if let Some(e) = r.find::<warp::filters::body::BodyDeserializeError>() {
        return Ok(IngressError::BadRequest(format!("invalid JSON body: {e}")).into_response());
    }
    if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        return Ok(IngressError::TooLarge(0).into_response());
    }
    if r.find::<warp::reject::LengthRequired>().is_some() {
        return Ok(IngressError::BadRequest("Content-Length required".into()).into_response());
    }
    if let Some(e) = r.find::<warp::reject::InvalidQuery>() {
        return Ok(IngressError::BadRequest(format!("invalid query string: {e}")).into_response());
    }
    tracing::debug!(rejection = ?r, "request rejected");
    Ok(IngressError::BadRequest("bad request".into()).into_response())
}

/// Reads a body of at most `limit` bytes, chunked or not.
///
/// # Errors
/// [`IngressError::TooLarge`] past the limit; [`IngressError::Malformed`]
/// when the connection breaks mid-body.
pub async fn read_body<S, B>(stream: S, limit: u64) -> Result<Bytes, IngressError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut stream = std::pin::pin!(stream);
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk =
            chunk.map_err(|e| IngressError::Malformed(format!("body could not be read: {e}")))?;
        if (buf.len() + chunk.remaining()) as u64 > limit {
            return Err(IngressError::TooLarge(limit));
        }
        while chunk.has_remaining() {
            let c = chunk.chunk();
            buf.extend_from_slice(c);
            let n = c.len();
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

/// One configured extra sender.
#[derive(Debug)]
struct Source {
    cfg: SourceConfig,
    svix: Option<Verifier>,
}

/// Shared state of the ingress routes.
#[derive(Debug)]
pub struct Ingress {
    ctx: Context,
    /// `None` only with `ingress.allow_unsigned = true`.
    resend: Option<Verifier>,
    sources: HashMap<String, Source>,
}

/// Why the ingress refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No secret and unsigned webhooks not explicitly allowed.
    #[error("no webhook secret: set RESEND_WEBHOOK_SECRET=whsec_... (ingress.webhook_secrets), or ingress.allow_unsigned = true for local experiments")]
    NoSecret,
    /// A secret does not decode.
    #[error("ingress: {0}")]
    Secret(#[from] SignatureError),
    /// The email or forwarding service behind the API cannot start.
    #[error("cannot start the API: {0}")]
    Service(String),
}

impl Ingress {
    /// Builds the ingress from the configuration.
    ///
    /// # Errors
    /// [`StartError::NoSecret`] when webhooks would be accepted unverified
    /// without the operator saying so.
    pub fn new(ctx: Context) -> Result<Arc<Self>, StartError> {
        let cfg = &ctx.cfg.ingress;
        let resend = if cfg.webhook_secrets.is_empty() {
            if !cfg.allow_unsigned {
                return Err(StartError::NoSecret);
            }
            tracing::warn!("ingress.allow_unsigned = true: Resend webhooks are accepted WITHOUT signature verification; never run this in production");
            None
        } else {
            Some(Verifier::new(&cfg.webhook_secrets, cfg.tolerance)?)
        };
        let mut sources = HashMap::new();
        for s in &cfg.sources {
            let svix = match s.verify {
                SourceVerify::Svix => Some(Verifier::new(&s.secrets, cfg.tolerance)?),
                SourceVerify::Hmac => None,
            };
            sources.insert(
                s.name.clone(),
                Source {
                    cfg: s.clone(),
                    svix,
                },
            );
        }
        Ok(Arc::new(Self {
            ctx,
            resend,
            sources,
        }))
    }

    fn observe(&self, route: &str, started: Instant, outcome: &str) {
        self.ctx
            .metrics
            .webhooks_received
            .with_label_values(&[outcome])
            .inc();
        self.ctx
            .metrics
            .ingress_request_duration
            .with_label_values(&[route])
            .observe(started.elapsed().as_secs_f64());
    }

    async fn resend_webhook(
        &self,
        headers: warp::http::HeaderMap,
        body: Bytes,
    ) -> Result<(Response, bool), IngressError> {
        let message_id = match &self.resend {
            Some(v) => {
                v.verify(WebhookHeaders::from_map(&headers), &body, now_secs())?
                    .id
            }
            None => WebhookHeaders::from_map(&headers)
                .id
                .map(str::to_string)
                .unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(&body)))),
        };
        let event = parse_event(&body, true)?;
        let dedupe = self.ctx.queue.keys().seen(&message_id);
        self.enqueue("resend", RESEND_EVENT, &message_id, &dedupe, &event)
            .await
    }

    async fn source_webhook(
        &self,
        name: &str,
        headers: warp::http::HeaderMap,
        body: Bytes,
    ) -> Result<(Response, bool), IngressError> {
        let source = self
            .sources
            .get(name)
            .ok_or_else(|| IngressError::NotFound(format!("no webhook source `{name}`")))?;
        let message_id = match (&source.svix, source.cfg.verify) {
            (Some(v), _) => Some(
                v.verify(WebhookHeaders::from_map(&headers), &body, now_secs())?
                    .id,
            ),
            (None, _) => {
                let header = source.cfg.header.as_str();
                let sig = headers
                    .get(header)
                    .and_then(|v| v.to_str().ok())
                    .ok_or(IngressError::MissingHeader("signature"))?;
                let ok = source
                    .cfg
                    .secrets
                    .iter()
                    .any(|s| verify_hex_hmac(s.expose().as_bytes(), sig, &body));
                if !ok {
                    return Err(IngressError::BadSignature);
                }
                None
            }
        };
        let event = parse_event(&body, false)?;
        let dedupe_id = match message_id {
            Some(id) => id,
            None if !source.cfg.dedupe_field.is_empty() => {
                serde_json::from_str::<serde_json::Value>(event.raw.get())
                    .ok()
                    .and_then(|v| lookup(&v, &source.cfg.dedupe_field))
                    .ok_or_else(|| {
                        IngressError::Malformed(format!(
                            "dedupe field `{}` is missing or not a string/number",
                            source.cfg.dedupe_field
                        ))
                    })?
            }
            None => format!("sha256:{}", hex::encode(Sha256::digest(&body))),
        };
        let dedupe = self.ctx.queue.keys().seen(&format!("{name}:{dedupe_id}"));
        self.enqueue(name, SOURCE_EVENT, &dedupe_id, &dedupe, &event)
            .await
    }

    async fn enqueue(
        &self,
        source: &str,
        kind: &str,
        message_id: &str,
        dedupe: &str,
        event: &Event<'_>,
    ) -> Result<(Response, bool), IngressError> {
        let id = uuid::Uuid::now_v7().to_string();
        // The envelope is encoded around the verified body as received: no
        // JSON tree is built for it on the hot path. It reads back as a `Job`.
        let envelope = serde_json::to_string(&EventEnvelope {
            id: &id,
            queue: EVENTS,
            kind,
            attempt: 1,
            max_attempts: self.ctx.cfg.retry.job_max_attempts.max(1),
            enqueued_at: crate::queue::now_ms(),
            payload: EventPayload {
                message_id,
                event: event.raw,
            },
            last_error: None,
            source,
        })
        .map_err(|_| IngressError::Internal)?;
        let queue = &self.ctx.queue;
        let ttl = self.ctx.cfg.ingress.dedupe_ttl;
        let new = match queue
            .ingest_encoded(dedupe, ttl, EVENTS, &id, &envelope)
            .await
        {
            Ok(new) => {
                queue.health().ok();
                new
            }
            Err(e) => {
                // Logged once per outage (and once when it ends), not per request.
                queue.health().failed("ingest webhook", &e);
                return Err(e.into());
            }
        };
        let event_type = event.event_type.as_deref().unwrap_or("unknown");
        if new {
            self.ctx
                .metrics
                .events
                .with_label_values(&[event_type])
                .inc();
            tracing::debug!(source, message_id, event_type, job = %id, "webhook accepted");
        } else {
            tracing::debug!(source, message_id, "duplicate webhook acknowledged");
        }
        let status = if new { "accepted" } else { "duplicate" };
        Ok((
            warp::reply::json(&Accepted { status, message_id }).into_response(),
            new,
        ))
    }
}

/// A verified event body, checked to be a JSON object but not parsed into a tree.
#[derive(Debug)]
struct Event<'a> {
    raw: &'a serde_json::value::RawValue,
    event_type: Option<String>,
}

/// The job envelope of an ingested event; field for field a [`Job`].
#[derive(serde::Serialize)]
struct EventEnvelope<'a> {
    id: &'a str,
    queue: &'a str,
    kind: &'a str,
    attempt: u32,
    max_attempts: u32,
    enqueued_at: i64,
    payload: EventPayload<'a>,
    last_error: Option<&'a str>,
    source: &'a str,
}

#[derive(serde::Serialize)]
struct EventPayload<'a> {
    message_id: &'a str,
    event: &'a serde_json::value::RawValue,
}

#[derive(serde::Serialize)]
struct Accepted<'a> {
    status: &'a str,
    message_id: &'a str,
}

/// Checks a verified body: a JSON object, with a string `type` when
/// `need_type`. Only `type` is read; the rest is kept as raw text.
fn parse_event(body: &[u8], need_type: bool) -> Result<Event<'_>, IngressError> {
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "type", default)]
        kind: Option<serde_json::Value>,
    }
    let raw: &serde_json::value::RawValue = serde_json::from_slice(body)
        .map_err(|e| IngressError::Malformed(format!("body is not JSON: {e}")))?;
    if !raw.get().starts_with('{') {
        return Err(IngressError::Malformed("body must be a JSON object".into()));
    }
    let head: Head = serde_json::from_str(raw.get())
        .map_err(|e| IngressError::Malformed(format!("body is not a JSON object: {e}")))?;
    let event_type = head
        .kind
        .and_then(|k| k.as_str().map(str::to_string))
        .filter(|s| !s.is_empty());
    if need_type && event_type.is_none() {
        return Err(IngressError::Malformed("event has no `type`".into()));
    }
    Ok(Event { raw, event_type })
}

/// A dotted path (`data.id`) into `v`, as text.
fn lookup(v: &serde_json::Value, path: &str) -> Option<String> {
    let mut cur = v;
    for part in path.split('.') {
        cur = cur.get(part)?;
    }
    match cur {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Answers with the error's mapping, recording the outcome.
fn refuse(ingress: &Ingress, route: &str, started: Instant, e: IngressError) -> Response {
    tracing::debug!(route, error = %e, "webhook refused");
    ingress.observe(route, started, e.code());
    e.into_response()
}

/// `POST /webhooks/resend` and `POST /webhooks/{source}`.
pub fn webhook_routes(ingress: Arc<Ingress>) -> warp::filters::BoxedFilter<(Response,)> {
    let limit = ingress.ctx.cfg.ingress.body_limit;
    let with = {
        let i = ingress.clone();
        warp::any().map(move || i.clone())
    };
    let resend = warp::path!("webhooks" / "resend")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with.clone())
        .then(
            move |headers: warp::http::HeaderMap, body, ingress: Arc<Ingress>| async move {
                let started = Instant::now();
                let r = match early_too_large(&headers, limit) {
                    Some(e) => Err(e),
                    None => match read_body(body, limit).await {
                        Ok(bytes) => ingress.resend_webhook(headers, bytes).await,
                        Err(e) => Err(e),
                    },
                };
                finish_counted(&ingress, "webhooks_resend", started, r)
            },
        );
    let sources = warp::path!("webhooks" / String)
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with)
        .then(move |name: String, headers: warp::http::HeaderMap, body, ingress: Arc<Ingress>| async move {
            let started = Instant::now();
            let r = match early_too_large(&headers, limit) {
                Some(e) => Err(e),
                None => match read_body(body, limit).await {
                    Ok(bytes) => ingress.source_webhook(&name, headers, bytes).await,
                    Err(e) => Err(e),
                },
            };
            finish_counted(&ingress, "webhooks_source", started, r)
        });
    resend.or(sources).unify().boxed()
}

/// Records the outcome (duplicates apart from first copies) and answers.
fn finish_counted(
    ingress: &Ingress,
    route: &str,
    started: Instant,
    r: Result<(Response, bool), IngressError>,
) -> Response {
    match r {
        Ok((resp, new)) => {
            ingress.observe(route, started, if new { "accepted" } else { "duplicate" });
            resp
        }
        Err(e) => refuse(ingress, route, started, e),
    }
}

fn early_too_large(headers: &warp::http::HeaderMap, limit: u64) -> Option<IngressError> {
    let len: u64 = headers.get("content-length")?.to_str().ok()?.parse().ok()?;
    (len > limit).then_some(IngressError::TooLarge(limit))
}

/// Requires `Authorization: Bearer <ingress.api_key>`.
pub fn bearer(ctx: &Context) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    let key = ctx.cfg.ingress.api_key.expose().to_string();
    warp::header::optional::<String>("authorization")
        .and_then(move |h: Option<String>| {
            let key = key.clone();
            async move {
                if key.is_empty() {
                    return Err(warp::reject::custom(IngressError::ApiDisabled));
                }
                let token = h
                    .as_deref()
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .unwrap_or("");
                // Compare digests so timing does not reveal a matching prefix.
                if Sha256::digest(token.as_bytes()) == Sha256::digest(key.as_bytes())
                    && !token.is_empty()
                {
                    Ok(())
                } else {
                    Err(warp::reject::custom(IngressError::Unauthorized))
                }
            }
        })
        .untuple_one()
}

#[derive(Debug, Deserialize)]
struct DeadLetterQuery {
    queue: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /v1/dead-letters`, `POST /v1/dead-letters/{id}/replay`.
pub fn dead_letter_routes(ctx: Context) -> warp::filters::BoxedFilter<(Response,)> {
    let auth = bearer(&ctx);
    let c1 = ctx.clone();
    let list = warp::path!("v1" / "dead-letters")
        .and(warp::get())
        .and(auth.clone())
        .and(warp::query::<DeadLetterQuery>())
        .then(move |q: DeadLetterQuery| {
            let ctx = c1.clone();
            async move {
                let limit = q.limit.unwrap_or(50).clamp(1, 500);
                let r = ctx
                    .queue
                    .dead_letters(q.queue.as_deref(), limit, q.cursor.as_deref())
                    .await;
                match r {
                    Ok(list) => {
                        let next = (list.len() == limit)
                            .then(|| list.last().map(|d| d.id.clone()))
                            .flatten();
                        let data: Vec<serde_json::Value> = list
                            .into_iter()
                            .map(|d| {
                                let job = serde_json::from_str(&d.job)
                                    .unwrap_or(serde_json::Value::String(d.job.clone()));
                                let mut v = serde_json::to_value(&d).unwrap_or_default();
                                v["job"] = job;
                                v
                            })
                            .collect();
                        warp::reply::json(&serde_json::json!({ "data": data, "next_cursor": next }))
                            .into_response()
                    }
                    Err(e) => IngressError::from(e).into_response(),
                }
            }
        });
    let c2 = ctx.clone();
    let replay = warp::path!("v1" / "dead-letters" / String / "replay")
        .and(warp::post())
        .and(auth)
        .then(move |id: String| {
            let ctx = c2.clone();
            async move {
                match ctx.queue.replay(&id).await {
                    Ok(job) => {
                        warp::reply::json(&serde_json::json!({ "replayed": id, "job": job }))
                            .into_response()
                    }
                    Err(QueueError::Protocol(m)) => IngressError::Invalid(m).into_response(),
                    Err(e) => IngressError::from(e).into_response(),
                }
            }
        });
    list.or(replay).unify().boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_documented_statuses() {
        assert_eq!(IngressError::MissingHeader("svix-id").status(), 400);
        assert_eq!(IngressError::BadSignature.status(), 401);
        assert_eq!(IngressError::StaleTimestamp("too old").status(), 401);
        assert_eq!(IngressError::Malformed("x".into()).status(), 400);
        assert_eq!(IngressError::TooLarge(1).status(), 413);
        assert_eq!(IngressError::Unavailable.status(), 503);
    }

    #[test]
    fn events_need_a_type_and_an_object() {
        assert!(parse_event(br#"{"type":"email.sent","data":{}}"#, true).is_ok());
        assert!(parse_event(br#"{"data":{}}"#, true).is_err());
        assert!(parse_event(br#"{"type":""}"#, true).is_err());
        assert!(parse_event(br#"[1,2]"#, false).is_err());
        assert!(parse_event(b"not json", false).is_err());
        assert!(parse_event(br#"{"id":"x"}"#, false).is_ok());
        assert!(
            parse_event(b" \n {\"type\":\"email.sent\"} \n", true).is_ok(),
            "whitespace around the object"
        );
        assert!(
            parse_event(br#"{"type":7}"#, true).is_err(),
            "a type that is not a string"
        );
        assert!(parse_event(br#"{"type":"email.sent"} trailing"#, true).is_err());
    }

    #[test]
    fn the_event_envelope_reads_back_as_a_job_with_the_body_verbatim() {
        let body = br#"{"type":"email.bounced","data":{"email_id":"e1","to":["a@b.co"],"n":1.50}}"#;
        let event = parse_event(body, true).unwrap();
        assert_eq!(event.event_type.as_deref(), Some("email.bounced"));
        let text = serde_json::to_string(&EventEnvelope {
            id: "j1",
            queue: EVENTS,
            kind: RESEND_EVENT,
            attempt: 1,
            max_attempts: 5,
            enqueued_at: 7,
            payload: EventPayload {
                message_id: "msg_1",
                event: event.raw,
            },
            last_error: None,
            source: "resend",
        })
        .unwrap();
        assert!(
            text.contains(r#""n":1.50"#),
            "the body is embedded byte for byte: {text}"
        );
        let job: crate::queue::Job = serde_json::from_str(&text).unwrap();
        assert_eq!(job.id, "j1");
        assert_eq!(job.kind, RESEND_EVENT);
        assert_eq!(job.source.as_deref(), Some("resend"));
        assert_eq!(job.payload["message_id"], "msg_1");
        assert_eq!(job.payload["event"]["data"]["email_id"], "e1");
    }

    #[test]
    fn dotted_paths_find_dedupe_fields() {
        let v = serde_json::json!({"data": {"id": "evt_1", "n": 7}});
        assert_eq!(lookup(&v, "data.id").as_deref(), Some("evt_1"));
        assert_eq!(lookup(&v, "data.n").as_deref(), Some("7"));
        assert_eq!(lookup(&v, "data.missing"), None);
    }
}
