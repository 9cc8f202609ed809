//! # rebound
//!
//! Durable Redis Streams jobs for transactional email: Svix-verified Resend
//! webhooks in, consumer-group workers, plain-text re-sends of bounced
//! transactional email, forwarding to downstream subscribers, dead letters
//! you can read with `redis-cli`, and Prometheus metrics.
//!
//! # Layout
//!
//! - [`cli`]: the command line (clap types only).
//! - [`app`]: composes the roles (`up`, `serve`, `work`) and runs commands.
//! - [`config`]: defaults, file, environment, validation, secret masking.
//! - [`ingress`]: signed webhooks in (Svix verification), admin API, error mapping.
//! - [`keys`]: every Redis key, derived from the prefix.
//! - [`queue`]: streams, retry set, dead letters; one Lua script per atomic step.
//! - [`worker`]: consumer-group worker, acknowledgement batching, reclaim, drain.
//! - [`scheduler`]: moves due jobs from the retry set back to their streams.
//! - [`metrics`]: every metric family, the gauge sampler.
//! - [`email`]: send API, delivery records, bounce re-sends, suppression, Resend client.
//! - [`forward`]: forwarding to subscribers: signed, retried, suspended, auto-resumed.
//! - [`http`]: serves warp filters on our own listeners, with graceful drain.
//! - [`sandbox`]: the Resend emulator (`rebound sandbox`, `up --sandbox`).
//! - [`shutdown`]: SIGINT / SIGTERM into a cancellation token.
//! - [`redis_server`]: a local `redis-server` child for `rebound up`.
//! - [`bench`]: `rebound bench` load generators.

#![forbid(unsafe_code)]

pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod email;
pub mod forward;
pub mod http;
pub mod ingress;
pub mod keys;
pub mod metrics;
pub mod queue;
pub mod redis_server;
pub mod sandbox;
pub mod scheduler;
pub mod shutdown;
pub mod worker;

pub use app::dispatch;
