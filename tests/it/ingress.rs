//! The webhook ingress over real HTTP: verification, durability, dedupe,
//! every error answer, outages, and other senders.

use std::time::Duration;

use rebound::config::{Secret, SourceConfig, SourceVerify};
use rebound::queue::EVENTS;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::utils::*;

fn url(s: &Served) -> String {
    format!("{}/webhooks/resend", s.base)
}

#[tokio::test]
async fn a_signed_event_is_stored_once_before_200() {
    let r = shared_redis();
    let s = Served::start(test_config(&r.url())).await;
    let c = reqwest::Client::new();
    let body = bounced_event("em_1");
    let (st, json) = post(
        &c,
        &url(&s),
        &svix_headers(SECRET_A, "msg_one", &body),
        &body,
    )
    .await;
    assert_eq!(st, 200, "{json}");
    assert_eq!(json["status"], "accepted");
    let jobs = stream_jobs(r, &s.ctx.queue.keys().stream(EVENTS));
    assert_eq!(jobs.len(), 1, "in Redis when 200 came back");
    assert_eq!(jobs[0].kind, "resend.event");
    assert_eq!(jobs[0].source.as_deref(), Some("resend"));
    assert_eq!(jobs[0].payload["message_id"], "msg_one");
    assert_eq!(jobs[0].payload["event"]["data"]["email_id"], "em_1");
    // Svix retries with a new timestamp and signature but the same id.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (st, json) = post(
        &c,
        &url(&s),
        &svix_headers(SECRET_A, "msg_one", &body),
        &body,
    )
    .await;
    assert_eq!((st, json["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(
        stream_jobs(r, &s.ctx.queue.keys().stream(EVENTS)).len(),
        1,
        "no second job"
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg(s.ctx.queue.keys().seen("msg_one"))
        .query(&mut r.conn())
        .unwrap();
    assert!(
        ttl > 6 * 24 * 3600,
        "dedupe outlives Resend's ~28h retry window: {ttl}"
    );
    let metrics = s.ctx.metrics.render();
    assert!(
        metrics.contains(r#"rebound_webhooks_received_total{outcome="accepted"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"rebound_webhooks_received_total{outcome="duplicate"} 1"#));
    assert!(metrics.contains(r#"rebound_events_total{type="email.bounced"} 1"#));
}

#[tokio::test]
async fn unbranded_headers_and_a_rotated_secret_are_accepted() {
    let r = shared_redis();
    let s = Served::start(test_config(&r.url())).await;
    let c = reqwest::Client::new();
    let body = bounced_event("em_2");
    let headers: Vec<(String, String)> = svix_headers(SECRET_B, "msg_two", &body)
        .into_iter()
        .map(|(k, v)| (k.replace("svix-", "webhook-"), v))
        .collect();
    let (st, json) = post(&c, &url(&s), &headers, &body).await;
    assert_eq!(st, 200, "{json}");
    // Both signatures in one header, as during a rotation: old one first.
    let mut h = svix_headers(SECRET_A, "msg_three", &body);
    let other = svix_headers(SECRET_B, "msg_three", &body);
    h[2].1 = format!("v1,bm90IHRoaXMgb25l {}", other[2].1);
    h[1] = other[1].clone();
    let (st, _) = post(&c, &url(&s), &h, &body).await;
    assert_eq!(st, 200);
    assert_eq!(stream_jobs(r, &s.ctx.queue.keys().stream(EVENTS)).len(), 2);
}

#[tokio::test]
async fn every_bad_request_gets_its_status_and_a_json_error() {
    let r = shared_redis();
    let mut cfg = test_config(&r.url());
    cfg.ingress.body_limit = 2048;
    let s = Served::start(cfg).await;
    let c = reqwest::Client::new();
    let body = bounced_event("em_3");
    let good = svix_headers(SECRET_A, "msg_bad", &body);
    let without = |name: &str| {
        good.iter()
            .filter(|(k, _)| k != name)
            .cloned()
            .collect::<Vec<_>>()
    };
    let with = |name: &str, v: &str| {
        good.iter()
            .map(|(k, x)| {
                if k == name {
                    (k.clone(), v.to_string())
                } else {
                    (k.clone(), x.clone())
                }
            })
            .collect::<Vec<_>>()
    };
    let now = rebound::ingress::signature::now_secs();
    let key = rebound::config::decode_whsec(SECRET_A).unwrap();
    let signed_at = |ts: i64, b: &str| {
        vec![
            ("svix-id".to_string(), "msg_ts".to_string()),
            ("svix-timestamp".to_string(), ts.to_string()),
            (
                "svix-signature".to_string(),
                rebound::ingress::signature::sign(&key, "msg_ts", ts, b.as_bytes()),
            ),
        ]
    };
    let not_json = "this is not json";
    let no_type = r#"{"data":{"email_id":"x"}}"#;
    type Case<'a> = (&'a str, Vec<(String, String)>, String, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "no id",
            without("svix-id"),
            body.clone(),
            400,
            "missing_header",
        ),
        (
            "no timestamp",
            without("svix-timestamp"),
            body.clone(),
            400,
            "missing_header",
        ),
        (
            "no signature",
            without("svix-signature"),
            body.clone(),
            400,
            "missing_header",
        ),
        (
            "garbled timestamp",
            with("svix-timestamp", "soon"),
            body.clone(),
            400,
            "invalid_header",
        ),
        (
            "wrong signature",
            with(
                "svix-signature",
                "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            ),
            body.clone(),
            401,
            "invalid_signature",
        ),
        (
            "tampered body",
            good.clone(),
            body.replace("em_3", "em_4"),
            401,
            "invalid_signature",
        ),
        (
            "stale",
            signed_at(now - 301, &body),
            body.clone(),
            401,
            "invalid_timestamp",
        ),
        (
            "future",
            signed_at(now + 400, &body),
            body.clone(),
            401,
            "invalid_timestamp",
        ),
        (
            "not json",
            signed_at(now, not_json),
            not_json.to_string(),
            400,
            "malformed_payload",
        ),
        (
            "no type",
            signed_at(now, no_type),
            no_type.to_string(),
            400,
            "malformed_payload",
        ),
        (
            "too large",
            good.clone(),
            "x".repeat(4096),
            413,
            "payload_too_large",
        ),
    ];
    for (name, headers, b, status, code) in cases {
        let (st, json) = post(&c, &url(&s), &headers, &b).await;
        assert_eq!(st, status, "{name}: {json}");
        assert_eq!(json["error"], code, "{name}: {json}");
        assert!(
            json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}"
        );
    }
    assert!(
        stream_jobs(r, &s.ctx.queue.keys().stream(EVENTS)).is_empty(),
        "nothing stored"
    );
    // A chunked body with no Content-Length is held to the same limit.
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut req =
        format!("POST /webhooks/resend HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n");
    for (k, v) in &good {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    for _ in 0..4 {
        req.push_str(&format!("400\r\n{}\r\n", "y".repeat(1024)));
    }
    req.push_str("0\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    let _ = tcp.read_to_string(&mut out).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    // Unknown routes and methods answer JSON too.
    let resp = c.get(url(&s)).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    let resp = c.post(format!("{}/nope", s.base)).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["error"],
        "not_found"
    );
}

#[tokio::test]
async fn redis_down_answers_503_and_recovers() {
    let mut r = RedisServer::start();
    let s = Served::start(test_config(&r.url())).await;
    let c = reqwest::Client::new();
    let body = bounced_event("em_5");
    assert_eq!(
        c.get(format!("{}/readyz", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    r.stop();
    let (st, json) = post(
        &c,
        &url(&s),
        &svix_headers(SECRET_A, "msg_outage", &body),
        &body,
    )
    .await;
    assert_eq!(st, 503, "{json}");
    assert_eq!(json["error"], "storage_unavailable");
    assert_eq!(
        c.get(format!("{}/readyz", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        c.get(format!("{}/healthz", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "alive, not ready"
    );
    r.restart();
    // Svix retries the same message: now it is stored.
    let mut ok = false;
    for _ in 0..50 {
        let (st, _) = post(
            &c,
            &url(&s),
            &svix_headers(SECRET_A, "msg_outage", &body),
            &body,
        )
        .await;
        if st == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "accepted again after the restart");
    assert_eq!(stream_jobs(&r, &s.ctx.queue.keys().stream(EVENTS)).len(), 1);
}

#[tokio::test]
async fn a_thousand_concurrent_posts_of_two_hundred_events_make_two_hundred_jobs() {
    let r = shared_redis();
    let s = Served::start(test_config(&r.url())).await;
    let c = reqwest::Client::new();
    let target = url(&s);
    let mut tasks = Vec::new();
    for copy in 0..5 {
        for n in 0..200 {
            let c = c.clone();
            let target = target.clone();
            tasks.push(tokio::spawn(async move {
                let body = bounced_event(&format!("em_{n}"));
                // Each copy is signed afresh, as a Svix retry is.
                let _ = copy;
                post(
                    &c,
                    &target,
                    &svix_headers(SECRET_A, &format!("msg_c{n}"), &body),
                    &body,
                )
                .await
                .0
            }));
        }
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert!(statuses.iter().all(|s| *s == 200), "all answered 200");
    let jobs = stream_jobs(r, &s.ctx.queue.keys().stream(EVENTS));
    assert_eq!(jobs.len(), 200, "exactly one job per distinct event");
    let ids: std::collections::HashSet<String> = jobs
        .iter()
        .map(|j| j.payload["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 200);
}

#[tokio::test]
async fn other_sources_verify_by_svix_or_hex_hmac_and_dedupe_by_field_or_hash() {
    let r = shared_redis();
    let mut cfg = test_config(&r.url());
    cfg.ingress.sources = vec![
        SourceConfig {
            name: "billing".into(),
            verify: SourceVerify::Hmac,
            secrets: vec![Secret::new("shared-key")],
            header: "resend-signature".into(),
            dedupe_field: "data.id".into(),
        },
        SourceConfig {
            name: "crm".into(),
            verify: SourceVerify::Hmac,
            secrets: vec![Secret::new("crm-key")],
            header: "x-signature".into(),
            dedupe_field: String::new(),
        },
        SourceConfig {
            name: "partner".into(),
            verify: SourceVerify::Svix,
            secrets: vec![Secret::new(SECRET_B)],
            header: String::new(),
            dedupe_field: String::new(),
        },
    ];
    let s = Served::start(cfg).await;
    let c = reqwest::Client::new();
    let hmac_hex = |key: &str, body: &str| {
        use hmac::Mac as _;
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
        m.update(body.as_bytes());
        hex::encode(m.finalize().into_bytes())
    };
    let b1 = r#"{"type":"invoice.paid","data":{"id":"inv_1"}}"#;
    let b1_again = r#"{"type":"invoice.paid","data":{"id":"inv_1"},"retry":true}"#;
    let h = |k: &str, v: String| vec![(k.to_string(), v)];
    let billing = format!("{}/webhooks/billing", s.base);
    assert_eq!(
        post(
            &c,
            &billing,
            &h("resend-signature", hmac_hex("shared-key", b1)),
            b1
        )
        .await
        .0,
        200
    );
    let (st, json) = post(
        &c,
        &billing,
        &h("resend-signature", hmac_hex("shared-key", b1_again)),
        b1_again,
    )
    .await;
    assert_eq!(
        (st, json["status"].as_str()),
        (200, Some("duplicate")),
        "deduped on data.id"
    );
    assert_eq!(
        post(
            &c,
            &billing,
            &h("resend-signature", hmac_hex("wrong", b1)),
            b1
        )
        .await
        .0,
        401
    );
    assert_eq!(post(&c, &billing, &[], b1).await.0, 400);
    let crm = format!("{}/webhooks/crm", s.base);
    let b2 = r#"{"contact":"c_1"}"#;
    assert_eq!(
        post(
            &c,
            &crm,
            &h("x-signature", format!("sha256={}", hmac_hex("crm-key", b2))),
            b2
        )
        .await
        .0,
        200
    );
    let (_, json) = post(&c, &crm, &h("x-signature", hmac_hex("crm-key", b2)), b2).await;
    assert_eq!(json["status"], "duplicate", "deduped on the body hash");
    let partner = format!("{}/webhooks/partner", s.base);
    let b3 = r#"{"type":"thing.happened"}"#;
    assert_eq!(
        post(&c, &partner, &svix_headers(SECRET_B, "msg_p1", b3), b3)
            .await
            .0,
        200
    );
    assert_eq!(
        post(&c, &partner, &svix_headers(SECRET_A, "msg_p2", b3), b3)
            .await
            .0,
        401
    );
    assert_eq!(
        post(&c, &format!("{}/webhooks/unknown", s.base), &[], b3)
            .await
            .0,
        404
    );
    let jobs = stream_jobs(r, &s.ctx.queue.keys().stream(EVENTS));
    let sources: Vec<&str> = jobs.iter().map(|j| j.source.as_deref().unwrap()).collect();
    assert_eq!(sources, vec!["billing", "crm", "partner"]);
    assert!(jobs.iter().all(|j| j.kind == "source.event"));
}

#[tokio::test]
async fn without_a_secret_the_ingress_refuses_to_start_unless_unsigned_is_allowed() {
    let r = shared_redis();
    let cfg = test_config(&r.url());
    let ctx = rebound::app::Context::new(cfg.clone()).unwrap();
    let err = rebound::app::serve_routes(&ctx).expect_err("refused");
    assert!(err.to_string().contains("RESEND_WEBHOOK_SECRET"), "{err}");
    let mut open = cfg;
    open.ingress.allow_unsigned = true;
    let s = Served::start(open).await;
    let body = bounced_event("em_9");
    let (st, _) = post(
        &reqwest::Client::new(),
        &url(&s),
        &[("svix-id".into(), "msg_u".into())],
        &body,
    )
    .await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn the_dead_letter_api_needs_the_bearer_token_and_replays() {
    let r = shared_redis();
    let s = Served::start(test_config(&r.url())).await;
    let job = rebound::queue::Job::new("emails", "test.job", 1, serde_json::json!({}));
    let raw = serde_json::to_string(&job).unwrap();
    s.ctx
        .queue
        .dead("emails", None, &raw, "test.job", "exhausted", "boom", 1)
        .await
        .unwrap();
    let c = reqwest::Client::new();
    let list = format!("{}/v1/dead-letters", s.base);
    assert_eq!(c.get(&list).send().await.unwrap().status(), 401);
    assert_eq!(
        c.get(&list)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let v: serde_json::Value = c
        .get(&list)
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["reason"], "exhausted");
    assert_eq!(data[0]["job"]["id"], job.id.as_str());
    let id = data[0]["id"].as_str().unwrap();
    let resp = c
        .post(format!("{}/v1/dead-letters/{id}/replay", s.base))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = c
        .post(format!("{}/v1/dead-letters/{id}/replay", s.base))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "already replayed");
    let jobs = stream_jobs(r, &s.ctx.queue.keys().stream("emails"));
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].id, job.id);
}

#[tokio::test]
async fn the_api_is_disabled_without_an_api_key() {
    let r = shared_redis();
    let mut cfg = test_config(&r.url());
    cfg.ingress.webhook_secrets = vec![Secret::new(SECRET_A)];
    let ctx = rebound::app::Context::new(cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(rebound::http::serve(
        rebound::app::serve_routes(&ctx).unwrap(),
        listener,
        token.clone(),
    ));
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/dead-letters"))
        .bearer_auth("")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["error"],
        "api_disabled"
    );
    token.cancel();
}
