//! Prometheus metrics: every family of the contract, registered on a registry
//! that is passed in so tests get a fresh one.
//!
//! Counters and histograms are updated on the hot path; the queue gauges are
//! sampled from Redis by [`sampler`] on an interval, so a scrape never waits
//! on Redis and a slow Redis cannot make `/metrics` time out.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;

use crate::queue::Queue;

/// Metric registration failed (a duplicate name: a bug, not a runtime state).
#[derive(Debug, thiserror::Error)]
#[error("cannot register metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// Every metric family rebound exports.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Webhook requests by outcome (`accepted`, `duplicate`, `bad_signature`, ...).
    pub webhooks_received: IntCounterVec,
    /// Ingested events by Resend event type.
    pub events: IntCounterVec,
    /// Finished job runs by outcome (`ok`, `retry`, `dead`).
    pub jobs_processed: IntCounterVec,
    /// Every handler run, successful or not.
    pub job_attempts: IntCounterVec,
    /// Failures that were scheduled for another attempt.
    pub retries_scheduled: IntCounterVec,
    /// Jobs moved to the dead-letter stream, by reason.
    pub dead_letters: IntCounterVec,
    /// Bounces by Resend `bounce.type` / `bounce.subType`.
    pub bounces: IntCounterVec,
    /// Emails handed to Resend, by category and attempt (1 = first send).
    pub emails_sent: IntCounterVec,
    /// Addresses suppressed, by reason.
    pub suppressions: IntCounterVec,
    /// Handler run time.
    pub job_duration: HistogramVec,
    /// Resend API latency by endpoint and status.
    pub resend_request_duration: HistogramVec,
    /// Ingress request latency by route.
    pub ingress_request_duration: HistogramVec,
    /// Forwarded deliveries by subscription and outcome.
    pub forward_deliveries: IntCounterVec,
    /// Entries waiting in each stream (sampled).
    pub stream_length: IntGaugeVec,
    /// Entries delivered but not acknowledged, per stream (sampled).
    pub stream_pending: IntGaugeVec,
    /// Consumers in each group (sampled).
    pub stream_consumers: IntGaugeVec,
    /// Jobs waiting in the retry set (sampled).
    pub retry_scheduled: IntGauge,
    /// Entries in the dead-letter stream (sampled).
    pub dead_letter_length: IntGauge,
    /// Age of the oldest pending entry per stream (sampled).
    pub oldest_pending_seconds: prometheus::GaugeVec,
    /// How late a due job was moved back to its stream.
    pub retry_lateness: Histogram,
    /// 1 while a forwarding subscription is suspended.
    pub subscription_suspended: IntGaugeVec,
}

const FAST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const SLOW_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

impl Metrics {
    /// Registers every family on `registry`.
    ///
    /// # Errors
    /// A family is already registered on `registry`.
    pub fn new(registry: Registry) -> Result<Self, MetricsError> {
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, MetricsError> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let hist = |name: &str,
                    help: &str,
                    labels: &[&str],
                    buckets: &[f64]|
         -> Result<HistogramVec, MetricsError> {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let gauge_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, MetricsError> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let retry_scheduled = IntGauge::new(
            "rebound_retry_scheduled",
            "Jobs waiting in the retry sorted set.",
        )?;
        registry.register(Box::new(retry_scheduled.clone()))?;
        let dead_letter_length = IntGauge::new(
            "rebound_dead_letter_length",
            "Entries in the dead-letter stream.",
        )?;
        registry.register(Box::new(dead_letter_length.clone()))?;
        let oldest_pending_seconds = prometheus::GaugeVec::new(
            Opts::new(
                "rebound_oldest_pending_seconds",
                "Age of the oldest delivered-but-unacknowledged entry per queue.",
            ),
            &["queue"],
        )?;
        registry.register(Box::new(oldest_pending_seconds.clone()))?;
        let retry_lateness = Histogram::with_opts(
            HistogramOpts::new(
                "rebound_retry_lateness_seconds",
                "How late a due job was moved back to its stream.",
            )
            .buckets(FAST_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(retry_lateness.clone()))?;
        Ok(Self {
            webhooks_received: counter(
                "rebound_webhooks_received_total",
                "Webhook requests by outcome.",
                &["outcome"],
            )?,
            events: counter(
                "rebound_events_total",
                "Ingested webhook events by type.",
                &["type"],
            )?,
            jobs_processed: counter(
                "rebound_jobs_processed_total",
                "Finished job runs by outcome.",
                &["queue", "kind", "outcome"],
            )?,
            job_attempts: counter(
                "rebound_job_attempts_total",
                "Handler runs.",
                &["queue", "kind"],
            )?,
            retries_scheduled: counter(
                "rebound_retries_scheduled_total",
                "Failed jobs scheduled for another attempt.",
                &["queue", "kind"],
            )?,
            dead_letters: counter(
                "rebound_dead_letters_total",
                "Jobs moved to the dead-letter stream.",
                &["queue", "kind", "reason"],
            )?,
            bounces: counter(
                "rebound_bounces_total",
                "Bounces by Resend bounce type and subtype.",
                &["type", "subtype"],
            )?,
            emails_sent: counter(
                "rebound_emails_sent_total",
                "Emails accepted by Resend, by category and attempt.",
                &["category", "attempt"],
            )?,
            suppressions: counter(
                "rebound_suppressions_total",
                "Recipients suppressed, by reason.",
                &["reason"],
            )?,
            job_duration: hist(
                "rebound_job_duration_seconds",
                "Handler run time.",
                &["queue", "kind"],
                FAST_BUCKETS,
            )?,
            resend_request_duration: hist(
                "rebound_resend_request_duration_seconds",
                "Resend API latency.",
                &["endpoint", "status"],
                SLOW_BUCKETS,
            )?,
            ingress_request_duration: hist(
                "rebound_ingress_request_duration_seconds",
                "Ingress request latency.",
                &["route"],
                FAST_BUCKETS,
            )?,
            forward_deliveries: counter(
                "rebound_forward_deliveries_total",
                "Forwarded deliveries by subscription and outcome.",
                &["subscription", "outcome"],
            )?,
            stream_length: gauge_vec(
                "rebound_stream_length",
                "Entries in each queue stream.",
                &["queue"],
            )?,
            stream_pending: gauge_vec(
                "rebound_stream_pending",
                "Delivered but unacknowledged entries per queue.",
                &["queue"],
            )?,
            stream_consumers: gauge_vec(
                "rebound_stream_consumers",
                "Consumers in each queue's group.",
                &["queue"],
            )?,
            retry_scheduled,
            dead_letter_length,
            oldest_pending_seconds,
            retry_lateness,
            subscription_suspended: gauge_vec(
                "rebound_subscription_suspended",
                "1 while a forwarding subscription is suspended.",
                &["name"],
            )?,
            registry,
        })
    }

    /// A fresh registry with every family; what each process starts with.
    ///
    /// # Errors
    /// Only on a bug (duplicate family names).
    pub fn fresh() -> Result<Arc<Self>, MetricsError> {
        Ok(Arc::new(Self::new(Registry::new())?))
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Samples the queue gauges from Redis every `every` until `shutdown`.
///
/// Errors are logged at debug level only: the worker loops already report
/// Redis outages once, and the gauges simply keep their last value.
pub async fn sampler(
    queue: Queue,
    queues: Vec<String>,
    metrics: Arc<Metrics>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match queue.stats(&queues).await {
            Ok(stats) => {
                for q in &stats.queues {
                    metrics
                        .stream_length
                        .with_label_values(&[&q.queue])
                        .set(q.length as i64);
                    metrics
                        .stream_pending
                        .with_label_values(&[&q.queue])
                        .set(q.pending as i64);
                    metrics
                        .stream_consumers
                        .with_label_values(&[&q.queue])
                        .set(q.consumers as i64);
                    metrics
                        .oldest_pending_seconds
                        .with_label_values(&[&q.queue])
                        .set(q.oldest_pending_ms as f64 / 1000.0);
                }
                metrics.retry_scheduled.set(stats.retry as i64);
                metrics.dead_letter_length.set(stats.dead as i64);
            }
            Err(e) => tracing::debug!(error = %e, "metrics sampler: cannot read queue stats"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_family_is_exported() {
        let m = Metrics::new(Registry::new()).expect("register");
        m.webhooks_received.with_label_values(&["accepted"]).inc();
        m.events.with_label_values(&["email.bounced"]).inc();
        m.jobs_processed
            .with_label_values(&["emails", "email.send", "ok"])
            .inc();
        m.job_attempts
            .with_label_values(&["emails", "email.send"])
            .inc();
        m.retries_scheduled
            .with_label_values(&["emails", "email.send"])
            .inc();
        m.dead_letters
            .with_label_values(&["emails", "email.send", "exhausted"])
            .inc();
        m.bounces.with_label_values(&["Permanent", "General"]).inc();
        m.emails_sent
            .with_label_values(&["verification", "1"])
            .inc();
        m.job_duration
            .with_label_values(&["emails", "email.send"])
            .observe(0.01);
        m.resend_request_duration
            .with_label_values(&["send", "200"])
            .observe(0.1);
        m.ingress_request_duration
            .with_label_values(&["webhooks_resend"])
            .observe(0.001);
        m.stream_length.with_label_values(&["events"]).set(1);
        m.stream_pending.with_label_values(&["events"]).set(1);
        m.oldest_pending_seconds
            .with_label_values(&["events"])
            .set(1.0);
        m.subscription_suspended
            .with_label_values(&["helpdesk"])
            .set(1);
        m.retry_lateness.observe(0.01);
        let text = m.render();
        for family in [
            "rebound_webhooks_received_total",
            "rebound_events_total",
            "rebound_jobs_processed_total",
            "rebound_job_attempts_total",
            "rebound_retries_scheduled_total",
            "rebound_dead_letters_total",
            "rebound_bounces_total",
            "rebound_emails_sent_total",
            "rebound_job_duration_seconds_bucket",
            "rebound_resend_request_duration_seconds_bucket",
            "rebound_ingress_request_duration_seconds_bucket",
            "rebound_stream_length",
            "rebound_stream_pending",
            "rebound_retry_scheduled",
            "rebound_dead_letter_length",
            "rebound_oldest_pending_seconds",
            "rebound_retry_lateness_seconds_bucket",
            "rebound_subscription_suspended",
        ] {
            assert!(text.contains(family), "missing {family}");
        }
    }

    #[test]
    fn registries_are_independent() {
        let a = Metrics::new(Registry::new()).expect("a");
        let b = Metrics::new(Registry::new()).expect("b");
        a.events.with_label_values(&["email.sent"]).inc();
        assert!(a.render().contains("email.sent"));
        assert!(!b.render().contains("email.sent"));
    }
}
