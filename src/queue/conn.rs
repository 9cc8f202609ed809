//! Shared multiplexed connections for short commands.
//!
//! redis-rs's `MultiplexedConnection` pipelines every concurrent request on
//! one socket and is meant to be cloned. Checking a connection out of
//! deadpool for each command instead costs a recycle round trip (UNWATCH +
//! PING) every time, which halved ingress throughput. So the pool creates
//! and health-checks connections, and short commands share a few of them.
//! A connection that fails at the connection level is dropped from its slot
//! and the next call gets a fresh one from the pool: that is the reconnect.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_redis::Pool;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// Connections shared round-robin; a few spread the parsing work without
/// giving up pipelining.
const SLOTS: usize = 4;

type Slot = Arc<Mutex<Option<MultiplexedConnection>>>;

/// A few shared connections created from `pool`.
#[derive(Clone, Debug)]
pub(crate) struct Shared {
    slots: Arc<Vec<Slot>>,
    next: Arc<AtomicUsize>,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            slots: Arc::new((0..SLOTS).map(|_| Arc::new(Mutex::new(None))).collect()),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A handle on one shared connection, connecting through `pool` when the slot is empty.
    pub(crate) async fn get(&self, pool: &Pool) -> Result<Conn, deadpool_redis::PoolError> {
        let slot = self.slots[self.next.fetch_add(1, Ordering::Relaxed) % SLOTS].clone();
        let cached = slot.lock().ok().and_then(|g| g.clone());
        if let Some(inner) = cached {
            return Ok(Conn { inner, slot });
        }
        let inner = deadpool_redis::Connection::take(pool.get().await?);
        if let Ok(mut g) = slot.lock() {
            *g = Some(inner.clone());
        }
        Ok(Conn { inner, slot })
    }
}

/// One shared connection; forgets itself on a connection-level error.
pub struct Conn {
    inner: MultiplexedConnection,
    slot: Slot,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Conn")
    }
}

impl Conn {
    fn check<T>(&self, r: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(e) = &r {
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
                || e.is_unrecoverable_error()
            {
                if let Ok(mut g) = self.slot.lock() {
                    *g = None;
                }
            }
        }
        r
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let r = self.inner.req_packed_command(cmd).await;
            self.check(r)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let r = self
                .inner
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.check(r)
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}
