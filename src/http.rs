//! Serves a warp filter on a listener we own, with graceful shutdown.
//!
//! warp 0.4's own `Server::run` future is not `Send` (its accept trait uses
//! `async fn`), so it cannot be spawned on the multi-threaded runtime. This is
//! the same hyper-util loop it runs, made spawnable; a test can hand it a
//! listener bound to port 0.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::filters::BoxedFilter;
use warp::Reply;

/// Longest wait for open connections to finish after shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `filter` until `shutdown`, then lets open requests finish.
pub async fn serve<R>(filter: BoxedFilter<(R,)>, listener: TcpListener, shutdown: CancellationToken)
where
    R: Reply + 'static,
{
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(warp::service(filter.clone()));
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let builder = Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain period; closing them");
    }
}
