//! Forwarding to subscribers: signatures a Svix receiver accepts, retries on
//! the configured schedule, suspension with parking, automatic resume, 410,
//! TLS errors, isolation of a slow subscriber, and the admin API.

use std::time::Duration;

use rebound::config::{Secret, SubscriptionConfig};
use serde_json::json;

use crate::utils::*;

fn sub(name: &str, url: &str, events: &[&str]) -> SubscriptionConfig {
    SubscriptionConfig {
        name: name.into(),
        url: url.into(),
        events: events.iter().map(|e| e.to_string()).collect(),
        secret: Secret::new(SECRET_B),
        health_url: String::new(),
        headers: Default::default(),
    }
}

async fn post_event(s: &Stack, id: &str, event_type: &str) {
    let body = json!({"type": event_type, "created_at": "2026-11-22T23:41:12.126Z", "data": {"email_id": id, "to": ["x@example.com"]}}).to_string();
    let (st, _) = post(
        &s.http,
        &format!("{}/webhooks/resend", s.api),
        &svix_headers(SECRET_A, id, &body),
        &body,
    )
    .await;
    assert_eq!(st, 200);
}

async fn subscription(s: &Stack, name: &str) -> serde_json::Value {
    let v = s.get_json("/v1/subscriptions").await;
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_failing_subscriber_is_retried_suspended_parked_and_resumed_with_nothing_lost() {
    let r = shared_redis();
    let rx = Receiver::start(SECRET_B).await;
    rx.set_status(500);
    let url = rx.url.clone();
    let s = Stack::start(r, |c| {
        c.forward.subscriptions = vec![sub("crm", &url, &["*"])];
        c.forward.base_delay = Duration::from_millis(40);
        c.forward.max_delay = Duration::from_millis(150);
        c.forward.max_attempts = 4;
        c.forward.auto_resume_interval = Duration::from_millis(100);
        c.forward.resume_after = Duration::from_millis(600);
    })
    .await;
    post_event(&s, "msg_f1", "email.delivered").await;
    eventually(Duration::from_secs(10), "suspended", || async {
        subscription(&s, "crm").await["state"] == "suspended"
    })
    .await;
    let first: Vec<Got> = rx
        .got()
        .into_iter()
        .filter(|g| g.event_type == "email.delivered")
        .collect();
    assert_eq!(first.len(), 4, "max_attempts = 4");
    assert!(
        first.iter().all(|g| g.verified),
        "every delivery carries a valid Svix signature"
    );
    assert!(
        first.windows(2).all(|w| w[0].id == w[1].id),
        "webhook-id is stable across retries"
    );
    let gaps: Vec<Duration> = first.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (gap, min) in gaps.iter().zip([40u64, 80, 150]) {
        assert!(*gap >= Duration::from_millis(min), "retry gaps {gaps:?}");
    }
    assert!(s
        .ctx
        .metrics
        .render()
        .contains(r#"rebound_subscription_suspended{name="crm"} 1"#));
    // New events while suspended are parked in order, not attempted.
    let before = rx
        .got()
        .iter()
        .filter(|g| g.event_type != "rebound.probe")
        .count();
    post_event(&s, "msg_f2", "email.opened").await;
    post_event(&s, "msg_f3", "email.clicked").await;
    eventually(Duration::from_secs(5), "three parked", || async {
        subscription(&s, "crm").await["parked"] == 3
    })
    .await;
    let parked: Vec<String> = {
        use redis::Commands as _;
        r.conn()
            .lrange(s.ctx.queue.keys().parked("crm"), 0, -1)
            .unwrap()
    };
    let order: Vec<String> = parked
        .iter()
        .map(|p| {
            serde_json::from_str::<rebound::queue::Job>(p)
                .unwrap()
                .payload["event_type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        order,
        vec!["email.delivered", "email.opened", "email.clicked"]
    );
    assert_eq!(
        rx.got()
            .iter()
            .filter(|g| g.event_type != "rebound.probe")
            .count(),
        before,
        "parked deliveries are not attempted"
    );
    assert!(
        s.ctx
            .queue
            .dead_letters(None, 10, None)
            .await
            .unwrap()
            .is_empty(),
        "nor dead-lettered"
    );
    // Still failing: the probe fails and the subscription stays suspended.
    eventually(Duration::from_secs(5), "a failed probe", || async {
        rx.got().iter().any(|g| g.event_type == "rebound.probe")
    })
    .await;
    assert_eq!(subscription(&s, "crm").await["state"], "suspended");
    // The receiver recovers: the next probe resumes it and everything arrives once.
    rx.set_status(200);
    eventually(Duration::from_secs(10), "all three delivered", || async {
        rx.delivered().len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered = rx.delivered();
    let ids: std::collections::HashSet<&str> = delivered.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(delivered.len(), 3, "none twice");
    assert_eq!(ids.len(), 3);
    let sub = subscription(&s, "crm").await;
    assert_eq!(
        (
            sub["state"].as_str(),
            sub["parked"].as_u64(),
            sub["failures"].as_u64()
        ),
        (Some("active"), Some(0), Some(0))
    );
    assert!(s
        .ctx
        .metrics
        .render()
        .contains(r#"rebound_subscription_suspended{name="crm"} 0"#));
}

#[tokio::test]
async fn a_410_disables_the_subscription_at_once() {
    let r = shared_redis();
    let rx = Receiver::start(SECRET_B).await;
    rx.set_status(410);
    let url = rx.url.clone();
    let s = Stack::start(r, |c| {
        c.forward.subscriptions = vec![sub("gone", &url, &["email.bounced"])]
    })
    .await;
    post_event(&s, "msg_g1", "email.delivered").await; // not subscribed
    post_event(&s, "msg_g2", "email.bounced").await;
    eventually(Duration::from_secs(5), "disabled", || async {
        subscription(&s, "gone").await["state"] == "disabled"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rx.got().len(),
        1,
        "no retry after 410, and the unsubscribed event was never sent"
    );
    let sub = subscription(&s, "gone").await;
    assert!(sub["reason"].as_str().unwrap().contains("410"));
    assert_eq!(sub["parked"], 1);
    // An operator resumes it: the parked delivery goes out.
    rx.set_status(204);
    let resp = s
        .http
        .post(format!("{}/v1/subscriptions/gone/resume", s.api))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    eventually(Duration::from_secs(5), "released delivery", || async {
        rx.delivered().len() == 1
    })
    .await;
}

#[tokio::test]
async fn a_self_signed_certificate_is_a_tls_error_with_more_attempts() {
    let r = shared_redis();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl must be installed");
    assert!(ok.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept", &port.to_string()])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(5), "tls listener", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    let url = format!("https://127.0.0.1:{port}/hook");
    let s = Stack::start(r, |c| {
        c.forward.subscriptions = vec![sub("tls", &url, &["*"])];
        c.forward.base_delay = Duration::from_millis(10);
        c.forward.max_delay = Duration::from_millis(20);
        c.forward.max_attempts = 2;
        c.forward.tls_max_attempts = 4;
    })
    .await;
    post_event(&s, "msg_t1", "email.sent").await;
    eventually(Duration::from_secs(10), "suspended", || async {
        subscription(&s, "tls").await["state"] == "suspended"
    })
    .await;
    let _ = server.kill();
    let _ = server.wait();
    let sub = subscription(&s, "tls").await;
    assert!(
        sub["last_error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("certificate"),
        "{sub}"
    );
    assert_eq!(
        sub["failures"], 4,
        "TLS errors get tls_max_attempts, not max_attempts: {sub}"
    );
    assert!(sub["reason"].as_str().unwrap().contains("4 times"), "{sub}");
}

#[tokio::test]
async fn a_slow_subscriber_does_not_slow_another() {
    let r = shared_redis();
    let slow = Receiver::start(SECRET_B).await;
    slow.delay_ms
        .store(1500, std::sync::atomic::Ordering::SeqCst);
    let fast = Receiver::start(SECRET_B).await;
    let (su, fu) = (slow.url.clone(), fast.url.clone());
    let s = Stack::start(r, |c| {
        c.forward.subscriptions = vec![sub("slow", &su, &["*"]), sub("fast", &fu, &["*"])];
        c.forward.concurrency_per_subscription = 2;
        c.worker.concurrency = 8;
        c.forward.timeout = Duration::from_millis(900);
        c.worker.visibility_timeout = Duration::from_secs(5);
    })
    .await;
    let started = std::time::Instant::now();
    for i in 0..12 {
        post_event(&s, &format!("msg_s{i}"), "email.delivered").await;
    }
    eventually(Duration::from_secs(10), "fast got all 12", || async {
        fast.delivered().len() == 12
    })
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1400),
        "the fast subscriber was not held up: {took:?}"
    );
    assert!(
        slow.got().len() <= 2,
        "the slow one had at most its 2 slots busy meanwhile: {}",
        slow.got().len()
    );
}

#[tokio::test]
async fn subscriptions_are_managed_through_the_api() {
    let r = shared_redis();
    let s = Stack::start(r, |c| {
        c.forward.subscriptions = vec![sub("from_config", "https://cfg.test/h", &["*"])]
    })
    .await;
    // The worker writes configured subscriptions at start.
    eventually(Duration::from_secs(5), "config synced", || async {
        subscription(&s, "from_config").await["origin"] == "config"
    })
    .await;
    let base = format!("{}/v1/subscriptions", s.api);
    let body = json!({"name": "helpdesk", "url": "https://helpdesk.test/in", "events": ["email.bounced"], "secret": SECRET_B});
    let resp = s
        .http
        .post(&base)
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(created["state"], "active");
    assert!(created.get("secret").is_none(), "the secret is never shown");
    assert_eq!(
        s.http
            .post(&base)
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        409
    );
    let bad = json!({"name": "x y", "url": "https://a.b", "secret": SECRET_B});
    assert_eq!(
        s.http
            .post(&base)
            .bearer_auth(API_KEY)
            .json(&bad)
            .send()
            .await
            .unwrap()
            .status(),
        422
    );
    let bad = json!({"name": "x", "url": "https://a.b", "secret": "not-whsec"});
    assert_eq!(
        s.http
            .post(&base)
            .bearer_auth(API_KEY)
            .json(&bad)
            .send()
            .await
            .unwrap()
            .status(),
        422
    );
    assert_eq!(s.http.get(&base).send().await.unwrap().status(), 401);
    let del = s
        .http
        .delete(format!("{base}/from_config"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 422, "defined in config: removed there");
    let del = s
        .http
        .delete(format!("{base}/helpdesk"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    assert!(subscription(&s, "helpdesk").await.is_null());
    assert_eq!(
        s.http
            .delete(format!("{base}/helpdesk"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}
