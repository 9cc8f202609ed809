//! The Lua scripts behind every multi-step queue operation.
//!
//! Each file in `lua/` is one atomic step with a header listing KEYS, ARGV and
//! the reply. `redis::Script` sends `EVALSHA` and falls back to `EVAL` once
//! after a `NOSCRIPT` (a restarted Redis), so scripts survive restarts.

use redis::Script;

/// Every script, loaded once per process.
#[derive(Debug)]
pub struct Scripts {
    /// `XACK` + `XDEL` of processed entries.
    pub ack: Script,
    /// Envelope into the retry set + ack of its entry.
    pub schedule: Script,
    /// Dead letter + ack of its entry.
    pub dead: Script,
    /// Due jobs from the retry set back to their streams.
    pub promote: Script,
    /// `XAUTOCLAIM` with poison detection.
    pub reclaim: Script,
    /// Dead letter back onto its stream.
    pub replay: Script,
    /// Webhook dedupe + append.
    pub ingest: Script,
}

impl Scripts {
    /// Loads the embedded script sources.
    pub fn new() -> Self {
        Self {
            ack: Script::new(include_str!("lua/ack.lua")),
            schedule: Script::new(include_str!("lua/schedule.lua")),
            dead: Script::new(include_str!("lua/dead.lua")),
            promote: Script::new(include_str!("lua/promote.lua")),
            reclaim: Script::new(include_str!("lua/reclaim.lua")),
            replay: Script::new(include_str!("lua/replay.lua")),
            ingest: Script::new(include_str!("lua/ingest.lua")),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}
