//! Integration tests: real `redis-server`, real HTTP on loopback.

mod ingress;
mod queue;
mod utils;
