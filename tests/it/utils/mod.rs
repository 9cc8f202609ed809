//! Test harness: our own `redis-server` on a free port, configs with
//! millisecond timings, and polling with a deadline.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng as _;
use rebound::app::Context;
use rebound::config::Config;
use rebound::worker::Handlers;
use tokio_util::sync::CancellationToken;

/// A `redis-server` child on a free loopback port with its own data dir.
/// AOF with `appendfsync always`, so a kill loses nothing that was acknowledged.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl RedisServer {
    /// Starts a new server and waits until it answers PING.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = Self {
            port: free_port(),
            dir,
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/install-redis.sh)");
        // A watchdog: if the test process dies without dropping us, the server goes too.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {} 2>/dev/null && kill -0 {} 2>/dev/null; do sleep 1; done; kill -9 {} 2>/dev/null",
                std::process::id(),
                child.id(),
                child.id()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(c) = redis::Client::open(self.url()) {
                if let Ok(mut conn) = c.get_connection() {
                    if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: an outage, not a polite shutdown).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// A blocking connection for assertions.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One server shared by every test of this binary; tests isolate by prefix.
pub fn shared_redis() -> &'static RedisServer {
    static SHARED: OnceLock<RedisServer> = OnceLock::new();
    SHARED.get_or_init(RedisServer::start)
}

/// A random prefix, so tests never see each other's keys.
pub fn prefix() -> String {
    let n: u64 = rand::rng().random();
    format!("t{n:016x}")
}

/// A valid config with millisecond timings for `url` and a fresh prefix.
pub fn test_config(url: &str) -> Config {
    let text = format!(
        r#"
        prefix = "{prefix}"
        [redis]
        url = "{url}"
        pool_size = 16
        command_timeout = "1s"
        [worker]
        concurrency = 16
        visibility_timeout = "1s"
        job_timeout = "800ms"
        shutdown_grace = "2s"
        block = "100ms"
        poll_interval = "10ms"
        reclaim_interval = "100ms"
        max_deliveries = 3
        consumer_ttl = "1h"
        queues = ["events", "emails", "webhooks"]
        [resend]
        timeout = "500ms"
        [forward]
        timeout = "500ms"
        [retry]
        job_delays = ["50ms", "100ms"]
        job_max_attempts = 3
        jitter = 0.0
        "#,
        prefix = prefix()
    );
    Config::from_toml(&text, &|_| None).expect("test config is valid")
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A worker role running in the background until `stop` (a graceful shutdown).
pub struct RunningWorker {
    pub token: CancellationToken,
    pub handle: tokio::task::JoinHandle<()>,
}

impl RunningWorker {
    pub fn start(ctx: &Context, handlers: Handlers) -> Self {
        let token = CancellationToken::new();
        let handle = tokio::spawn(rebound::app::run_work(
            ctx.clone(),
            handlers,
            None,
            token.clone(),
        ));
        Self { token, handle }
    }

    /// SIGTERM-equivalent: cancel and wait for the drain.
    pub async fn stop(self) {
        self.token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.handle).await;
    }
}

/// A worker in its own runtime, so it can "crash": dropping the runtime stops
/// every one of its tasks at once, with nothing acknowledged.
pub struct CrashableWorker {
    rt: Option<tokio::runtime::Runtime>,
}

impl CrashableWorker {
    pub fn start(cfg: Config, handlers: Handlers) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.spawn(async move {
            let ctx = Context::new(cfg).expect("context");
            rebound::app::run_work(ctx, handlers, None, CancellationToken::new()).await;
        });
        Self { rt: Some(rt) }
    }

    pub fn crash(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Counts calls per job id, for exactly-once / at-least-once assertions.
#[derive(Default, Debug)]
pub struct Calls {
    pub by_id: std::sync::Mutex<std::collections::HashMap<String, Vec<(u32, Instant)>>>,
}

impl Calls {
    pub fn record(&self, id: &str, attempt: u32) {
        self.by_id
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_default()
            .push((attempt, Instant::now()));
    }
    pub fn distinct(&self) -> usize {
        self.by_id.lock().unwrap().len()
    }
    pub fn total(&self) -> usize {
        self.by_id.lock().unwrap().values().map(Vec::len).sum()
    }
    pub fn of(&self, id: &str) -> Vec<(u32, Instant)> {
        self.by_id
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .unwrap_or_default()
    }
}

pub type SharedCalls = Arc<Calls>;

/// A handler from a closure, for tests.
pub struct FnHandler<F>(pub F);

impl<F> rebound::worker::Handler for FnHandler<F>
where
    F: Fn(
            rebound::queue::Job,
        ) -> futures::future::BoxFuture<'static, Result<(), rebound::worker::JobError>>
        + Send
        + Sync
        + 'static,
{
    fn handle<'a>(
        &'a self,
        job: &'a rebound::queue::Job,
    ) -> futures::future::BoxFuture<'a, Result<(), rebound::worker::JobError>> {
        (self.0)(job.clone())
    }
}

/// Handlers with one kind that takes `ms` and then records its call.
pub fn sleeping(kind: &str, calls: SharedCalls, ms: u64) -> Handlers {
    let mut h = Handlers::new();
    h.register(
        kind,
        Arc::new(FnHandler(move |j: rebound::queue::Job| {
            let c = calls.clone();
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                c.record(&j.id, j.attempt);
                Ok(())
            }) as futures::future::BoxFuture<'static, _>
        })),
    );
    h
}

/// Handlers with one kind that records its calls and then behaves as `f` says.
pub fn recording<F>(kind: &str, calls: SharedCalls, f: F) -> Handlers
where
    F: Fn(&rebound::queue::Job) -> Result<(), rebound::worker::JobError> + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let mut h = Handlers::new();
    h.register(
        kind,
        Arc::new(FnHandler(move |job: rebound::queue::Job| {
            let calls = calls.clone();
            let f = f.clone();
            Box::pin(async move {
                calls.record(&job.id, job.attempt);
                f(&job)
            }) as futures::future::BoxFuture<'static, _>
        })),
    );
    h
}

/// Test secrets: the published Svix vector secrets (valid `whsec_`).
pub const SECRET_A: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
pub const SECRET_B: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const API_KEY: &str = "test-api-key";

/// A running `serve` role on a free port.
pub struct Served {
    pub base: String,
    pub ctx: Context,
    pub token: CancellationToken,
}

impl Served {
    pub async fn start(mut cfg: Config) -> Self {
        if cfg.ingress.webhook_secrets.is_empty() && !cfg.ingress.allow_unsigned {
            cfg.ingress.webhook_secrets = vec![
                rebound::config::Secret::new(SECRET_A),
                rebound::config::Secret::new(SECRET_B),
            ];
        }
        if cfg.ingress.api_key.is_empty() {
            cfg.ingress.api_key = rebound::config::Secret::new(API_KEY);
        }
        let ctx = Context::new(cfg).expect("context");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let token = CancellationToken::new();
        let routes = rebound::app::serve_routes(&ctx).expect("routes");
        tokio::spawn(rebound::http::serve(routes, listener, token.clone()));
        Self { base, ctx, token }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Signs like Svix (our signer is checked against the official library's vectors).
pub fn svix_headers(secret: &str, id: &str, body: &str) -> Vec<(String, String)> {
    let key = rebound::config::decode_whsec(secret).expect("secret");
    let ts = rebound::ingress::signature::now_secs();
    vec![
        ("svix-id".into(), id.into()),
        ("svix-timestamp".into(), ts.to_string()),
        (
            "svix-signature".into(),
            rebound::ingress::signature::sign(&key, id, ts, body.as_bytes()),
        ),
    ]
}

pub async fn post(
    client: &reqwest::Client,
    url: &str,
    headers: &[(String, String)],
    body: &str,
) -> (u16, serde_json::Value) {
    let mut req = client.post(url).body(body.to_string());
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let json = resp
        .json::<serde_json::Value>()
        .await
        .unwrap_or(serde_json::Value::Null);
    (status, json)
}

pub fn bounced_event(email_id: &str) -> String {
    serde_json::json!({
        "type": "email.bounced",
        "created_at": "2026-11-22T23:41:12.126Z",
        "data": {
            "email_id": email_id,
            "created_at": "2026-11-22T23:41:11.894Z",
            "from": "Acme <onboarding@resend.dev>",
            "to": ["bounced@resend.dev"],
            "subject": "Verify your email",
            "bounce": {"message": "mailbox does not exist", "subType": "General", "type": "Permanent"},
            "tags": {"category": "verification"}
        }
    })
    .to_string()
}

/// Entries of a stream as parsed envelopes.
pub fn stream_jobs(r: &RedisServer, key: &str) -> Vec<rebound::queue::Job> {
    let v: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(&mut r.conn())
        .expect("xrange");
    v.into_iter()
        .map(|(_, f)| serde_json::from_str(&f["job"]).expect("envelope"))
        .collect()
}

/// The whole loop on free ports: the Resend emulator, the ingress and API,
/// and a worker with the real handlers, sharing one prefix.
pub struct Stack {
    pub api: String,
    pub sandbox: String,
    pub ctx: Context,
    pub token: CancellationToken,
    pub http: reqwest::Client,
}

impl Stack {
    pub async fn start(r: &RedisServer, tweak: impl FnOnce(&mut Config)) -> Self {
        let ingress_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sandbox_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", ingress_l.local_addr().unwrap());
        let sandbox = format!("http://{}", sandbox_l.local_addr().unwrap());
        let mut cfg = test_config(&r.url());
        cfg.ingress.webhook_secrets = vec![rebound::config::Secret::new(SECRET_A)];
        cfg.ingress.api_key = rebound::config::Secret::new(API_KEY);
        cfg.resend.api_url = sandbox.clone();
        cfg.resend.api_key = rebound::config::Secret::new("re_test");
        cfg.resend.from = "Acme <onboarding@resend.dev>".into();
        cfg.resend.rate_limit = 1000;
        cfg.retry.bounce_delays = vec![
            Duration::from_millis(100),
            Duration::from_millis(200),
            Duration::from_millis(300),
        ];
        cfg.sandbox.event_delay = Duration::from_millis(10);
        tweak(&mut cfg);
        let token = CancellationToken::new();
        let opts = rebound::sandbox::SandboxOptions {
            webhook_url: format!("{api}/webhooks/resend"),
            webhook_secret: SECRET_A.into(),
            latency: Duration::ZERO,
            event_delay: cfg.sandbox.event_delay,
            error_rate: 0.0,
            forced_429: 0,
        };
        tokio::spawn(rebound::sandbox::run(opts, sandbox_l, token.clone()));
        let ctx = Context::new(cfg).unwrap();
        tokio::spawn(rebound::http::serve(
            rebound::app::serve_routes(&ctx).unwrap(),
            ingress_l,
            token.clone(),
        ));
        let handlers = rebound::app::handlers(&ctx).unwrap();
        tokio::spawn(rebound::app::run_work(
            ctx.clone(),
            handlers,
            None,
            token.clone(),
        ));
        Self {
            api,
            sandbox,
            ctx,
            token,
            http: reqwest::Client::new(),
        }
    }

    pub async fn send(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .post(format!("{}/v1/emails", self.api))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let st = resp.status().as_u16();
        (st, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// GET an API path with the bearer token, as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let resp = self
            .http
            .get(format!("{}{path}", self.api))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap();
        resp.json().await.unwrap()
    }

    pub async fn email(&self, id: &str) -> serde_json::Value {
        self.get_json(&format!("/v1/emails/{id}")).await
    }

    pub async fn emails(&self, query: &str) -> serde_json::Value {
        self.get_json(&format!("/v1/emails?{query}")).await
    }

    /// What the emulator received, oldest first.
    pub async fn received(&self) -> Vec<serde_json::Value> {
        let v: serde_json::Value = self
            .http
            .get(format!("{}/sandbox/emails", self.sandbox))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["data"].as_array().cloned().unwrap_or_default()
    }

    pub fn suppressed(&self, r: &RedisServer, addr: &str) -> Option<serde_json::Value> {
        use redis::Commands as _;
        let v: Option<String> = r
            .conn()
            .hget(self.ctx.queue.keys().suppressed(), addr)
            .unwrap();
        v.map(|s| serde_json::from_str(&s).unwrap())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// What a scripted fake Resend does with one request.
#[derive(Clone, Debug)]
pub enum Answer {
    Ok,
    Error {
        status: u16,
        name: &'static str,
        retry_after: Option<&'static str>,
    },
    Slow(Duration),
}

/// One request the fake Resend received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub to: String,
    pub at: std::time::SystemTime,
    pub idempotency_key: Option<String>,
    pub user_agent: Option<String>,
}

/// A stand-in for Resend's API: per recipient, a script of answers (then Ok).
#[derive(Clone, Default)]
pub struct FakeResend {
    pub scripts: Arc<
        std::sync::Mutex<std::collections::HashMap<String, std::collections::VecDeque<Answer>>>,
    >,
    pub seen: Arc<std::sync::Mutex<Vec<Seen>>>,
}

impl FakeResend {
    pub async fn start(&self) -> (String, CancellationToken) {
        use warp::Filter as _;
        let me = self.clone();
        let route = warp::path!("emails")
            .and(warp::post())
            .and(warp::header::headers_cloned())
            .and(warp::body::json())
            .then(move |h: warp::http::HeaderMap, body: serde_json::Value| {
                let me = me.clone();
                async move {
                    let to = body["to"][0].as_str().unwrap_or("").to_string();
                    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
                    me.seen.lock().unwrap().push(Seen {
                        to: to.clone(),
                        at: std::time::SystemTime::now(),
                        idempotency_key: get("idempotency-key"),
                        user_agent: get("user-agent"),
                    });
                    let answer = me.scripts.lock().unwrap().get_mut(&to).and_then(|q| q.pop_front()).unwrap_or(Answer::Ok);
                    use warp::Reply as _;
                    match answer {
                        Answer::Ok => warp::reply::json(&serde_json::json!({"id": uuid::Uuid::new_v4().to_string()})).into_response(),
                        Answer::Slow(d) => {
                            tokio::time::sleep(d).await;
                            warp::reply::json(&serde_json::json!({"id": uuid::Uuid::new_v4().to_string()})).into_response()
                        }
                        Answer::Error { status, name, retry_after } => {
                            let body = serde_json::json!({"statusCode": status, "name": name, "message": format!("scripted {name}")});
                            let mut resp = warp::reply::with_status(
                                warp::reply::json(&body),
                                warp::http::StatusCode::from_u16(status).unwrap(),
                            )
                            .into_response();
                            if let Some(ra) = retry_after {
                                resp.headers_mut().insert("retry-after", ra.parse().unwrap());
                            }
                            resp
                        }
                    }
                }
            })
            .boxed();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let token = CancellationToken::new();
        tokio::spawn(rebound::http::serve(route, listener, token.clone()));
        (url, token)
    }

    pub fn script(&self, to: &str, answers: Vec<Answer>) {
        self.scripts
            .lock()
            .unwrap()
            .insert(to.to_string(), answers.into());
    }

    pub fn seen_for(&self, to: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.to == to)
            .cloned()
            .collect()
    }
}

/// Parses an RFC 3339 time from a record.
pub fn at(v: &serde_json::Value) -> std::time::SystemTime {
    humantime::parse_rfc3339_weak(v.as_str().unwrap_or("")).unwrap()
}

/// One request a test receiver got.
#[derive(Clone, Debug)]
pub struct Got {
    pub id: String,
    pub event_type: String,
    pub verified: bool,
    pub status: u16,
    pub at: Instant,
}

/// A webhook receiver on loopback that verifies signatures the Svix way and
/// answers with `status` (changeable), after `delay`.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub got: Arc<std::sync::Mutex<Vec<Got>>>,
    pub status: Arc<std::sync::atomic::AtomicU16>,
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    pub token: CancellationToken,
}

impl Receiver {
    pub async fn start(secret: &str) -> Self {
        use warp::Filter as _;
        let verifier = rebound::ingress::signature::Verifier::new(
            &[rebound::config::Secret::new(secret)],
            rebound::ingress::signature::DEFAULT_TOLERANCE,
        )
        .unwrap();
        let got: Arc<std::sync::Mutex<Vec<Got>>> = Arc::default();
        let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (g, st, d) = (got.clone(), status.clone(), delay_ms.clone());
        let route = warp::any()
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .then(move |h: warp::http::HeaderMap, body: bytes::Bytes| {
                let (g, st, d, verifier) = (g.clone(), st.clone(), d.clone(), verifier.clone());
                async move {
                    let delay = d.load(std::sync::atomic::Ordering::SeqCst);
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                    }
                    let headers = rebound::ingress::signature::WebhookHeaders::from_map(&h);
                    let verified = verifier
                        .verify(headers, &body, rebound::ingress::signature::now_secs())
                        .is_ok();
                    let event: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or_default();
                    let code = st.load(std::sync::atomic::Ordering::SeqCst);
                    g.lock().unwrap().push(Got {
                        id: headers.id.unwrap_or("").to_string(),
                        event_type: event["type"].as_str().unwrap_or("").to_string(),
                        verified,
                        status: code,
                        at: Instant::now(),
                    });
                    use warp::Reply as _;
                    warp::reply::with_status("", warp::http::StatusCode::from_u16(code).unwrap())
                        .into_response()
                }
            })
            .boxed();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let token = CancellationToken::new();
        tokio::spawn(rebound::http::serve(route, listener, token.clone()));
        Self {
            url,
            got,
            status,
            delay_ms,
            token,
        }
    }

    pub fn set_status(&self, s: u16) {
        self.status.store(s, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Deliveries (not probes) answered 2xx.
    pub fn delivered(&self) -> Vec<Got> {
        self.got()
            .into_iter()
            .filter(|g| g.status < 300 && g.event_type != "rebound.probe")
            .collect()
    }
}
