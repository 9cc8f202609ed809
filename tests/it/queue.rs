//! The queue engine against a real Redis: ack, retry, dead letters, poison,
//! crash recovery, concurrent schedulers, replay, bounded streams, outages
//! and graceful shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rebound::app::Context;
use rebound::queue::{now_ms, Job, EMAILS, EVENTS};
use rebound::worker::JobError;
use redis::Commands as _;

use crate::utils::*;

const KIND: &str = "test.job";

fn job(queue: &str) -> Job {
    Job::new(queue, KIND, 3, serde_json::json!({"n": 1}))
}

fn dead_entries(r: &RedisServer, ctx: &Context) -> Vec<HashMap<String, String>> {
    let mut c = r.conn();
    let v: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(ctx.queue.keys().dead())
        .arg("-")
        .arg("+")
        .query(&mut c)
        .unwrap();
    v.into_iter().map(|(_, f)| f).collect()
}

fn xlen(r: &RedisServer, key: &str) -> usize {
    r.conn().xlen(key).unwrap()
}

fn pending(r: &RedisServer, ctx: &Context, queue: &str) -> usize {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(ctx.queue.keys().stream(queue))
        .arg("rebound")
        .query(&mut r.conn())
        .unwrap();
    match v {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n as usize,
            _ => 0,
        },
        _ => 0,
    }
}

#[tokio::test]
async fn processed_jobs_are_acknowledged_and_deleted() {
    let r = shared_redis();
    let ctx = Context::connect(test_config(&r.url())).await.unwrap();
    let calls = Arc::new(Calls::default());
    let w = RunningWorker::start(&ctx, recording(KIND, calls.clone(), |_| Ok(())));
    for _ in 0..100 {
        ctx.queue.enqueue(&job(EVENTS)).await.unwrap();
    }
    eventually(Duration::from_secs(10), "100 jobs done", || async {
        calls.distinct() == 100
    })
    .await;
    eventually(Duration::from_secs(5), "stream emptied", || async {
        xlen(r, &ctx.queue.keys().stream(EVENTS)) == 0 && pending(r, &ctx, EVENTS) == 0
    })
    .await;
    w.stop().await;
    assert_eq!(calls.total(), 100, "each job ran once");
    assert!(dead_entries(r, &ctx).is_empty());
}

#[tokio::test]
async fn transient_failures_retry_on_the_configured_schedule() {
    let r = shared_redis();
    let ctx = Context::connect(test_config(&r.url())).await.unwrap();
    let calls = Arc::new(Calls::default());
    // Fails attempts 1 and 2, succeeds on 3; delays are 50ms then 100ms.
    let h = recording(KIND, calls.clone(), |j| {
        if j.attempt < 3 {
            Err(JobError::transient(format!("boom {}", j.attempt)))
        } else {
            Ok(())
        }
    });
    let w = RunningWorker::start(&ctx, h);
    let j = job(EMAILS);
    ctx.queue.enqueue(&j).await.unwrap();
    eventually(Duration::from_secs(10), "third attempt", || async {
        calls.of(&j.id).len() == 3
    })
    .await;
    let runs = calls.of(&j.id);
    assert_eq!(
        runs.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let gap1 = runs[1].1 - runs[0].1;
    let gap2 = runs[2].1 - runs[1].1;
    assert!(
        gap1 >= Duration::from_millis(50),
        "first retry after {gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(100),
        "second retry after {gap2:?}"
    );
    assert!(
        gap2 < Duration::from_secs(2),
        "second retry not lost in the set: {gap2:?}"
    );
    eventually(
        Duration::from_secs(5),
        "retry set and stream empty",
        || async {
            let mut c = r.conn();
            let z: usize = c.zcard(ctx.queue.keys().retry()).unwrap();
            let job_key: bool = c.exists(ctx.queue.keys().job(&j.id)).unwrap();
            z == 0 && !job_key && xlen(r, &ctx.queue.keys().stream(EMAILS)) == 0
        },
    )
    .await;
    w.stop().await;
    assert!(dead_entries(r, &ctx).is_empty());
}

#[tokio::test]
async fn exhausted_jobs_become_dead_letters_with_every_field() {
    let r = shared_redis();
    let ctx = Context::connect(test_config(&r.url())).await.unwrap();
    let calls = Arc::new(Calls::default());
    let w = RunningWorker::start(
        &ctx,
        recording(KIND, calls.clone(), |_| {
            Err(JobError::transient("smtp down"))
        }),
    );
    let j = job(EMAILS);
    ctx.queue.enqueue(&j).await.unwrap();
    eventually(Duration::from_secs(10), "dead letter", || async {
        !dead_entries(r, &ctx).is_empty()
    })
    .await;
    w.stop().await;
    assert_eq!(calls.of(&j.id).len(), 3, "max_attempts = 3");
    let d = &dead_entries(r, &ctx)[0];
    assert_eq!(d["queue"], "emails");
    assert_eq!(d["kind"], KIND);
    assert_eq!(d["reason"], "exhausted");
    assert_eq!(d["error"], "smtp down");
    assert_eq!(d["attempts"], "3");
    assert!(
        d["failed_at"].ends_with('Z'),
        "RFC 3339: {}",
        d["failed_at"]
    );
    let env: Job = serde_json::from_str(&d["job"]).unwrap();
    assert_eq!(env.id, j.id);
    assert_eq!(env.last_error.as_deref(), Some("smtp down"));
    assert_eq!(xlen(r, &ctx.queue.keys().stream(EMAILS)), 0);
    assert_eq!(pending(r, &ctx, EMAILS), 0);
}

#[tokio::test]
async fn permanent_errors_are_dead_lettered_at_once() {
    let r = shared_redis();
    let ctx = Context::connect(test_config(&r.url())).await.unwrap();
    let calls = Arc::new(Calls::default());
    let h = recording(KIND, calls.clone(), |_| {
        Err(JobError::Permanent {
            reason: "invalid_parameter".into(),
            message: "422 from provider".into(),
        })
    });
    let w = RunningWorker::start(&ctx, h);
    let j = job(EMAILS);
    ctx.queue.enqueue(&j).await.unwrap();
    eventually(Duration::from_secs(10), "dead letter", || async {
        !dead_entries(r, &ctx).is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.stop().await;
    assert_eq!(calls.of(&j.id).len(), 1, "no retry of a permanent error");
    let d = &dead_entries(r, &ctx)[0];
    assert_eq!(d["reason"], "invalid_parameter");
    assert_eq!(d["attempts"], "1");
}

#[tokio::test]
async fn poison_entries_and_unknown_kinds_are_dead_lettered() {
    let r = shared_redis();
    let ctx = Context::connect(test_config(&r.url())).await.unwrap();
    let calls = Arc::new(Calls::default());
    let w = RunningWorker::start(&ctx, recording(KIND, calls.clone(), |_| Ok(())));
    let stream = ctx.queue.keys().stream(EVENTS);
    let _: String = r
        .conn()
        .xadd(&stream, "*", &[("job", "{not json")])
        .unwrap();
    let _: String = r.conn().xadd(&stream, "*", &[("other", "field")]).unwrap();
    ctx.queue
        .enqueue(&Job::new(EVENTS, "no.such.kind", 3, serde_json::json!({})))
        .await
        .unwrap();
    ctx.queue.enqueue(&job(EVENTS)).await.unwrap();
    eventually(Duration::from_secs(10), "three dead letters", || async {
        dead_entries(r, &ctx).len() == 3
    })
    .await;
    eventually(Duration::from_secs(5), "good job done", || async {
        calls.distinct() == 1
    })
    .await;
    w.stop().await;
    let reasons: Vec<String> = dead_entries(r, &ctx)
        .iter()
        .map(|d| d["reason"].clone())
        .collect();
    assert_eq!(
        reasons.iter().filter(|r| *r == "poison").count(),
        2,
        "{reasons:?}"
    );
    assert_eq!(
        reasons.iter().filter(|r| *r == "unknown_kind").count(),
        1,
        "{reasons:?}"
    );
    assert_eq!(xlen(r, &stream), 0);
    assert_eq!(pending(r, &ctx, EVENTS), 0);
}

#[tokio::test]
async fn a_crashed_workers_jobs_are_reclaimed_and_done_by_another() {
    let r = shared_redis();
    let cfg = test_config(&r.url());
    let ctx = Context::connect(cfg.clone()).await.unwrap();
    // Worker A takes jobs and never finishes them, then crashes.
    let stuck = Arc::new(Calls::default());
    let stuck2 = stuck.clone();
    let mut hang = rebound::worker::Handlers::new();
    hang.register(
        KIND,
        Arc::new(FnHandler(move |j: Job| {
            stuck2.record(&j.id, j.attempt);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            }) as futures::future::BoxFuture<'static, _>
        })),
    );
    let a = CrashableWorker::start(cfg.clone(), hang);
    for _ in 0..40 {
        ctx.queue.enqueue(&job(EVENTS)).await.unwrap();
    }
    eventually(Duration::from_secs(10), "A holds a full batch", || async {
        stuck.distinct() == 16
    })
    .await;
    a.crash();
    assert_eq!(
        pending(r, &ctx, EVENTS),
        16,
        "A's batch is pending, unacknowledged"
    );
    // Worker B does everything, including A's 16 after the 1s visibility timeout.
    let calls = Arc::new(Calls::default());
    let b = RunningWorker::start(&ctx, recording(KIND, calls.clone(), |_| Ok(())));
    eventually(Duration::from_secs(15), "all 40 done by B", || async {
        calls.distinct() == 40
    })
    .await;
    eventually(Duration::from_secs(5), "nothing pending", || async {
        pending(r, &ctx, EVENTS) == 0 && xlen(r, &ctx.queue.keys().stream(EVENTS)) == 0
    })
    .await;
    b.stop().await;
    let by_id = calls.by_id.lock().unwrap();
    let stuck_ids: HashSet<String> = stuck.by_id.lock().unwrap().keys().cloned().collect();
    for id in &stuck_ids {
        assert!(by_id.contains_key(id), "reclaimed job {id} was done");
    }
    assert!(dead_entries(r, &ctx).is_empty());
}

#[tokio::test]
async fn entries_delivered_too_often_are_dead_lettered_as_poison() {
    let r = shared_redis();
    let cfg = test_config(&r.url()); // max_deliveries = 3
    let ctx = Context::connect(cfg.clone()).await.unwrap();
    let j = job(EVENTS);
    ctx.queue.enqueue(&j).await.unwrap();
    // A job that kills every worker that touches it: three crashes in a row.
    for round in 0..3 {
        let seen = Arc::new(Calls::default());
        let seen2 = seen.clone();
        let mut h = rebound::worker::Handlers::new();
        h.register(
            KIND,
            Arc::new(FnHandler(move |j: Job| {
                seen2.record(&j.id, j.attempt);
                Box::pin(std::future::pending()) as futures::future::BoxFuture<'static, _>
            })),
        );
        let w = CrashableWorker::start(cfg.clone(), h);
        eventually(
            Duration::from_secs(10),
            &format!("delivery {round}"),
            || async { seen.distinct() == 1 },
        )
        .await;
        w.crash();
    }
    let calls = Arc::new(Calls::default());
    let b = RunningWorker::start(&ctx, recording(KIND, calls.clone(), |_| Ok(())));
    eventually(Duration::from_secs(10), "poison dead letter", || async {
        dead_entries(r, &ctx).len() == 1
    })
    .await;
    b.stop().await;
    assert_eq!(calls.total(), 0, "the poison job was not run a fourth time");
    let d = &dead_entries(r, &ctx)[0];
    assert_eq!(d["reason"], "poison");
    assert_eq!(d["kind"], KIND);
    assert_eq!(pending(r, &ctx, EVENTS), 0);
}

#[tokio::test]
async fn three_schedulers_move_ten_thousand_jobs_exactly_once() {
    let r = shared_redis();
    let ctx = Context::connect(test_config(&r.url())).await.unwrap();
    let jobs: Vec<Job> = (0..10_000).map(|_| job(EMAILS)).collect();
    for chunk in jobs.chunks(1000) {
        ctx.queue.schedule_many(chunk, now_ms() - 10).await.unwrap();
    }
    let token = tokio_util::sync::CancellationToken::new();
    let schedulers: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(rebound::scheduler::run(
                ctx.queue.clone(),
                ctx.metrics.clone(),
                Duration::from_millis(5),
                token.clone(),
            ))
        })
        .collect();
    eventually(Duration::from_secs(20), "retry set drained", || async {
        let z: usize = r.conn().zcard(ctx.queue.keys().retry()).unwrap();
        z == 0
    })
    .await;
    token.cancel();
    for s in schedulers {
        s.await.unwrap();
    }
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(ctx.queue.keys().stream(EMAILS))
        .arg("-")
        .arg("+")
        .query(&mut r.conn())
        .unwrap();
    assert_eq!(entries.len(), 10_000, "no duplicate, no loss");
    let ids: HashSet<String> = entries
        .iter()
        .map(|(_, f)| serde_json::from_str::<Job>(&f["job"]).unwrap().id)
        .collect();
    assert_eq!(ids.len(), 10_000, "every job exactly once");
    let expected: HashSet<String> = jobs.iter().map(|j| j.id.clone()).collect();
    assert_eq!(ids, expected);
    let leftovers: Vec<String> = r
        .conn()
        .keys(format!("{}:job:*", ctx.queue.keys().prefix()))
        .unwrap();
    assert!(
        leftovers.is_empty(),
        "envelopes removed with their set entries"
    );
}

#[tokio::test]
async fn dead_letters_replay_with_attempts_reset() {
    let r = shared_redis();
    let ctx = Context::connect(test_config(&r.url())).await.unwrap();
    let calls = Arc::new(Calls::default());
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fail2 = fail.clone();
    let h = recording(KIND, calls.clone(), move |_| {
        if fail2.load(std::sync::atomic::Ordering::SeqCst) {
            Err(JobError::permanent("downstream rejected"))
        } else {
            Ok(())
        }
    });
    let w = RunningWorker::start(&ctx, h);
    let j = job(EVENTS);
    ctx.queue.enqueue(&j).await.unwrap();
    eventually(Duration::from_secs(10), "dead", || async {
        dead_entries(r, &ctx).len() == 1
    })
    .await;
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    let dl = ctx.queue.dead_letters(None, 10, None).await.unwrap();
    assert_eq!(dl.len(), 1);
    let replayed = ctx.queue.replay(&dl[0].id).await.unwrap();
    assert_eq!(replayed.id, j.id);
    // A second replay of the same dead letter finds nothing: no double enqueue.
    assert!(ctx.queue.replay(&dl[0].id).await.is_err());
    eventually(Duration::from_secs(10), "replayed job done", || async {
        calls.of(&j.id).len() == 2
    })
    .await;
    w.stop().await;
    assert_eq!(calls.of(&j.id)[1].0, 1, "attempts reset");
    assert!(dead_entries(r, &ctx).is_empty());
}

#[tokio::test]
async fn streams_stay_bounded_after_ten_thousand_jobs() {
    let r = shared_redis();
    let mut cfg = test_config(&r.url());
    cfg.worker.concurrency = 128;
    let ctx = Context::connect(cfg).await.unwrap();
    let calls = Arc::new(Calls::default());
    let w = RunningWorker::start(&ctx, recording(KIND, calls.clone(), |_| Ok(())));
    let jobs: Vec<Job> = (0..10_000).map(|_| job(EVENTS)).collect();
    for chunk in jobs.chunks(1000) {
        ctx.queue.enqueue_many(chunk).await.unwrap();
    }
    eventually(Duration::from_secs(30), "10k done", || async {
        calls.distinct() == 10_000
    })
    .await;
    eventually(Duration::from_secs(5), "stream empty", || async {
        xlen(r, &ctx.queue.keys().stream(EVENTS)) == 0
    })
    .await;
    w.stop().await;
    let info: HashMap<String, redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(ctx.queue.keys().stream(EVENTS))
        .query(&mut r.conn())
        .unwrap();
    assert_eq!(info.get("length"), Some(&redis::Value::Int(0)));
}

#[tokio::test]
async fn a_worker_survives_a_redis_restart_and_loses_nothing() {
    let mut r = RedisServer::start();
    let ctx = Context::connect(test_config(&r.url())).await.unwrap();
    let calls = Arc::new(Calls::default());
    let w = RunningWorker::start(&ctx, recording(KIND, calls.clone(), |_| Ok(())));
    for _ in 0..50 {
        ctx.queue.enqueue(&job(EVENTS)).await.unwrap();
    }
    eventually(Duration::from_secs(10), "first 50", || async {
        calls.distinct() == 50
    })
    .await;
    r.stop();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        ctx.queue.enqueue(&job(EVENTS)).await.is_err(),
        "redis is down"
    );
    r.restart();
    for _ in 0..50 {
        ctx.queue.enqueue(&job(EVENTS)).await.unwrap();
    }
    eventually(
        Duration::from_secs(20),
        "50 more after the restart",
        || async { calls.distinct() == 100 },
    )
    .await;
    assert!(!w.handle.is_finished(), "the worker kept running");
    w.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_jobs_and_leaves_the_rest_pending() {
    let r = shared_redis();
    let ctx = Context::connect(test_config(&r.url())).await.unwrap(); // concurrency 16, grace 2s
    let calls = Arc::new(Calls::default());
    let w = RunningWorker::start(&ctx, sleeping(KIND, calls.clone(), 300));
    for _ in 0..100 {
        ctx.queue.enqueue(&job(EVENTS)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    let started = Instant::now();
    w.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "drained within the grace period"
    );
    let done = calls.distinct();
    assert!((16..100).contains(&done), "some but not all done: {done}");
    assert_eq!(
        pending(r, &ctx, EVENTS),
        0,
        "in-flight jobs were finished and acknowledged"
    );
    assert_eq!(
        xlen(r, &ctx.queue.keys().stream(EVENTS)),
        100 - done,
        "the rest still waits, nothing lost"
    );
}

#[tokio::test]
async fn jobs_cut_off_by_the_grace_period_stay_pending_for_reclaim() {
    let r = shared_redis();
    let mut cfg = test_config(&r.url());
    cfg.worker.shutdown_grace = Duration::from_millis(200);
    cfg.worker.job_timeout = Duration::from_millis(900);
    let ctx = Context::connect(cfg).await.unwrap();
    let calls = Arc::new(Calls::default());
    let w = RunningWorker::start(&ctx, sleeping(KIND, calls.clone(), 600));
    for _ in 0..4 {
        ctx.queue.enqueue(&job(EVENTS)).await.unwrap();
    }
    eventually(Duration::from_secs(5), "all four delivered", || async {
        pending(r, &ctx, EVENTS) == 4
    })
    .await;
    w.stop().await;
    assert_eq!(calls.distinct(), 0, "none finished within 200ms");
    assert_eq!(
        pending(r, &ctx, EVENTS),
        4,
        "unfinished jobs stay pending, not acked, not lost"
    );
    assert!(dead_entries(r, &ctx).is_empty());
    assert_eq!(
        r.conn()
            .zcard::<_, usize>(ctx.queue.keys().retry())
            .unwrap(),
        0,
        "nor half-retried"
    );
}

#[tokio::test]
async fn consumers_gone_with_nothing_pending_are_removed_from_the_group() {
    let r = shared_redis();
    let mut cfg = test_config(&r.url());
    cfg.worker.consumer_ttl = Duration::from_millis(200);
    let ctx = Context::connect(cfg).await.unwrap();
    ctx.queue.ensure_group(EVENTS).await.unwrap();
    let stream = ctx.queue.keys().stream(EVENTS);
    // A worker that joined and went away: idle, nothing pending.
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&stream)
        .arg("rebound")
        .arg("departed-1")
        .query(&mut r.conn())
        .unwrap();
    // One that went away holding an entry: kept until its entry is reclaimed.
    ctx.queue.enqueue(&job(EVENTS)).await.unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("rebound")
        .arg("departed-2")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query(&mut r.conn())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let removed = ctx
        .queue
        .prune_consumers(EVENTS, Duration::from_millis(200), "me")
        .await
        .unwrap();
    assert_eq!(removed, vec!["departed-1".to_string()]);
    let names: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&stream)
        .arg("rebound")
        .query(&mut r.conn())
        .unwrap();
    assert_eq!(names.len(), 1, "the consumer with a pending entry stays");
}
