//! Every Redis key rebound touches, derived from one prefix.
//!
//! Keeping the names in one place is what makes the prefix a real isolation
//! boundary: tests run side by side on one server with random prefixes, and a
//! deployment on Redis Cluster sets `prefix = "{rebound}"` so that every key
//! (and therefore every Lua script) lands in one hash slot.

/// The key names of one rebound deployment (one prefix).
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

/// The consumer group every worker joins; one group per stream.
pub const GROUP: &str = "rebound";

impl Keys {
    /// Builds the key set for `prefix` (for example `rebound` or `{rebound}`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix as configured, without the trailing colon.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The prefix followed by `:`: Lua scripts build derived key names from it
    /// so that they never leave this deployment's keyspace.
    pub fn base(&self) -> String {
        format!("{}:", self.prefix)
    }

    /// Stream of jobs for one queue (`events`, `emails`, `webhooks`), read by
    /// the consumer group [`GROUP`]; processed entries are deleted.
    pub fn stream(&self, queue: &str) -> String {
        format!("{}:stream:{}", self.prefix, queue)
    }

    /// Sorted set of job ids waiting for a retry or a scheduled run; the score
    /// is the due time in unix milliseconds.
    pub fn retry(&self) -> String {
        format!("{}:retry", self.prefix)
    }

    /// Envelope of a job that waits in [`Keys::retry`].
    pub fn job(&self, id: &str) -> String {
        format!("{}:job:{}", self.prefix, id)
    }

    /// Dead-letter stream: every job that finally failed, readable with
    /// `redis-cli XRANGE <prefix>:dead - +`.
    pub fn dead(&self) -> String {
        format!("{}:dead", self.prefix)
    }

    /// Ingress dedupe marker for one webhook message id (with a TTL).
    pub fn seen(&self, message_id: &str) -> String {
        format!("{}:seen:{}", self.prefix, message_id)
    }

    /// Delivery record of one email (a hash).
    pub fn email(&self, id: &str) -> String {
        format!("{}:email:{}", self.prefix, id)
    }

    /// Event history of one email (a list of JSON entries, oldest first).
    pub fn email_events(&self, id: &str) -> String {
        format!("{}:email:{}:events", self.prefix, id)
    }

    /// Index of all delivery records, newest first by score (created unix ms),
    /// which backs cursor pagination of `GET /v1/emails`.
    pub fn email_index(&self) -> String {
        format!("{}:emails", self.prefix)
    }

    /// Maps a provider (Resend) email id to our delivery record id.
    pub fn provider_map(&self) -> String {
        format!("{}:provider", self.prefix)
    }

    /// Maps a send request's idempotency key to the id it created.
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}:idem:{}", self.prefix, key)
    }

    /// Hash of suppressed recipients: address -> reason JSON.
    pub fn suppressed(&self) -> String {
        format!("{}:suppressed", self.prefix)
    }

    /// Shared token bucket for the Resend API rate limit, one per second window.
    pub fn rate_limit(&self, window: u64) -> String {
        format!("{}:ratelimit:{}", self.prefix, window)
    }

    /// State of one forwarding subscription (a hash).
    pub fn subscription(&self, name: &str) -> String {
        format!("{}:sub:{}", self.prefix, name)
    }

    /// Set of subscription names known at runtime.
    pub fn subscriptions(&self) -> String {
        format!("{}:subs", self.prefix)
    }

    /// Parked deliveries of a suspended subscription, oldest first (a list).
    pub fn parked(&self, name: &str) -> String {
        format!("{}:parked:{}", self.prefix, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_contract() {
        let k = Keys::new("rebound");
        assert_eq!(k.stream("events"), "rebound:stream:events");
        assert_eq!(k.retry(), "rebound:retry");
        assert_eq!(k.job("abc"), "rebound:job:abc");
        assert_eq!(k.dead(), "rebound:dead");
        assert_eq!(k.seen("msg_1"), "rebound:seen:msg_1");
        assert_eq!(k.email("e1"), "rebound:email:e1");
        assert_eq!(k.email_events("e1"), "rebound:email:e1:events");
        assert_eq!(k.suppressed(), "rebound:suppressed");
        assert_eq!(k.subscription("helpdesk"), "rebound:sub:helpdesk");
    }

    #[test]
    fn cluster_prefix_keeps_the_hash_tag() {
        let k = Keys::new("{rebound}");
        assert_eq!(k.stream("emails"), "{rebound}:stream:emails");
        assert_eq!(k.base(), "{rebound}:");
    }
}
