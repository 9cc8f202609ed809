//! The `rebound` binary: exit codes, one-line errors, and the admin commands.

use std::process::Command;

use crate::utils::*;

fn rebound(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rebound"));
    cmd.args(args)
        .env_remove("REDIS_URL")
        .env_remove("RESEND_WEBHOOK_SECRET")
        .env_remove("REBOUND_API_KEY");
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run rebound");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_masked() {
    let (code, out, _) = rebound(
        &["check-config"],
        &[
            ("RESEND_API_KEY", "re_live_supersecretvalue"),
            ("REDIS_URL", "redis://:hunter2@db:6379"),
            ("RETRY_MAX_ATTEMPTS", "2"),
        ],
    );
    assert_eq!(code, 0);
    assert!(out.contains("max_attempts = 2"), "{out}");
    assert!(
        !out.contains("supersecretvalue") && !out.contains("hunter2"),
        "{out}"
    );
    assert!(out.contains("redis://****@db:6379"), "{out}");
}

#[test]
fn bad_config_exits_non_zero_with_the_reason_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[worker]\nconcurrency = 0\n[ingress]\nlisten = \"nowhere\"\n",
    )
    .unwrap();
    let (code, _, err) = rebound(&["--config", path.to_str().unwrap(), "stats"], &[]);
    assert_ne!(code, 0);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("rebound:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("worker.concurrency") && lines[0].contains("ingress.listen"),
        "{err}"
    );
    let (code, _, err) = rebound(&["--config", "/no/such/file.toml", "stats"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("/no/such/file.toml"), "{err}");
}

#[test]
fn unreachable_redis_is_a_one_line_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, _, err) = rebound(
        &["stats"],
        &[("REDIS_URL", &format!("redis://127.0.0.1:{port}"))],
    );
    assert_ne!(code, 0);
    assert!(err.contains("cannot reach redis"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("rebound:")).count(), 1);
}

#[test]
fn subscriptions_from_config_are_listed_and_an_unknown_one_cannot_be_resumed() {
    let r = shared_redis();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("subs.toml");
    std::fs::write(
        &path,
        format!(
            "prefix = \"{}\"\n[[forward.subscriptions]]\nname = \"helpdesk\"\nurl = \"https://helpdesk.test/hooks\"\nevents = [\"email.bounced\"]\nsecret = \"{SECRET_B}\"\n",
            prefix()
        ),
    )
    .unwrap();
    let env = [("REDIS_URL", r.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, out, err) = rebound(
        &["--config", path.to_str().unwrap(), "subscriptions", "list"],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("helpdesk")
            && out.contains("active")
            && out.contains("https://helpdesk.test/hooks"),
        "{out}"
    );
    assert!(!out.contains(SECRET_B), "secrets are not listed");
    let (code, _, err) = rebound(
        &[
            "--config",
            path.to_str().unwrap(),
            "subscriptions",
            "resume",
            "nope",
        ],
        &env,
    );
    assert_ne!(code, 0);
    assert!(err.contains("`nope` not found"), "{err}");
}

#[tokio::test]
async fn dlq_and_stats_and_suppression_commands_work_on_a_live_redis() {
    let r = shared_redis();
    let cfg = test_config(&r.url());
    let prefix = cfg.prefix.clone();
    let ctx = rebound::app::Context::connect(cfg).await.unwrap();
    let job = rebound::queue::Job::new(
        "emails",
        "email.send",
        3,
        serde_json::json!({"email_id": "x"}),
    );
    ctx.queue
        .dead(
            "emails",
            None,
            &serde_json::to_string(&job).unwrap(),
            "email.send",
            "exhausted",
            "smtp down",
            3,
        )
        .await
        .unwrap();
    let env = [("REDIS_URL", r.url()), ("REBOUND_PREFIX", prefix)];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, out, err) = rebound(&["dlq", "list", "--json"], &env);
    assert_eq!(code, 0, "{err}");
    let dl: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(dl["reason"], "exhausted");
    let id = dl["id"].as_str().unwrap().to_string();
    let (code, out, _) = rebound(&["dlq", "show", &id], &env);
    assert_eq!(code, 0);
    assert!(out.contains("smtp down") && out.contains(&job.id), "{out}");
    let (code, _, err) = rebound(&["dlq", "purge"], &env);
    assert_ne!(code, 0, "purge needs --yes");
    assert!(err.contains("--yes"), "{err}");
    let (code, out, _) = rebound(&["dlq", "replay", &id], &env);
    assert_eq!(code, 0, "{out}");
    let (_, out, _) = rebound(&["stats", "--json"], &env);
    let stats: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(stats["dead"], 0);
    let emails = stats["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "emails")
        .unwrap();
    assert_eq!(emails["length"], 1, "the replayed job waits in its stream");
    let (code, out, _) = rebound(&["suppression", "add", "Eve <EVE@example.com>"], &env);
    assert_eq!(code, 0);
    assert!(out.contains("eve@example.com"));
    let (_, out, _) = rebound(&["suppression", "list"], &env);
    assert!(out.contains("eve@example.com\tmanual"), "{out}");
    let (code, _, _) = rebound(&["suppression", "remove", "eve@example.com"], &env);
    assert_eq!(code, 0);
    let (code, _, _) = rebound(&["suppression", "remove", "eve@example.com"], &env);
    assert_eq!(code, 1, "nothing to remove");
    let (code, _, err) = rebound(&["suppression", "add", "not-an-address"], &env);
    assert_ne!(code, 0);
    assert!(err.contains("not an email address"), "{err}");
}
