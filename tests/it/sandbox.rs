//! The Resend emulator speaks Resend's API: shapes, errors, idempotency, knobs.

use std::time::Duration;

use serde_json::json;

use crate::utils::*;

async fn start() -> (String, tokio_util::sync::CancellationToken, Receiver) {
    let rx = Receiver::start(SECRET_A).await;
    let opts = rebound::sandbox::SandboxOptions {
        webhook_url: rx.url.clone(),
        webhook_secret: SECRET_A.into(),
        latency: Duration::ZERO,
        event_delay: Duration::from_millis(5),
        error_rate: 0.0,
        forced_429: 0,
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(rebound::sandbox::run(opts, l, token.clone()));
    (url, token, rx)
}

fn email(to: &str) -> serde_json::Value {
    json!({"from": "Acme <a@acme.test>", "to": [to], "subject": "Hi", "html": "<p>x</p>"})
}

#[tokio::test]
async fn the_emulator_answers_like_resend_and_signs_its_webhooks() {
    let (url, _t, rx) = start().await;
    let c = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value, key: Option<&str>| {
        let mut r = c
            .post(format!("{url}{path}"))
            .bearer_auth("re_test")
            .header("user-agent", "t/1")
            .json(&body);
        if let Some(k) = key {
            r = r.header("idempotency-key", k);
        }
        r.send()
    };
    // Batch: ids in request order.
    let resp = post(
        "/emails/batch",
        json!([email("delivered@resend.dev"), email("bounced@resend.dev")]),
        None,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    // Error bodies have Resend's shape.
    let resp = post(
        "/emails",
        json!({"from": "a@acme.test", "subject": "x", "html": "y"}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 422);
    let e: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        (e["statusCode"].as_u64(), e["name"].as_str()),
        (Some(422), Some("missing_required_field"))
    );
    assert_eq!(e["message"], "Missing `to` field.");
    let resp = c
        .post(format!("{url}/emails"))
        .bearer_auth("re_test")
        .json(&email("x@y.zz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "no User-Agent");
    let resp = c
        .post(format!("{url}/emails"))
        .header("user-agent", "t/1")
        .json(&email("x@y.zz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "no API key");
    // Idempotency: same key and body -> the same id; another body -> 409.
    let a: serde_json::Value = post("/emails", email("i@y.zz"), Some("k1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let b: serde_json::Value = post("/emails", email("i@y.zz"), Some("k1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a["id"], b["id"]);
    let resp = post("/emails", email("other@y.zz"), Some("k1"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["name"],
        "invalid_idempotent_request"
    );
    // Forced 429s carry retry-after.
    c.post(format!("{url}/sandbox/knobs"))
        .json(&json!({"forced_429": 1}))
        .send()
        .await
        .unwrap();
    let resp = post("/emails", email("r@y.zz"), None).await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(
        post("/emails", email("r@y.zz"), None)
            .await
            .unwrap()
            .status(),
        200
    );
    // GET /emails/{id} in Resend's shape; unknown ids are 404.
    let id = a["id"].as_str().unwrap();
    let got: serde_json::Value = c
        .get(format!("{url}/emails/{id}"))
        .bearer_auth("re_test")
        .header("user-agent", "t/1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (got["object"].as_str(), got["to"][0].as_str()),
        (Some("email"), Some("i@y.zz"))
    );
    assert!(
        got["created_at"].as_str().unwrap().ends_with("+00"),
        "Resend's timestamp style"
    );
    assert_eq!(
        c.get(format!("{url}/emails/nope"))
            .bearer_auth("k")
            .header("user-agent", "t")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // Its webhooks verify the Svix way, per recipient script.
    eventually(Duration::from_secs(5), "webhooks", || async {
        rx.got().iter().any(|g| g.event_type == "email.bounced")
    })
    .await;
    assert!(
        rx.got().iter().all(|g| g.verified),
        "every webhook carries a valid signature"
    );
    let types: Vec<String> = rx.got().iter().map(|g| g.event_type.clone()).collect();
    assert!(types.contains(&"email.delivered".to_string()), "{types:?}");
}
