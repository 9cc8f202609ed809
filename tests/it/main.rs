//! Integration tests: real `redis-server`, real HTTP on loopback.

mod queue;
mod utils;
