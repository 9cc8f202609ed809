//! `rebound sandbox`: an emulator of the part of Resend that rebound uses,
//! so the whole loop runs with no account.
//!
//! It answers `POST /emails`, `POST /emails/batch` and `GET /emails/{id}` with
//! Resend's shapes and error bodies (`{statusCode, message, name}`), honours
//! `Idempotency-Key` like Resend (same key + same body: the first answer; a
//! different body: 409 `invalid_idempotent_request`), requires a bearer key
//! and a `User-Agent`, and then posts Svix-signed webhooks to the ingress the
//! way Resend would:
//!
//! | recipient | events |
//! |---|---|
//! | `delivered@resend.dev`, anything else | `email.sent`, `email.delivered` |
//! | `bounced@resend.dev` | `email.sent`, `email.bounced` Permanent/General |
//! | `complained@resend.dev` | `email.sent`, `email.delivered`, `email.complained` |
//! | local part ending `+nomail` | `email.sent`, `email.bounced` Permanent/NoEmail |
//! | local part ending `+bounce-once` | first email: `email.bounced` Transient/General; later ones delivered |
//!
//! Knobs (`[sandbox]` or `POST /sandbox/knobs`): latency, error rate (500s),
//! forced 429s. `GET /sandbox/emails` lists what it received.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng as _;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::config::{decode_whsec, Config};
use crate::ingress::signature::{now_secs, sign};
use crate::queue::now_rfc3339;

/// What the emulator needs to run.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Where it posts webhooks.
    pub webhook_url: String,
    /// `whsec_...` it signs with.
    pub webhook_secret: String,
    /// Added latency per API request.
    pub latency: Duration,
    /// Delay before events are posted.
    pub event_delay: Duration,
    /// Fraction of sends answered 500.
    pub error_rate: f64,
    /// The next N sends are answered 429.
    pub forced_429: u32,
}

impl SandboxOptions {
    /// Options from `[sandbox]`, falling back to the local ingress and its first secret.
    ///
    /// # Errors
    /// No secret to sign with.
    pub fn from_config(cfg: &Config) -> anyhow::Result<Self> {
        let s = &cfg.sandbox;
        let webhook_url = if s.webhook_url.is_empty() {
            format!("http://{}/webhooks/resend", cfg.ingress.listen)
        } else {
            s.webhook_url.clone()
        };
        let secret = if !s.webhook_secret.is_empty() {
            s.webhook_secret.expose().to_string()
        } else if let Some(first) = cfg.ingress.webhook_secrets.first() {
            first.expose().to_string()
        } else {
            anyhow::bail!("the sandbox signs its webhooks with sandbox.webhook_secret or the first ingress secret; set RESEND_WEBHOOK_SECRET=whsec_...")
        };
        decode_whsec(&secret).map_err(|e| anyhow::anyhow!("sandbox webhook secret: {e}"))?;
        Ok(Self {
            webhook_url,
            webhook_secret: secret,
            latency: s.latency,
            event_delay: s.event_delay,
            error_rate: s.error_rate,
            forced_429: s.forced_429,
        })
    }
}

#[derive(Debug, Clone)]
struct Stored {
    id: String,
    request: Value,
    created_at: String,
    last_event: String,
}

#[derive(Debug)]
struct State {
    opts: SandboxOptions,
    key: Vec<u8>,
    emails: Mutex<Vec<Stored>>,
    idempotency: Mutex<HashMap<String, (Vec<u8>, Value)>>,
    bounced_once: Mutex<HashSet<String>>,
    forced_429: AtomicU32,
    error_rate_ppm: AtomicU32,
    latency_ms: AtomicU32,
    http: reqwest::Client,
}

fn error(status: StatusCode, name: &str, message: &str) -> Response {
    let body = json!({ "statusCode": status.as_u16(), "message": message, "name": name });
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// Runs the emulator on `listener` until `shutdown`.
///
/// # Errors
/// The webhook secret does not decode.
pub async fn run(
    opts: SandboxOptions,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let routes = routes(opts)?;
    crate::http::serve(routes, listener, shutdown).await;
    Ok(())
}

/// The emulator's routes.
///
/// # Errors
/// The webhook secret does not decode.
pub fn routes(opts: SandboxOptions) -> anyhow::Result<warp::filters::BoxedFilter<(Response,)>> {
    let key = decode_whsec(&opts.webhook_secret).map_err(|e| anyhow::anyhow!(e))?;
    let state = Arc::new(State {
        forced_429: AtomicU32::new(opts.forced_429),
        error_rate_ppm: AtomicU32::new((opts.error_rate * 1e6) as u32),
        latency_ms: AtomicU32::new(opts.latency.as_millis() as u32),
        opts,
        key,
        emails: Mutex::new(Vec::new()),
        idempotency: Mutex::new(HashMap::new()),
        bounced_once: Mutex::new(HashSet::new()),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()?,
    });
    let with = {
        let s = state.clone();
        warp::any().map(move || s.clone())
    };
    let send = warp::path!("emails")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .and(with.clone())
        .then(|h, body, s: Arc<State>| async move { s.send(h, body, false).await });
    let batch = warp::path!("emails" / "batch")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .and(with.clone())
        .then(|h, body, s: Arc<State>| async move { s.send(h, body, true).await });
    let get = warp::path!("emails" / String)
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(with.clone())
        .then(|id: String, h, s: Arc<State>| async move { s.get(&id, &h).await });
    let list = warp::path!("sandbox" / "emails")
        .and(warp::get())
        .and(with.clone())
        .map(|s: Arc<State>| {
            let all: Vec<Value> = s
                .emails
                .lock()
                .map(|e| e.iter().map(|m| m.to_json()).collect())
                .unwrap_or_default();
            warp::reply::json(&json!({ "data": all })).into_response()
        });
    let knobs = warp::path!("sandbox" / "knobs")
        .and(warp::post())
        .and(warp::body::json())
        .and(with)
        .map(|k: Knobs, s: Arc<State>| {
            if let Some(n) = k.forced_429 {
                s.forced_429.store(n, Ordering::SeqCst);
            }
            if let Some(r) = k.error_rate {
                s.error_rate_ppm
                    .store((r.clamp(0.0, 1.0) * 1e6) as u32, Ordering::SeqCst);
            }
            if let Some(l) = k.latency_ms {
                s.latency_ms.store(l, Ordering::SeqCst);
            }
            warp::reply::json(&json!({ "ok": true })).into_response()
        });
    Ok(send
        .or(batch)
        .unify()
        .or(get)
        .unify()
        .or(list)
        .unify()
        .or(knobs)
        .unify()
        .recover(|_r: warp::Rejection| async {
            Ok::<_, std::convert::Infallible>(error(
                StatusCode::NOT_FOUND,
                "not_found",
                "The requested endpoint does not exist.",
            ))
        })
        .unify()
        .boxed())
}

#[derive(Debug, Deserialize)]
struct Knobs {
    forced_429: Option<u32>,
    error_rate: Option<f64>,
    latency_ms: Option<u32>,
}

impl Stored {
    fn to_json(&self) -> Value {
        let r = &self.request;
        let tags: Value = r.get("tags").cloned().unwrap_or(json!([]));
        json!({
            "object": "email",
            "id": self.id,
            "to": to_list(r.get("to")),
            "from": r.get("from"),
            "created_at": self.created_at,
            "subject": r.get("subject"),
            "html": r.get("html"),
            "text": r.get("text"),
            "bcc": null, "cc": null, "reply_to": null,
            "last_event": self.last_event,
            "tags": tags,
        })
    }
}

fn to_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

impl State {
    async fn gate(&self, h: &warp::http::HeaderMap) -> Option<Response> {
        let latency = self.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency as u64)).await;
        }
        let auth = h
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if auth
            .strip_prefix("Bearer ")
            .is_none_or(|k| k.trim().is_empty())
        {
            return Some(error(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "Missing API key in the authorization header.",
            ));
        }
        if h.get("user-agent").is_none() {
            return Some(error(
                StatusCode::FORBIDDEN,
                "missing_user_agent",
                "A User-Agent header is required (error 1010).",
            ));
        }
        None
    }

    async fn send(self: Arc<Self>, h: warp::http::HeaderMap, body: Bytes, batch: bool) -> Response {
        if let Some(r) = self.gate(&h).await {
            return r;
        }
        if self
            .forced_429
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "Too many requests. You can only make 10 requests per second.",
            );
            let hm = r.headers_mut();
            hm.insert("retry-after", warp::http::HeaderValue::from_static("1"));
            hm.insert(
                "ratelimit-limit",
                warp::http::HeaderValue::from_static("10"),
            );
            hm.insert(
                "ratelimit-remaining",
                warp::http::HeaderValue::from_static("0"),
            );
            hm.insert("ratelimit-reset", warp::http::HeaderValue::from_static("1"));
            return r;
        }
        let ppm = self.error_rate_ppm.load(Ordering::Relaxed);
        if ppm > 0 && rand::rng().random_range(0..1_000_000) < ppm {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "application_error",
                "An unexpected error occurred.",
            );
        }
        let idem = h
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let digest = Sha256::digest(&body).to_vec();
        if let Some(k) = &idem {
            if k.is_empty() || k.len() > 256 {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_idempotency_key",
                    "The key must be between 1-256 chars.",
                );
            }
            if let Ok(map) = self.idempotency.lock() {
                if let Some((d, resp)) = map.get(k) {
                    if *d != digest {
                        return error(
                            StatusCode::CONFLICT,
                            "invalid_idempotent_request",
                            "Same idempotency key used with a different request payload.",
                        );
                    }
                    return warp::reply::json(resp).into_response();
                }
            }
        }
        let parsed: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_error",
                    "Invalid JSON body.",
                )
            }
        };
        let requests: Vec<Value> = if batch {
            match parsed {
                Value::Array(a) if !a.is_empty() && a.len() <= 100 => a,
                _ => {
                    return error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "validation_error",
                        "A batch is an array of 1 to 100 emails.",
                    )
                }
            }
        } else {
            vec![parsed]
        };
        for r in &requests {
            for field in ["from", "to", "subject"] {
                let present = match r.get(field) {
                    Some(Value::String(s)) => !s.is_empty(),
                    Some(Value::Array(a)) => !a.is_empty(),
                    _ => false,
                };
                if !present {
                    return error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "missing_required_field",
                        &format!("Missing `{field}` field."),
                    );
                }
            }
            if to_list(r.get("to")).len() > 50 {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_error",
                    "Too many recipients (max 50).",
                );
            }
            if r.get("html").is_none() && r.get("text").is_none() {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_error",
                    "Missing `html` or `text` field.",
                );
            }
        }
        let mut ids = Vec::new();
        for r in requests {
            let id = uuid::Uuid::new_v4().to_string();
            let created_at = sandbox_timestamp();
            let stored = Stored {
                id: id.clone(),
                request: r,
                created_at,
                last_event: "sent".into(),
            };
            if let Ok(mut e) = self.emails.lock() {
                e.push(stored.clone());
            }
            tokio::spawn(self.clone().deliver(stored));
            ids.push(id);
        }
        let resp = if batch {
            json!({ "data": ids.iter().map(|i| json!({"id": i})).collect::<Vec<_>>() })
        } else {
            json!({ "id": ids[0] })
        };
        if let (Some(k), Ok(mut map)) = (idem, self.idempotency.lock()) {
            map.insert(k, (digest, resp.clone()));
        }
        warp::reply::json(&resp).into_response()
    }

    async fn get(&self, id: &str, h: &warp::http::HeaderMap) -> Response {
        if let Some(r) = self.gate(h).await {
            return r;
        }
        let found = self
            .emails
            .lock()
            .ok()
            .and_then(|e| e.iter().find(|m| m.id == id).cloned());
        match found {
            Some(m) => warp::reply::json(&m.to_json()).into_response(),
            None => error(StatusCode::NOT_FOUND, "not_found", "Email not found"),
        }
    }

    /// The events Resend would send for one recipient.
    fn script_for(&self, to: &str) -> Vec<(&'static str, Option<Value>)> {
        let addr = crate::email::bare_address(to);
        let local = addr.split('@').next().unwrap_or("");
        let bounce =
            |t: &str, s: &str, m: &str| Some(json!({"type": t, "subType": s, "message": m}));
        if addr == "bounced@resend.dev" {
            vec![
                ("email.sent", None),
                (
                    "email.bounced",
                    bounce(
                        "Permanent",
                        "General",
                        "The recipient's mail server permanently rejected the email.",
                    ),
                ),
            ]
        } else if addr == "complained@resend.dev" {
            vec![
                ("email.sent", None),
                ("email.delivered", None),
                ("email.complained", None),
            ]
        } else if local.ends_with("+nomail") {
            vec![
                ("email.sent", None),
                (
                    "email.bounced",
                    bounce(
                        "Permanent",
                        "NoEmail",
                        "The recipient's email address does not exist.",
                    ),
                ),
            ]
        } else if local.ends_with("+bounce-once")
            && self
                .bounced_once
                .lock()
                .map(|mut s| s.insert(addr.clone()))
                .unwrap_or(false)
        {
            vec![
                ("email.sent", None),
                (
                    "email.bounced",
                    bounce(
                        "Transient",
                        "General",
                        "The recipient's mail server temporarily rejected the email.",
                    ),
                ),
            ]
        } else {
            vec![("email.sent", None), ("email.delivered", None)]
        }
    }

    async fn deliver(self: Arc<Self>, email: Stored) {
        let r = &email.request;
        let tags: serde_json::Map<String, Value> = match r.get("tags") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|t| {
                    Some((
                        t.get("name")?.as_str()?.to_string(),
                        t.get("value")?.clone(),
                    ))
                })
                .collect(),
            _ => Default::default(),
        };
        for to in to_list(r.get("to")) {
            for (kind, extra) in self.script_for(&to) {
                tokio::time::sleep(self.opts.event_delay).await;
                let mut data = json!({
                    "email_id": email.id,
                    "created_at": email.created_at,
                    "from": r.get("from"),
                    "to": [to],
                    "subject": r.get("subject"),
                    "broadcast_id": null,
                    "template_id": null,
                    "tags": tags,
                });
                if let Some(b) = extra {
                    data["bounce"] = b;
                }
                if let Ok(mut all) = self.emails.lock() {
                    if let Some(m) = all.iter_mut().find(|m| m.id == email.id) {
                        m.last_event = kind.trim_start_matches("email.").to_string();
                    }
                }
                let event = json!({ "type": kind, "created_at": now_rfc3339(), "data": data });
                self.post(event.to_string()).await;
            }
        }
    }

    /// Posts one signed webhook, retrying a few times like Svix (shortened).
    async fn post(&self, body: String) {
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        for (attempt, wait) in [0u64, 1, 2, 5, 10].into_iter().enumerate() {
            tokio::time::sleep(Duration::from_secs(wait)).await;
            let ts = now_secs();
            let sig = sign(&self.key, &id, ts, body.as_bytes());
            let r = self
                .http
                .post(&self.opts.webhook_url)
                .header("svix-id", &id)
                .header("svix-timestamp", ts.to_string())
                .header("svix-signature", sig)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            match r {
                Ok(resp) if resp.status().is_success() => return,
                Ok(resp) => {
                    tracing::debug!(status = %resp.status(), attempt, "sandbox webhook refused; retrying")
                }
                Err(e) => tracing::debug!(error = %e, attempt, "sandbox webhook failed; retrying"),
            }
        }
        tracing::warn!(id, url = %self.opts.webhook_url, "sandbox gave up posting a webhook");
    }
}

/// Resend's `GET /emails/{id}` timestamp style: `2026-04-03 22:13:42.674981+00`.
fn sandbox_timestamp() -> String {
    let t = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    t.replace('T', " ").trim_end_matches('Z').to_string() + "+00"
}
