//! What operators look at, checked with the real tools: promtool on the scrape
//! output, the rules and the config; and a real Prometheus scraping a running
//! `rebound up --sandbox`, against which every dashboard query must return series.

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::utils::*;

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "promtool must be installed (Debian package prometheus; scripts/test.sh installs it)",
        );
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn the_scrape_output_passes_promtool_check_metrics() {
    let r = shared_redis();
    let s = Stack::start(r, |_| {}).await;
    // Put a sample in every family, as a running deployment would.
    s.send(
        json!({"to": "delivered@resend.dev", "subject": "Hi", "text": "x", "category": "login"}),
    )
    .await;
    let body = bounced_event("em_obs");
    post(
        &s.http,
        &format!("{}/webhooks/resend", s.api),
        &svix_headers(SECRET_A, "msg_obs", &body),
        &body,
    )
    .await;
    post(&s.http, &format!("{}/webhooks/resend", s.api), &[], &body).await;
    eventually(Duration::from_secs(10), "a send", || async {
        s.ctx.metrics.render().contains("rebound_emails_sent_total")
    })
    .await;
    let text = s
        .http
        .get(format!("{}/metrics", s.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("rebound_webhooks_received_total"));
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool check metrics: {out}");
}

#[test]
fn the_rules_and_the_prometheus_config_pass_promtool() {
    let (ok, out) = promtool(&["check", "rules", "prometheus/rules.yml"], None);
    assert!(ok, "{out}");
    assert!(out.contains("7 rules found"), "{out}");
    let (ok, out) = promtool(&["check", "config", "prometheus/prometheus.yml"], None);
    assert!(ok, "{out}");
}

/// Kills a child process when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn every_dashboard_query_returns_series_from_a_real_prometheus() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (ingress, sandbox, prom) = (free_port(), free_port(), free_port());
    let rx = Receiver::start(SECRET_B).await;
    rx.set_status(500); // the first deliveries fail: retries show up
    let cfg = format!(
        r#"
prefix = "{prefix}"
[ingress]
listen = "127.0.0.1:{ingress}"
webhook_secrets = ["{SECRET_A}"]
api_key = "{API_KEY}"
[worker]
visibility_timeout = "10s"
job_timeout = "5s"
block = "200ms"
poll_interval = "20ms"
[resend]
timeout = "2s"
[retry]
bounce_delays = ["300ms", "600ms", "900ms"]
job_delays = ["200ms"]
[sandbox]
listen = "127.0.0.1:{sandbox}"
event_delay = "50ms"
[forward]
timeout = "2s"
base_delay = "100ms"
max_delay = "200ms"
auto_resume_interval = "1s"
[[forward.subscriptions]]
name = "obs"
url = "{url}"
secret = "{SECRET_B}"
"#,
        prefix = prefix(),
        url = rx.url,
    );
    let cfg_path = dir.path().join("rebound.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let log = std::fs::File::create(dir.path().join("rebound.log")).unwrap();
    let _rebound = Killed(
        Command::new(env!("CARGO_BIN_EXE_rebound"))
            .args(["--config", cfg_path.to_str().unwrap(), "up", "--sandbox"])
            .env("REDIS_URL", redis.url())
            .env_remove("RESEND_WEBHOOK_SECRET")
            .env_remove("REBOUND_API_KEY")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let prom_cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: rebound\n    static_configs:\n      - targets: ['127.0.0.1:{ingress}']\n"),
    )
    .unwrap();
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus must be installed (Debian package prometheus; scripts/test.sh installs it)"),
    );
    let http = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{ingress}");
    eventually(Duration::from_secs(20), "rebound up is ready", || async {
        http.get(format!("{api}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    // A bounce and its plain-text re-send, a complaint (suppression), a poison
    // entry (dead letter), and forwarding that fails before it works (retries).
    let send = |to: &str, category: &str| {
        http.post(format!("{api}/v1/emails"))
            .bearer_auth(API_KEY)
            .json(&json!({"to": to, "subject": "Verify your email", "html": "<a href=\"https://x.test/v\">verify</a>", "category": category}))
            .send()
    };
    assert_eq!(
        send("ada+bounce-once@example.com", "verification")
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        send("complained@resend.dev", "login")
            .await
            .unwrap()
            .status(),
        202
    );
    {
        use redis::Commands as _;
        let key = {
            let text = std::fs::read_to_string(&cfg_path).unwrap();
            let p = text
                .lines()
                .find(|l| l.starts_with("prefix"))
                .unwrap()
                .split('"')
                .nth(1)
                .unwrap()
                .to_string();
            format!("{p}:stream:events")
        };
        let _: String = redis
            .conn()
            .xadd(key, "*", &[("job", "{not an envelope")])
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    rx.set_status(200);
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/grafana/dashboards/rebound.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let exprs: Vec<(String, String)> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap().to_string();
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_string()))
        })
        .collect();
    assert!(exprs.len() >= 19, "{} queries", exprs.len());
    let prom_url = format!("http://127.0.0.1:{prom}/api/v1/query");
    let mut empty: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        empty.clear();
        for (title, expr) in &exprs {
            let v: serde_json::Value =
                match http.get(&prom_url).query(&[("query", expr)]).send().await {
                    Ok(r) => r.json().await.unwrap_or_default(),
                    Err(_) => serde_json::Value::Null,
                };
            assert_ne!(
                v["status"], "error",
                "{title}: `{expr}` is not valid PromQL: {v}"
            );
            if v["data"]["result"].as_array().is_none_or(|a| a.is_empty()) {
                empty.push(format!("{title}: {expr}"));
            }
        }
        if empty.is_empty() || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let log = std::fs::read_to_string(dir.path().join("rebound.log")).unwrap_or_default();
    let tail: String = log.lines().rev().take(15).collect::<Vec<_>>().join("\n");
    assert!(empty.is_empty(), "dashboard queries with no series:\n{}\n--- rebound log (last lines, newest first) ---\n{tail}", empty.join("\n"));
}
