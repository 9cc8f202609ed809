//! A local `redis-server` child for `rebound up`, so a newcomer needs nothing
//! running to try rebound.
//!
//! Used only when no `REDIS_URL` is set, the configured URL is the default,
//! and nothing answers on 127.0.0.1:6379. The child runs with AOF on and keeps
//! its data under `./var/redis`, so queued jobs survive a restart of `up`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

use crate::config::Config;

const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// Keeps the child alive; it is killed when this is dropped.
#[derive(Debug)]
pub struct LocalRedis {
    _child: Child,
    /// Where the AOF lives.
    pub dir: PathBuf,
}

/// Starts a local `redis-server` when `cfg` points at the default address and
/// nothing is there. Returns `None` when an existing Redis is used.
///
/// # Errors
/// `redis-server` is missing or does not come up.
pub async fn ensure_local(cfg: &mut Config) -> anyhow::Result<Option<LocalRedis>> {
    if std::env::var("REDIS_URL").is_ok_and(|v| !v.is_empty())
        || cfg.redis.url.expose() != DEFAULT_URL
    {
        return Ok(None);
    }
    if tokio::net::TcpStream::connect("127.0.0.1:6379")
        .await
        .is_ok()
    {
        return Ok(None);
    }
    let dir = PathBuf::from("var/redis");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let child = Command::new("redis-server")
        .args(["--port", "6379", "--bind", "127.0.0.1", "--appendonly", "yes", "--save", ""])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("nothing listens on 127.0.0.1:6379 and redis-server cannot be started (run scripts/install-redis.sh, or set REDIS_URL)")?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect("127.0.0.1:6379")
            .await
            .is_ok()
        {
            tracing::info!(dir = %dir.display(), "no Redis on 127.0.0.1:6379: started a local redis-server (AOF on)");
            return Ok(Some(LocalRedis { _child: child, dir }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!(
        "started redis-server but it did not accept connections on 127.0.0.1:6379 within 5s"
    )
}
