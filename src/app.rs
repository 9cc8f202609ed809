//! Composes the roles (`up`, `serve`, `work`) and runs every CLI command.
//!
//! Each role is an `async fn` that takes its listeners and a cancellation
//! token, so integration tests start the real thing on port 0 and stop it
//! the way SIGTERM would.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::Filter as _;

use crate::cli::{Cli, Command, DlqCommand, SubscriptionsCommand, SuppressionCommand};
use crate::config::Config;
use crate::email::{self, EmailService};
use crate::forward::{self, FanOut, ForwardService};
use crate::ingress::{self, Ingress};
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::queue::{Queue, RedisPools};
use crate::worker::{Handlers, Worker, WorkerOptions};
use crate::{bench, redis_server, scheduler, shutdown};

/// Everything a role needs: config, Redis, metrics.
#[derive(Clone, Debug)]
pub struct Context {
    /// The effective configuration.
    pub cfg: Arc<Config>,
    /// Producer / admin handle of the queue.
    pub queue: Queue,
    /// This process's metrics.
    pub metrics: Arc<Metrics>,
}

impl Context {
    /// Builds pools and metrics and checks that Redis answers.
    ///
    /// # Errors
    /// Redis is unreachable: the one-line reason names the URL (credentials masked).
    pub async fn connect(cfg: Config) -> anyhow::Result<Self> {
        let ctx = Self::new(cfg)?;
        ctx.queue.redis().ping().await.with_context(|| {
            format!(
                "cannot reach redis at {}",
                mask_url(ctx.cfg.redis.url.expose())
            )
        })?;
        Ok(ctx)
    }

    /// Builds pools and metrics without touching Redis.
    ///
    /// # Errors
    /// The Redis URL cannot be parsed.
    pub fn new(cfg: Config) -> anyhow::Result<Self> {
        let redis = RedisPools::new(&cfg).context("invalid redis.url")?;
        let queue = Queue::new(Keys::new(cfg.prefix.clone()), redis);
        Ok(Self {
            cfg: Arc::new(cfg),
            queue,
            metrics: Metrics::fresh()?,
        })
    }
}

fn mask_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://****@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Binds a listener, naming the setting on failure.
///
/// # Errors
/// The address is taken or not ours.
pub async fn bind(addr: &str, setting: &str) -> anyhow::Result<TcpListener> {
    let sa: SocketAddr = addr
        .parse()
        .with_context(|| format!("{setting}: `{addr}` is not host:port"))?;
    TcpListener::bind(sa)
        .await
        .with_context(|| format!("cannot listen on {addr} ({setting})"))
}

/// The handlers of every job kind rebound knows.
///
/// # Errors
/// The Resend client cannot be built.
pub fn handlers(ctx: &Context) -> anyhow::Result<Handlers> {
    let email = Arc::new(EmailService::new(ctx.clone())?);
    let fwd = Arc::new(ForwardService::new(ctx.clone())?);
    let mut h = Handlers::new();
    h.register(email::SEND, Arc::new(email::SendHandler(email.clone())));
    h.register(
        ingress::RESEND_EVENT,
        Arc::new(FanOut {
            forward: fwd.clone(),
            inner: email::EventHandler(email),
        }),
    );
    // Events from other senders are for forwarding only.
    h.register(
        ingress::SOURCE_EVENT,
        Arc::new(FanOut {
            forward: fwd.clone(),
            inner: Nothing,
        }),
    );
    h.register(forward::DELIVER, Arc::new(forward::DeliverHandler(fwd)));
    Ok(h)
}

/// Nothing more to do once an event has been fanned out.
#[derive(Debug)]
struct Nothing;

impl crate::worker::Handler for Nothing {
    fn handle<'a>(
        &'a self,
        _job: &'a crate::queue::Job,
    ) -> futures::future::BoxFuture<'a, Result<(), crate::worker::JobError>> {
        Box::pin(async { Ok(()) })
    }
}

/// The worker role: consumer-group worker, scheduler, automatic resume of
/// suspended subscriptions and a `/metrics` endpoint on `metrics`, until
/// `shutdown`. The gauge sampler is started once per process by the caller.
pub async fn run_work(
    ctx: Context,
    handlers: Handlers,
    metrics: Option<TcpListener>,
    shutdown: CancellationToken,
) {
    let opts = WorkerOptions::from_config(&ctx.cfg);
    let worker = Worker::new(ctx.queue.clone(), handlers, opts, ctx.metrics.clone());
    let queues = ctx.cfg.worker.queues.clone();
    let sched = tokio::spawn(scheduler::run(
        ctx.queue.clone(),
        ctx.metrics.clone(),
        ctx.cfg.worker.poll_interval,
        shutdown.clone(),
    ));
    let server = metrics.map(|l| tokio::spawn(serve_metrics(ctx.clone(), l, shutdown.clone())));
    let resumer = match ForwardService::new(ctx.clone()) {
        Ok(f) => {
            if let Err(e) = f.sync_config().await {
                tracing::warn!(error = %e, "cannot write configured subscriptions to redis yet; they are written at the next start");
            }
            Some(tokio::spawn(f.auto_resume(shutdown.clone())))
        }
        Err(e) => {
            tracing::error!(error = %e, "forwarding disabled: cannot build its HTTP client");
            None
        }
    };
    worker.run(&queues, shutdown.clone()).await;
    let _ = sched.await;
    if let Some(r) = resumer {
        let _ = r.await;
    }
    if let Some(s) = server {
        let _ = s.await;
    }
}

/// `/metrics`, `/healthz` and `/readyz` alone, for processes without the ingress.
pub async fn serve_metrics(ctx: Context, listener: TcpListener, shutdown: CancellationToken) {
    let routes = ops_routes(ctx)
        .map(warp::Reply::into_response)
        .recover(ingress::recover)
        .unify()
        .boxed();
    crate::http::serve(routes, listener, shutdown).await;
}

/// Every HTTP route of the `serve` role.
///
/// # Errors
/// The ingress refuses to start (no webhook secret, a bad secret).
pub fn serve_routes(
    ctx: &Context,
) -> Result<warp::filters::BoxedFilter<(warp::reply::Response,)>, ingress::StartError> {
    let ingress = Ingress::new(ctx.clone())?;
    let email = Arc::new(
        EmailService::new(ctx.clone()).map_err(|e| ingress::StartError::Service(e.to_string()))?,
    );
    let fwd = Arc::new(
        ForwardService::new(ctx.clone())
            .map_err(|e| ingress::StartError::Service(e.to_string()))?,
    );
    Ok(ingress::webhook_routes(ingress)
        .or(ingress::dead_letter_routes(ctx.clone()))
        .unify()
        .or(ingress::emails::routes(ctx.clone(), email))
        .unify()
        .or(ingress::subscriptions::routes(ctx.clone(), fwd))
        .unify()
        .or(ops_routes(ctx.clone()).map(warp::Reply::into_response))
        .unify()
        .recover(ingress::recover)
        .unify()
        .boxed())
}

/// The serve role: ingress, admin API and `/metrics` on `listener` until `shutdown`.
///
/// # Errors
/// The ingress refuses to start.
pub async fn run_serve(
    ctx: Context,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let routes = serve_routes(&ctx)?;
    crate::http::serve(routes, listener, shutdown).await;
    Ok(())
}

/// Samples the queue gauges of this process (one sampler per process).
pub fn start_sampler(ctx: &Context, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(crate::metrics::sampler(
        ctx.queue.clone(),
        ctx.cfg.worker.queues.clone(),
        ctx.metrics.clone(),
        Duration::from_secs(5),
        shutdown,
    ))
}

/// The operational routes every role serves.
pub fn ops_routes(ctx: Context) -> warp::filters::BoxedFilter<(Box<dyn warp::Reply>,)> {
    let m = ctx.metrics.clone();
    let metrics = warp::path!("metrics").and(warp::get()).map(move || {
        Box::new(warp::reply::with_header(
            m.render(),
            "content-type",
            "text/plain; version=0.0.4",
        )) as Box<dyn warp::Reply>
    });
    let healthz = warp::path!("healthz").and(warp::get()).map(|| {
        Box::new(warp::reply::json(&serde_json::json!({"status": "ok"}))) as Box<dyn warp::Reply>
    });
    let readyz = warp::path!("readyz").and(warp::get()).then(move || {
        let q = ctx.queue.clone();
        async move {
            match q.redis().ping().await {
                Ok(()) => Box::new(warp::reply::json(&serde_json::json!({"status": "ready"}))) as Box<dyn warp::Reply>,
                Err(e) => Box::new(warp::reply::with_status(
                    warp::reply::json(&serde_json::json!({"status": "unavailable", "error": "redis_unavailable", "message": e.to_string()})),
                    warp::http::StatusCode::SERVICE_UNAVAILABLE,
                )),
            }
        }
    });
    metrics.or(healthz).unify().or(readyz).unify().boxed()
}

/// Runs one CLI command; the exit code says how it went.
///
/// # Errors
/// Bad configuration, unreachable Redis, or a command that failed; the
/// message is one line for the operator.
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::CheckConfig => {
            print!("{}", cfg.to_masked_toml()?);
            warn_risky(&cfg);
            Ok(ExitCode::SUCCESS)
        }
        Command::Work {
            concurrency,
            metrics_listen,
        } => {
            if let Some(c) = concurrency {
                anyhow::ensure!(
                    c > 0 && c <= 10_000,
                    "--concurrency must be between 1 and 10000"
                );
                cfg.worker.concurrency = c;
            }
            if let Some(m) = metrics_listen {
                cfg.worker.metrics_listen = m;
            }
            warn_risky(&cfg);
            let ctx = Context::connect(cfg).await?;
            let listener = bind(&ctx.cfg.worker.metrics_listen, "worker.metrics_listen").await?;
            tracing::info!(metrics = %ctx.cfg.worker.metrics_listen, "rebound work");
            let token = CancellationToken::new();
            shutdown::on_signal(token.clone());
            let sampler = start_sampler(&ctx, token.clone());
            let handlers = handlers(&ctx)?;
            run_work(ctx, handlers, Some(listener), token).await;
            let _ = sampler.await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Up { sandbox } => {
            let _redis = redis_server::ensure_local(&mut cfg).await?;
            let token = CancellationToken::new();
            let mut sandbox_task = None;
            if sandbox {
                let listener = prepare_sandbox(&mut cfg).await?;
                let opts = crate::sandbox::SandboxOptions::from_config(&cfg)?;
                sandbox_task = Some(tokio::spawn(crate::sandbox::run(
                    opts,
                    listener,
                    token.clone(),
                )));
            }
            warn_risky(&cfg);
            let ctx = Context::connect(cfg).await?;
            let routes = serve_routes(&ctx)?;
            let listener = bind(&ctx.cfg.ingress.listen, "ingress.listen").await?;
            tracing::info!(listen = %ctx.cfg.ingress.listen, "rebound up: ingress, workers, scheduler, reclaimer and /metrics in one process");
            shutdown::on_signal(token.clone());
            let sampler = start_sampler(&ctx, token.clone());
            let server = tokio::spawn(crate::http::serve(routes, listener, token.clone()));
            run_work(ctx.clone(), handlers(&ctx)?, None, token).await;
            let _ = server.await;
            let _ = sampler.await;
            if let Some(t) = sandbox_task {
                let _ = t.await;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve => {
            warn_risky(&cfg);
            let ctx = Context::connect(cfg).await?;
            let routes = serve_routes(&ctx)?;
            let listener = bind(&ctx.cfg.ingress.listen, "ingress.listen").await?;
            tracing::info!(listen = %ctx.cfg.ingress.listen, "rebound serve");
            let token = CancellationToken::new();
            shutdown::on_signal(token.clone());
            let sampler = start_sampler(&ctx, token.clone());
            crate::http::serve(routes, listener, token).await;
            let _ = sampler.await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { json } => {
            let ctx = Context::connect(cfg).await?;
            let stats = ctx.queue.stats(&ctx.cfg.worker.queues).await?;
            if json {
                println!("{}", serde_json::to_string(&stats)?);
            } else {
                println!(
                    "{:<12} {:>10} {:>10} {:>10} {:>14}",
                    "QUEUE", "LENGTH", "PENDING", "CONSUMERS", "OLDEST_PENDING"
                );
                for q in &stats.queues {
                    println!(
                        "{:<12} {:>10} {:>10} {:>10} {:>13.1}s",
                        q.queue,
                        q.length,
                        q.pending,
                        q.consumers,
                        q.oldest_pending_ms as f64 / 1000.0
                    );
                }
                println!("retry scheduled: {}", stats.retry);
                println!("dead letters:    {}", stats.dead);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq(cmd) => {
            let ctx = Context::connect(cfg).await?;
            dlq(&ctx, cmd).await
        }
        Command::Suppression(cmd) => {
            let ctx = Context::connect(cfg).await?;
            suppression(&ctx, cmd).await
        }
        Command::Subscriptions(cmd) => {
            let ctx = Context::connect(cfg).await?;
            let fwd = ForwardService::new(ctx.clone())?;
            fwd.sync_config().await?;
            match cmd {
                SubscriptionsCommand::List => {
                    let all = fwd.list().await?;
                    if all.is_empty() {
                        println!("no subscriptions");
                    } else {
                        println!(
                            "{:<20} {:<10} {:>8} {:>7}  {:<40} LAST ERROR",
                            "NAME", "STATE", "FAILURES", "PARKED", "URL"
                        );
                        for s in all {
                            let err = if s.last_error.is_empty() {
                                String::new()
                            } else {
                                format!("{} ({})", s.last_error, s.last_error_at)
                            };
                            println!(
                                "{:<20} {:<10} {:>8} {:>7}  {:<40} {}",
                                s.name, s.state, s.failures, s.parked, s.url, err
                            );
                        }
                    }
                }
                SubscriptionsCommand::Resume { name } => {
                    let released = fwd.resume(&name).await?;
                    println!("{name} is active; {released} parked deliveries released");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sandbox => {
            let generated = ensure_webhook_secret(&mut cfg);
            let opts = crate::sandbox::SandboxOptions::from_config(&cfg)?;
            let listener = bind(&cfg.sandbox.listen, "sandbox.listen").await?;
            if generated {
                eprintln!("no webhook secret configured; signing with a generated one. Start the ingress with RESEND_WEBHOOK_SECRET={}", opts.webhook_secret);
            }
            tracing::info!(listen = %cfg.sandbox.listen, webhook_url = %opts.webhook_url, "Resend emulator running; point RESEND_API_URL at http://{}", cfg.sandbox.listen);
            let token = CancellationToken::new();
            shutdown::on_signal(token.clone());
            crate::sandbox::run(opts, listener, token).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(b) => bench::run(cfg, b).await,
    }
}

/// Generates a webhook secret when none is configured; returns whether it did.
fn ensure_webhook_secret(cfg: &mut Config) -> bool {
    if !cfg.ingress.webhook_secrets.is_empty() || !cfg.sandbox.webhook_secret.is_empty() {
        return false;
    }
    use base64::Engine as _;
    use rand::Rng as _;
    let key: [u8; 32] = rand::rng().random();
    let secret = crate::config::Secret::new(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    ));
    cfg.ingress.webhook_secrets = vec![secret];
    true
}

/// Points `cfg` at a local Resend emulator (and binds its listener) for
/// `up --sandbox`: the API URL, a placeholder key and sender, a shared
/// generated webhook secret, and a development API key when none is set.
async fn prepare_sandbox(cfg: &mut Config) -> anyhow::Result<TcpListener> {
    let listener = bind(&cfg.sandbox.listen, "sandbox.listen").await?;
    cfg.resend.api_url = format!("http://{}", cfg.sandbox.listen);
    if cfg.resend.api_key.is_empty() {
        cfg.resend.api_key = crate::config::Secret::new("re_sandbox");
    }
    if cfg.resend.from.is_empty() {
        cfg.resend.from = "Acme <onboarding@resend.dev>".into();
    }
    ensure_webhook_secret(cfg);
    if cfg.ingress.api_key.is_empty() {
        cfg.ingress.api_key = crate::config::Secret::new("sandbox");
        tracing::info!("sandbox: the /v1 API key is `sandbox` (set REBOUND_API_KEY to choose one)");
    }
    tracing::info!(emulator = %cfg.sandbox.listen, "sandbox: sending through the Resend emulator; no account needed");
    Ok(listener)
}

async fn suppression(ctx: &Context, cmd: SuppressionCommand) -> anyhow::Result<ExitCode> {
    let email = EmailService::new(ctx.clone())?;
    match cmd {
        SuppressionCommand::List => {
            let all = email.suppressions().await?;
            if all.is_empty() {
                println!("no suppressed recipients");
            }
            for (addr, s) in all {
                let detail = if s.detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.detail)
                };
                println!("{addr}\t{}{detail}\t{}", s.reason, s.at);
            }
        }
        SuppressionCommand::Add {
            email: addr,
            reason,
        } => {
            anyhow::ensure!(
                email::valid_address(&addr),
                "`{addr}` is not an email address"
            );
            if email.suppress(&addr, &reason, "", None).await? {
                println!("suppressed {}", email::bare_address(&addr));
            } else {
                println!("{} was already suppressed", email::bare_address(&addr));
            }
        }
        SuppressionCommand::Remove { email: addr } => {
            if email.unsuppress(&addr).await? {
                println!("{} may be mailed again", email::bare_address(&addr));
            } else {
                eprintln!("{} was not suppressed", email::bare_address(&addr));
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Settings that are valid but likely to hurt, said once at startup.
fn warn_risky(cfg: &Config) {
    if cfg.worker.visibility_timeout < Duration::from_secs(5) {
        tracing::warn!(visibility_timeout = ?cfg.worker.visibility_timeout, "a visibility timeout this short reclaims jobs that are merely slow");
    }
    if cfg.ingress.allow_unsigned {
        tracing::warn!(
            "ingress.allow_unsigned = true: webhooks are accepted WITHOUT signature verification"
        );
    }
}

async fn dlq(ctx: &Context, cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DlqCommand::List { queue, limit, json } => {
            let list = ctx
                .queue
                .dead_letters(queue.as_deref(), limit, None)
                .await?;
            if json {
                for d in &list {
                    println!("{}", serde_json::to_string(d)?);
                }
            } else if list.is_empty() {
                println!("no dead letters");
            } else {
                println!(
                    "{:<18} {:<9} {:<16} {:<13} {:>8}  {:<24} ERROR",
                    "ID", "QUEUE", "KIND", "REASON", "ATTEMPTS", "FAILED_AT"
                );
                for d in &list {
                    let err: String = d.error.chars().take(80).collect();
                    println!(
                        "{:<18} {:<9} {:<16} {:<13} {:>8}  {:<24} {}",
                        d.id, d.queue, d.kind, d.reason, d.attempts, d.failed_at, err
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { id } => {
            let d = ctx.queue.dead_letter(&id).await?;
            let job: serde_json::Value =
                serde_json::from_str(&d.job).unwrap_or(serde_json::Value::String(d.job.clone()));
            let mut v = serde_json::to_value(&d)?;
            v["job"] = job;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay { ids, all, queue } => {
            let ids: Vec<String> = if all {
                ctx.queue
                    .dead_letters(queue.as_deref(), usize::MAX, None)
                    .await?
                    .into_iter()
                    .map(|d| d.id)
                    .collect()
            } else {
                anyhow::ensure!(!ids.is_empty(), "name dead-letter ids to replay, or --all");
                ids
            };
            let mut failed = 0;
            for id in &ids {
                match ctx.queue.replay(id).await {
                    Ok(job) => println!(
                        "replayed {id} -> {} job {} ({})",
                        job.queue, job.id, job.kind
                    ),
                    Err(e) => {
                        failed += 1;
                        eprintln!("cannot replay {id}: {e}");
                    }
                }
            }
            println!("{} replayed, {failed} failed", ids.len() - failed);
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        DlqCommand::Purge { queue, yes } => {
            anyhow::ensure!(yes, "purging dead letters cannot be undone; add --yes");
            let n = ctx.queue.purge_dead(queue.as_deref()).await?;
            println!("purged {n} dead letters");
            Ok(ExitCode::SUCCESS)
        }
    }
}
