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

use crate::cli::{Cli, Command, DlqCommand};
use crate::config::Config;
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
pub fn handlers(_ctx: &Context) -> Handlers {
    Handlers::new()
}

/// The worker role: consumer-group worker, scheduler, gauge sampler and a
/// `/metrics` endpoint on `metrics`, until `shutdown`.
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
    let sampler = tokio::spawn(crate::metrics::sampler(
        ctx.queue.clone(),
        queues.clone(),
        ctx.metrics.clone(),
        Duration::from_secs(5),
        shutdown.clone(),
    ));
    let server = metrics.map(|l| tokio::spawn(serve_metrics(ctx.clone(), l, shutdown.clone())));
    worker.run(&queues, shutdown.clone()).await;
    let _ = sched.await;
    let _ = sampler.await;
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
    Ok(ingress::webhook_routes(ingress)
        .or(ingress::dead_letter_routes(ctx.clone()))
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
            let handlers = handlers(&ctx);
            run_work(ctx, handlers, Some(listener), token).await;
            let _ = sampler.await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Up { sandbox } => {
            if sandbox {
                return not_available("rebound up --sandbox", "issue #4 (email loop and sandbox)");
            }
            let _redis = redis_server::ensure_local(&mut cfg).await?;
            warn_risky(&cfg);
            let ctx = Context::connect(cfg).await?;
            let routes = serve_routes(&ctx)?;
            let listener = bind(&ctx.cfg.ingress.listen, "ingress.listen").await?;
            tracing::info!(listen = %ctx.cfg.ingress.listen, "rebound up: ingress, workers, scheduler, reclaimer and /metrics in one process");
            let token = CancellationToken::new();
            shutdown::on_signal(token.clone());
            let sampler = start_sampler(&ctx, token.clone());
            let server = tokio::spawn(crate::http::serve(routes, listener, token.clone()));
            run_work(ctx.clone(), handlers(&ctx), None, token).await;
            let _ = server.await;
            let _ = sampler.await;
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
        Command::Suppression(_) => not_available("rebound suppression", "issue #4 (email loop)"),
        Command::Subscriptions(_) => {
            not_available("rebound subscriptions", "issue #6 (forwarding)")
        }
        Command::Sandbox => not_available("rebound sandbox", "issue #4 (email loop)"),
        Command::Bench(b) => bench::run(cfg, b).await,
    }
}

fn not_available(what: &str, issue: &str) -> anyhow::Result<ExitCode> {
    eprintln!("{what}: not available yet (arrives with {issue})");
    Ok(ExitCode::from(2))
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
