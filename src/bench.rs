//! `rebound bench`: load generators that run the real code and print one
//! JSON line, so performance is measured by a command anyone can rerun, not
//! asserted by timing tests.
//!
//! The queue bench runs under a fresh random prefix against the configured
//! Redis and deletes its keys afterwards.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use rand::Rng as _;
use redis::AsyncCommands as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::app::{run_work, Context};
use crate::cli::{BenchCommand, BenchIngressArgs, BenchMode, BenchQueueArgs};
use crate::config::{decode_whsec, Config, Secret};
use crate::ingress::signature::{now_secs, sign};
use crate::queue::{now_ms, Job};
use crate::worker::{Handler, Handlers, JobError};

const QUEUE: &str = "bench";
const KIND: &str = "bench.noop";

/// Runs one benchmark and prints its JSON result line.
///
/// # Errors
/// Redis is unreachable or the benchmark could not finish.
pub async fn run(cfg: Config, cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Queue(args) => {
            let out = queue(cfg, &args).await?;
            println!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Ingress(args) => {
            let out = ingress(cfg, &args).await?;
            println!("{out}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Peak resident set size of this process, in MiB (Linux; 0 elsewhere).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Percentile of sorted microsecond samples, in ms.
fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

#[derive(Debug)]
struct Recorder {
    done: AtomicUsize,
    target: usize,
    latencies_us: Mutex<Vec<u64>>,
    last_done_us: std::sync::atomic::AtomicU64,
    finished: Notify,
}

#[derive(Debug)]
struct Noop(Arc<Recorder>);

impl Handler for Noop {
    fn handle<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let now = now_us();
            let sent = job.payload.get("t").and_then(|v| v.as_u64()).unwrap_or(now);
            if let Ok(mut l) = self.0.latencies_us.lock() {
                l.push(now.saturating_sub(sent));
            }
            self.0.last_done_us.fetch_max(now, Ordering::Relaxed);
            if self.0.done.fetch_add(1, Ordering::AcqRel) + 1 >= self.0.target {
                self.0.finished.notify_one();
            }
            Ok(())
        })
    }
}

fn job(t_us: u64) -> Job {
    Job::new(QUEUE, KIND, 3, serde_json::json!({ "t": t_us }))
}

async fn queue(mut cfg: Config, a: &BenchQueueArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(a.jobs > 0, "--jobs must be at least 1");
    anyhow::ensure!(
        a.concurrency > 0 && a.concurrency <= 10_000,
        "--concurrency must be between 1 and 10000"
    );
    let tag: u32 = rand::rng().random();
    cfg.prefix = format!("{}:bench:{tag:08x}", cfg.prefix);
    cfg.worker.queues = vec![QUEUE.into()];
    cfg.worker.concurrency = a.concurrency;
    cfg.worker.batch_size = a.concurrency.min(1000);
    cfg.worker.poll_interval = Duration::from_millis(20);
    let ctx = Context::connect(cfg).await?;
    let rec = Arc::new(Recorder {
        done: AtomicUsize::new(0),
        target: a.jobs,
        latencies_us: Mutex::new(Vec::with_capacity(a.jobs)),
        last_done_us: Default::default(),
        finished: Notify::new(),
    });
    let mut handlers = Handlers::new();
    handlers.register(KIND, Arc::new(Noop(rec.clone())));
    let token = CancellationToken::new();
    let chunk = 1000;
    let mut result = serde_json::json!({
        "bench": "queue",
        "mode": format!("{:?}", a.mode).to_lowercase(),
        "jobs": a.jobs,
        "concurrency": a.concurrency,
    });
    let wait_done = |rec: Arc<Recorder>| async move {
        loop {
            let notified = rec.finished.notified();
            if rec.done.load(Ordering::Acquire) >= rec.target {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    };
    let deadline = Duration::from_secs(600);
    match a.mode {
        BenchMode::Drain => {
            let t0 = Instant::now();
            let mut left = a.jobs;
            while left > 0 {
                let n = left.min(chunk);
                let jobs: Vec<Job> = (0..n).map(|_| job(now_us())).collect();
                ctx.queue.enqueue_many(&jobs).await?;
                left -= n;
            }
            let enq = t0.elapsed();
            let t1 = Instant::now();
            let worker = tokio::spawn(run_work(ctx.clone(), handlers, None, token.clone()));
            tokio::time::timeout(deadline, wait_done(rec.clone())).await?;
            let took = t1.elapsed();
            token.cancel();
            let _ = worker.await;
            result["enqueue_per_sec"] = rate(a.jobs, enq).into();
            result["processed_per_sec"] = rate(a.jobs, took).into();
            result["drain_seconds"] = round3(took.as_secs_f64()).into();
        }
        BenchMode::Steady => {
            let worker = tokio::spawn(run_work(ctx.clone(), handlers, None, token.clone()));
            tokio::time::sleep(Duration::from_millis(200)).await;
            let t0 = Instant::now();
            let per_tick = (a.rate as f64 / 1000.0).max(1.0);
            let mut sent = 0usize;
            let mut owed = 0.0f64;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while sent < a.jobs {
                tick.tick().await;
                owed += per_tick;
                let n = (owed as usize).min(a.jobs - sent);
                owed -= n as f64;
                if n == 0 {
                    continue;
                }
                let jobs: Vec<Job> = (0..n).map(|_| job(now_us())).collect();
                ctx.queue.enqueue_many(&jobs).await?;
                sent += n;
            }
            let offered = t0.elapsed();
            tokio::time::timeout(deadline, wait_done(rec.clone())).await?;
            token.cancel();
            let _ = worker.await;
            result["offered_per_sec"] = rate(a.jobs, offered).into();
            result["target_rate"] = a.rate.into();
        }
        BenchMode::Delayed => {
            let due_ms = now_ms() + 1500;
            let due_us = (due_ms as u64) * 1000;
            let mut left = a.jobs;
            while left > 0 {
                let n = left.min(chunk);
                let jobs: Vec<Job> = (0..n).map(|_| job(due_us)).collect();
                ctx.queue.schedule_many(&jobs, due_ms).await?;
                left -= n;
            }
            anyhow::ensure!(
                now_ms() < due_ms,
                "scheduling {} jobs took longer than the 1.5 s lead time; use fewer jobs",
                a.jobs
            );
            let worker = tokio::spawn(run_work(ctx.clone(), handlers, None, token.clone()));
            tokio::time::timeout(deadline, wait_done(rec.clone())).await?;
            token.cancel();
            let _ = worker.await;
            let last = rec.last_done_us.load(Ordering::Relaxed);
            result["all_done_after_due_ms"] =
                round3(last.saturating_sub(due_us) as f64 / 1000.0).into();
        }
    }
    let mut lat = rec
        .latencies_us
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    lat.sort_unstable();
    result["p50_ms"] = round3(pct(&lat, 0.50)).into();
    result["p99_ms"] = round3(pct(&lat, 0.99)).into();
    result["max_ms"] = round3(pct(&lat, 1.0)).into();
    result["processed"] = rec.done.load(Ordering::Acquire).into();
    result["peak_rss_mib"] = round3(peak_rss_mib()).into();
    cleanup(&ctx).await;
    Ok(result)
}

/// Posts `requests` distinct signed Resend events with `concurrency`
/// keep-alive connections. Without `--url` the ingress runs in this process
/// on a free port under a fresh prefix (and a generated secret), so the
/// figure includes verification, the Lua dedupe + XADD and the HTTP stack,
/// with the load generator sharing the machine.
async fn ingress(mut cfg: Config, a: &BenchIngressArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(a.requests > 0, "--requests must be at least 1");
    anyhow::ensure!(
        a.concurrency > 0 && a.concurrency <= 4096,
        "--concurrency must be between 1 and 4096"
    );
    let token = CancellationToken::new();
    let (url, secret, ctx) = match &a.url {
        Some(url) => {
            let secret = cfg
                .ingress
                .webhook_secrets
                .first()
                .cloned()
                .ok_or_else(|| {
                    anyhow::anyhow!("--url needs the ingress's secret: set RESEND_WEBHOOK_SECRET")
                })?;
            let ctx = Context::connect(cfg).await?;
            (
                format!("{}/webhooks/resend", url.trim_end_matches('/')),
                secret,
                ctx,
            )
        }
        None => {
            let tag: u32 = rand::rng().random();
            cfg.prefix = format!("{}:bench:{tag:08x}", cfg.prefix);
            let key: [u8; 24] = rand::rng().random();
            use base64::Engine as _;
            let secret = Secret::new(format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(key)
            ));
            cfg.ingress.webhook_secrets = vec![secret.clone()];
            cfg.redis.pool_size = cfg.redis.pool_size.max(a.concurrency.min(256));
            let ctx = Context::connect(cfg).await?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}/webhooks/resend", listener.local_addr()?);
            let routes = crate::app::serve_routes(&ctx)?;
            tokio::spawn(crate::http::serve(routes, listener, token.clone()));
            (url, secret, ctx)
        }
    };
    let key = decode_whsec(secret.expose()).map_err(|e| anyhow::anyhow!(e))?;
    let stream = ctx.queue.keys().stream(crate::queue::EVENTS);
    let before: u64 = {
        let mut c = ctx.queue.redis().conn().await?;
        c.xlen(&stream).await?
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(a.concurrency)
        .http1_only()
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let run_tag: u64 = rand::rng().random();
    let started = Instant::now();
    let workers: Vec<_> = (0..a.concurrency)
        .map(|_| {
            let client = client.clone();
            let next = next.clone();
            let key = key.clone();
            let url = url.clone();
            let total = a.requests;
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0usize;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    let id = format!("msg_bench_{run_tag:016x}_{n}");
                    let body = format!(
                        r#"{{"type":"email.delivered","created_at":"2026-11-22T23:41:12.126Z","data":{{"email_id":"{n}","to":["delivered@resend.dev"],"subject":"bench"}}}}"#
                    );
                    let ts = now_secs();
                    let sig = sign(&key, &id, ts, body.as_bytes());
                    let t0 = Instant::now();
                    let r = client
                        .post(&url)
                        .header("svix-id", &id)
                        .header("svix-timestamp", ts.to_string())
                        .header("svix-signature", sig)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    match r {
                        Ok(resp) if resp.status().as_u16() == 200 => {
                            let _ = resp.bytes().await;
                        }
                        Ok(resp) => {
                            errors += 1;
                            let _ = resp.bytes().await;
                        }
                        Err(_) => errors += 1,
                    }
                    lat.push(t0.elapsed().as_micros() as u64);
                }
                (lat, errors)
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(a.requests);
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await?;
        lat.extend(l);
        errors += e;
    }
    let took = started.elapsed();
    let after: u64 = {
        let mut c = ctx.queue.redis().conn().await?;
        c.xlen(&stream).await?
    };
    token.cancel();
    lat.sort_unstable();
    let out = serde_json::json!({
        "bench": "ingress",
        "requests": a.requests,
        "concurrency": a.concurrency,
        "requests_per_sec": rate(a.requests, took),
        "p50_ms": round3(pct(&lat, 0.50)),
        "p99_ms": round3(pct(&lat, 0.99)),
        "max_ms": round3(pct(&lat, 1.0)),
        "non_200": errors,
        "stream_entries_added": after.saturating_sub(before),
        "peak_rss_mib": round3(peak_rss_mib()),
    });
    if a.url.is_none() {
        let mut c = ctx.queue.redis().conn().await?;
        let _: Result<i64, _> = c.del(&stream).await;
        // Dedupe keys expire on their own; delete them now so a bench leaves nothing.
        let mut cursor: u64 = 0;
        loop {
            let (next_cursor, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:seen:*", ctx.queue.keys().prefix()))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await?;
            if !keys.is_empty() {
                let _: i64 = c.del(&keys).await?;
            }
            if next_cursor == 0 {
                break;
            }
            cursor = next_cursor;
        }
    }
    Ok(out)
}

fn rate(n: usize, d: Duration) -> f64 {
    (n as f64 / d.as_secs_f64().max(1e-9)).round()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn cleanup(ctx: &Context) {
    let k = ctx.queue.keys();
    if let Ok(mut c) = ctx.queue.redis().conn().await {
        let _: Result<i64, _> = c.del(&[k.stream(QUEUE), k.retry(), k.dead()]).await;
    }
}
