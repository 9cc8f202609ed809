//! The email loop against the Resend emulator and a scripted fake Resend:
//! bounce re-sends, suppression, adoption of app-sent email, idempotency,
//! error classification and the shared rate limit.

use std::time::Duration;

use rebound::queue::EMAILS;
use serde_json::json;

use crate::utils::*;

fn verification(to: &str) -> serde_json::Value {
    json!({
        "to": to,
        "subject": "Verify your email",
        "html": "<p>Hi! <a href=\"https://app.example.com/verify?token=t0k3n&amp;u=7\">Verify my email</a></p>",
        "category": "verification"
    })
}

#[tokio::test]
async fn a_bounced_verification_email_comes_back_as_plain_text_with_its_link() {
    let r = shared_redis();
    let s = Stack::start(r, |_| {}).await;
    let (st, created) = s.send(verification("ada+bounce-once@example.com")).await;
    assert_eq!(st, 202, "{created}");
    assert_eq!(created["status"], "queued");
    let id = created["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(10), "re-send delivered", || async {
        let d = s.email(&id).await;
        d["resends"]
            .as_array()
            .is_some_and(|a| a.len() == 1 && a[0]["status"] == "delivered")
    })
    .await;
    let detail = s.email(&id).await;
    assert_eq!(detail["status"], "bounced");
    assert_eq!(detail["resend_count"], 1);
    let received = s.received().await;
    assert_eq!(received.len(), 2);
    let resend = &received[1];
    assert_eq!(resend["subject"], "Verify your email (Retry)");
    assert!(resend["html"].is_null(), "plain text only: {resend}");
    let text = resend["text"].as_str().unwrap();
    assert!(
        text.contains("https://app.example.com/verify?token=t0k3n&u=7"),
        "{text}"
    );
    let resend_id = detail["resends"][0]["id"].as_str().unwrap();
    let rd = s.email(resend_id).await;
    assert_eq!(rd["original_id"], id.as_str());
    assert_eq!(rd["attempt"], 1);
    let types: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for t in ["queued", "sent", "email.bounced", "resend_scheduled"] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    let m = s.ctx.metrics.render();
    assert!(
        m.contains(r#"rebound_emails_sent_total{attempt="2",category="verification"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"rebound_bounces_total{subtype="General",type="Transient"} 1"#));
}

#[tokio::test]
async fn at_most_three_resends_on_a_growing_schedule() {
    let r = shared_redis();
    let s = Stack::start(r, |_| {}).await; // bounce delays 100ms, 200ms, 300ms
    let (_, created) = s.send(verification("bounced@resend.dev")).await;
    let id = created["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(15), "re-sends exhausted", || async {
        let d = s.email(&id).await;
        d["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "resends_exhausted")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let detail = s.email(&id).await;
    assert_eq!(detail["resend_count"], 3);
    let resends = detail["resends"].as_array().unwrap();
    assert_eq!(resends.len(), 3);
    assert_eq!(
        s.received().await.len(),
        4,
        "the original and three re-sends, nothing more"
    );
    // Each re-send waited at least its delay between being scheduled and sent.
    let mut waits = Vec::new();
    for (n, rs) in resends.iter().enumerate() {
        let rd = s.email(rs["id"].as_str().unwrap()).await;
        assert_eq!(rd["attempt"], n as u64 + 1);
        assert_eq!(
            rd["subject"], "Verify your email (Retry)",
            "the suffix is not stacked"
        );
        let ev = rd["events"].as_array().unwrap();
        let queued = ev.iter().find(|e| e["type"] == "queued").unwrap();
        let sent = ev.iter().find(|e| e["type"] == "sent").unwrap();
        waits.push(at(&sent["at"]).duration_since(at(&queued["at"])).unwrap());
    }
    for (w, min) in waits.iter().zip([100u64, 200, 300]) {
        assert!(*w >= Duration::from_millis(min), "waits {waits:?}");
    }
    assert!(waits[2] > waits[0], "delays grow: {waits:?}");
}

#[tokio::test]
async fn a_hard_bounce_suppresses_and_no_later_send_is_made() {
    let r = shared_redis();
    let s = Stack::start(r, |_| {}).await;
    let (_, created) = s.send(verification("bob+nomail@example.com")).await;
    let id = created["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(10), "suppressed", || async {
        s.suppressed(r, "bob+nomail@example.com").is_some()
    })
    .await;
    let sup = s.suppressed(r, "bob+nomail@example.com").unwrap();
    assert_eq!(sup["reason"], "bounce");
    assert_eq!(sup["detail"], "Permanent/NoEmail");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let detail = s.email(&id).await;
    assert_eq!(detail["status"], "bounced");
    assert_eq!(detail["resend_count"], 0, "a hard bounce is never re-sent");
    let (st, again) = s.send(verification("Bob <BOB+nomail@example.com>")).await;
    assert_eq!((st, again["status"].as_str()), (202, Some("suppressed")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.received().await.len(), 1, "the second send was not made");
    let rec = s.email(again["id"].as_str().unwrap()).await;
    assert_eq!(rec["status"], "suppressed");
}

#[tokio::test]
async fn a_complaint_suppresses_the_address() {
    let r = shared_redis();
    let s = Stack::start(r, |_| {}).await;
    let (_, created) = s.send(verification("complained@resend.dev")).await;
    let id = created["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(10), "complained", || async {
        s.email(&id).await["status"] == "complained"
    })
    .await;
    assert_eq!(
        s.suppressed(r, "complained@resend.dev").unwrap()["reason"],
        "complaint"
    );
    let (_, again) = s.send(verification("complained@resend.dev")).await;
    assert_eq!(again["status"], "suppressed");
}

#[tokio::test]
async fn a_category_outside_the_list_is_not_resent() {
    let r = shared_redis();
    let s = Stack::start(r, |_| {}).await;
    let mut body = verification("bounced@resend.dev");
    body["category"] = json!("newsletter");
    let (_, created) = s.send(body).await;
    let id = created["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(10), "bounced", || async {
        s.email(&id).await["status"] == "bounced"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.email(&id).await["resend_count"], 0);
    assert_eq!(s.received().await.len(), 1);
    assert!(
        s.suppressed(r, "bounced@resend.dev").is_none(),
        "Permanent/General is not a suppression"
    );
}

#[tokio::test]
async fn an_email_the_app_sent_itself_is_fetched_and_resent() {
    let r = shared_redis();
    let s = Stack::start(r, |_| {}).await;
    // The app talks to Resend directly; rebound only sees the webhooks.
    let direct = json!({
        "from": "Acme <security@acme.test>",
        "to": ["carol+bounce-once@example.com"],
        "subject": "Reset your password",
        "html": "<p><a href=\"https://acme.test/reset/42\">Reset password</a></p>",
        "tags": [{"name": "category", "value": "password_reset"}]
    });
    let resp = s
        .http
        .post(format!("{}/emails", s.sandbox))
        .bearer_auth("re_app")
        .header("user-agent", "app/1")
        .json(&direct)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    eventually(
        Duration::from_secs(10),
        "re-send of the app's email delivered",
        || async {
            let list = s.emails("").await;
            list["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["origin"] == "resend" && e["status"] == "delivered")
        },
    )
    .await;
    let list = s.emails("").await;
    let adopted = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["origin"] == "app")
        .cloned()
        .unwrap();
    assert_eq!(adopted["category"], "password_reset");
    assert_eq!(adopted["status"], "bounced");
    let received = s.received().await;
    assert_eq!(received.len(), 2);
    assert_eq!(received[1]["subject"], "Reset your password (Retry)");
    assert_eq!(received[1]["from"], "Acme <security@acme.test>");
    assert!(received[1]["text"]
        .as_str()
        .unwrap()
        .contains("Reset password (https://acme.test/reset/42)"));
}

#[tokio::test]
async fn the_send_api_is_idempotent_validated_and_authenticated() {
    let r = shared_redis();
    let s = Stack::start(r, |_| {}).await;
    let mut body = verification("delivered@resend.dev");
    body["idempotency_key"] = json!("signup-42");
    let (st1, a) = s.send(body.clone()).await;
    let (st2, b) = s.send(body).await;
    assert_eq!((st1, st2), (202, 200));
    assert_eq!(a["id"], b["id"]);
    eventually(Duration::from_secs(10), "delivered", || async {
        s.email(a["id"].as_str().unwrap()).await["status"] == "delivered"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.received().await.len(), 1, "one send for one key");
    let (st, err) = s
        .send(json!({"to": "nobody", "subject": "x", "text": "y"}))
        .await;
    assert_eq!((st, err["error"].as_str()), (422, Some("validation_error")));
    assert!(err["message"].as_str().unwrap().contains("`to`"));
    let resp = s
        .http
        .post(format!("{}/v1/emails", s.api))
        .body("{not json")
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = s
        .http
        .post(format!("{}/v1/emails", s.api))
        .json(&verification("a@b.co"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Listing with filters and a cursor.
    for i in 0..3 {
        let mut m = verification(&format!("user{i}@example.com"));
        m["category"] = json!("login");
        s.send(m).await;
    }
    let page = s.emails("category=login&limit=2").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = s
        .emails(&format!("category=login&limit=2&cursor={cursor}"))
        .await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert!(rest["next_cursor"].is_null());
    let one = s.emails("to=user1@example.com").await;
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn resend_answers_are_retried_waited_out_or_dead_lettered() {
    let r = shared_redis();
    let fake = FakeResend::default();
    let (url, _stop) = fake.start().await;
    fake.script(
        "rate@x.test",
        vec![Answer::Error {
            status: 429,
            name: "rate_limit_exceeded",
            retry_after: Some("1"),
        }],
    );
    fake.script(
        "flaky@x.test",
        vec![Answer::Error {
            status: 500,
            name: "application_error",
            retry_after: None,
        }],
    );
    fake.script(
        "invalid@x.test",
        vec![Answer::Error {
            status: 422,
            name: "missing_required_field",
            retry_after: None,
        }],
    );
    fake.script(
        "slow@x.test",
        vec![Answer::Slow(Duration::from_millis(900))],
    );
    fake.script(
        "busy@x.test",
        vec![Answer::Error {
            status: 409,
            name: "concurrent_idempotent_requests",
            retry_after: None,
        }],
    );
    let s = Stack::start(r, |c| c.resend.api_url = url.clone()).await; // resend.timeout 500ms
    let mut ids = std::collections::HashMap::new();
    for to in [
        "rate@x.test",
        "flaky@x.test",
        "invalid@x.test",
        "slow@x.test",
        "busy@x.test",
    ] {
        let (_, c) = s.send(verification(to)).await;
        ids.insert(to, c["id"].as_str().unwrap().to_string());
    }
    for to in ["rate@x.test", "flaky@x.test", "slow@x.test", "busy@x.test"] {
        eventually(Duration::from_secs(10), &format!("{to} sent"), || async {
            s.email(&ids[to]).await["status"] == "sent"
        })
        .await;
        let seen = fake.seen_for(to);
        assert_eq!(seen.len(), 2, "{to}: one failure, one success");
        assert_eq!(
            seen[0].idempotency_key, seen[1].idempotency_key,
            "{to}: the retry reuses the key"
        );
        assert!(seen[0]
            .idempotency_key
            .as_deref()
            .is_some_and(|k| k.starts_with("rebound-")));
        assert!(seen[0]
            .user_agent
            .as_deref()
            .is_some_and(|u| u.starts_with("rebound/")));
    }
    let rate = fake.seen_for("rate@x.test");
    let gap = rate[1].at.duration_since(rate[0].at).unwrap();
    assert!(
        gap >= Duration::from_millis(950),
        "429 retry-after 1 honoured: {gap:?}"
    );
    eventually(Duration::from_secs(10), "422 dead-lettered", || async {
        s.ctx
            .queue
            .dead_letters(Some(EMAILS), 10, None)
            .await
            .unwrap()
            .len()
            == 1
    })
    .await;
    let dead = &s
        .ctx
        .queue
        .dead_letters(Some(EMAILS), 10, None)
        .await
        .unwrap()[0];
    assert_eq!(dead.reason, "missing_required_field");
    assert_eq!(dead.attempts, 1);
    assert_eq!(
        fake.seen_for("invalid@x.test").len(),
        1,
        "a 422 is not retried"
    );
    let rec = s.email(&ids["invalid@x.test"]).await;
    assert_eq!(rec["status"], "failed");
    assert!(rec["error"]
        .as_str()
        .unwrap()
        .contains("missing_required_field"));
}

#[tokio::test]
async fn two_workers_together_stay_under_the_shared_rate_limit() {
    let r = shared_redis();
    let fake = FakeResend::default();
    let (url, _stop) = fake.start().await;
    let s = Stack::start(r, |c| {
        c.resend.api_url = url.clone();
        c.resend.rate_limit = 5;
    })
    .await;
    // A second worker process: its own pools and client, the same deployment.
    let mut cfg2 = (*s.ctx.cfg).clone();
    cfg2.resend.api_url = url.clone();
    let ctx2 = rebound::app::Context::new(cfg2).unwrap();
    let h2 = rebound::app::handlers(&ctx2).unwrap();
    let w2 = RunningWorker::start(&ctx2, h2);
    let started = std::time::Instant::now();
    for i in 0..20 {
        s.send(json!({"to": format!("r{i}@x.test"), "subject": "Your code", "text": "123456", "category": "login"})).await;
    }
    eventually(Duration::from_secs(20), "20 sends", || async {
        fake.seen.lock().unwrap().len() >= 20
    })
    .await;
    let took = started.elapsed();
    w2.stop().await;
    let mut per_second = std::collections::HashMap::<u64, usize>::new();
    for seen in fake.seen.lock().unwrap().iter() {
        *per_second
            .entry(
                seen.at
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
            )
            .or_default() += 1;
    }
    let busiest = per_second.values().copied().max().unwrap();
    // One request of slack for a send that left in one second and arrived in the next.
    assert!(
        busiest <= 6,
        "at most 5 a second across both workers, saw {per_second:?}"
    );
    // Per-second windows: 20 sends at 5 a second need four distinct seconds,
    // which span a little over 2 s at the least (unlimited, they take ~0.1 s).
    assert!(
        per_second.len() >= 4,
        "spread over at least four seconds: {per_second:?}"
    );
    assert!(took > Duration::from_secs(2), "{took:?}");
    assert_eq!(fake.seen.lock().unwrap().len(), 20, "each email sent once");
    assert!(
        s.ctx
            .queue
            .dead_letters(None, 10, None)
            .await
            .unwrap()
            .is_empty(),
        "waiting for the shared limit never uses up a job's attempts"
    );
}
