//! Integration tests: real `redis-server`, real HTTP on loopback.
//!
//! A failed `unwrap` here is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod email;
mod forward;
mod ingress;
mod observability;
mod queue;
mod sandbox;
mod utils;
