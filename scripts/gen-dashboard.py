#!/usr/bin/env python3
"""Writes grafana/dashboards/rebound.json: one row per concern, every panel
with a description that says which question it answers.

    python3 scripts/gen-dashboard.py > grafana/dashboards/rebound.json

tests/it/observability.rs runs every target's expr against a real Prometheus
scraping a running `rebound up` and fails when one returns no series.
"""
import json

ROWS = [
    ("Ingress", [
        ("Webhooks received by outcome", "Are Resend's webhooks getting in? accepted and duplicate are healthy; invalid_signature means a wrong secret; storage_unavailable (503) means Redis is down and Svix is retrying.",
         [("sum by (outcome) (rate(rebound_webhooks_received_total[5m]))", "{{outcome}}")], "reqps"),
        ("Ingress latency p99", "How long does a sender wait for our 200? It includes the Redis write that makes the event durable.",
         [("histogram_quantile(0.99, sum by (le, route) (rate(rebound_ingress_request_duration_seconds_bucket[5m])))", "{{route}}")], "s"),
        ("Events by type", "Which Resend events arrive, and how many?",
         [("sum by (type) (rate(rebound_events_total[5m]))", "{{type}}")], "reqps"),
    ]),
    ("Jobs", [
        ("Jobs processed by outcome", "Are workers keeping up, and how many runs end in ok, retry, deferred or dead?",
         [("sum by (queue, outcome) (rate(rebound_jobs_processed_total[5m]))", "{{queue}} {{outcome}}")], "ops"),
        ("Attempts", "How many handler runs per queue and kind, first tries and retries together?",
         [("sum by (queue, kind) (rate(rebound_job_attempts_total[5m]))", "{{queue}} {{kind}}")], "ops"),
        ("Retries scheduled", "How often do jobs fail and go to the retry set?",
         [("sum by (queue, kind) (rate(rebound_retries_scheduled_total[5m]))", "{{queue}} {{kind}}")], "ops"),
        ("Job duration p50 / p99", "How long does one handler run take? A rising p99 on emails usually means Resend is slow.",
         [("histogram_quantile(0.5, sum by (le, queue) (rate(rebound_job_duration_seconds_bucket[5m])))", "p50 {{queue}}"),
          ("histogram_quantile(0.99, sum by (le, queue) (rate(rebound_job_duration_seconds_bucket[5m])))", "p99 {{queue}}")], "s"),
        ("Waiting and pending per queue", "How much work is waiting in each stream, and how much is delivered to a worker but not yet acknowledged?",
         [("max by (queue) (rebound_stream_length)", "length {{queue}}"), ("max by (queue) (rebound_stream_pending)", "pending {{queue}}")], "short"),
        ("Oldest pending age", "Is any job stuck? Age of the oldest delivered-but-unacknowledged entry; past the visibility timeout it is reclaimed by another worker.",
         [("max by (queue) (rebound_oldest_pending_seconds)", "{{queue}}")], "s"),
        ("Retry set and lateness", "How many jobs wait for a retry or a scheduled re-send, and how late does the scheduler move them back?",
         [("max(rebound_retry_scheduled)", "in retry set"),
          ("histogram_quantile(0.99, sum by (le) (rate(rebound_retry_lateness_seconds_bucket[5m])))", "lateness p99 (s)")], "short"),
        ("Consumers per queue", "Is any worker reading each queue? Zero with pending work means nothing is consuming it.",
         [("max by (queue) (rebound_stream_consumers)", "{{queue}}")], "short"),
    ]),
    ("Email", [
        ("First sends vs re-sends", "How many emails go out for the first time, and how many are plain-text re-sends of bounced ones?",
         [("sum by (category) (rate(rebound_emails_sent_total{attempt=\"1\"}[5m]))", "first {{category}}"),
          ("sum by (category) (rate(rebound_emails_sent_total{attempt!=\"1\"}[5m]))", "re-send {{category}}")], "ops"),
        ("Bounces by type and subtype", "Why do emails bounce? Transient and Permanent/General are re-sent; NoEmail and suppression-list bounces suppress the address.",
         [("sum by (type, subtype) (increase(rebound_bounces_total[1h]))", "{{type}}/{{subtype}}")], "short"),
        ("Suppressions", "How many recipients were suppressed, and why (bounce, complaint, Resend's own suppression, manual)?",
         [("sum by (reason) (increase(rebound_suppressions_total[1h]))", "{{reason}}")], "short"),
        ("Resend API latency p99", "Is Resend answering quickly, and with which statuses?",
         [("histogram_quantile(0.99, sum by (le, endpoint) (rate(rebound_resend_request_duration_seconds_bucket[5m])))", "{{endpoint}}"),
          ("sum by (endpoint, status) (rate(rebound_resend_request_duration_seconds_count[5m]))", "{{endpoint}} {{status}} req/s")], "s"),
    ]),
    ("Dead letters", [
        ("Dead-letter stream size", "How many jobs have finally failed and wait for a person (rebound dlq list, redis-cli XRANGE rebound:dead - +)?",
         [("max(rebound_dead_letter_length)", "dead letters")], "short"),
        ("Dead letters by reason", "Why do jobs end up dead: exhausted retries, a permanent provider error, poison entries, unknown kinds?",
         [("sum by (queue, reason) (increase(rebound_dead_letters_total[1h]))", "{{queue}} {{reason}}")], "short"),
    ]),
    ("Forwarding", [
        ("Suspended subscriptions", "Which downstream subscribers are suspended or disabled (1)? Their deliveries are parked until they recover.",
         [("max by (name) (rebound_subscription_suspended)", "{{name}}")], "short"),
        ("Deliveries by outcome", "Are subscribers receiving events, or failing, being parked, or gone?",
         [("sum by (subscription, outcome) (rate(rebound_forward_deliveries_total[5m]))", "{{subscription}} {{outcome}}")], "ops"),
    ]),
]


def build():
    panels, pid, y = [], 1, 0
    for title, row in ROWS:
        panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        for i, (ptitle, desc, targets, unit) in enumerate(row):
            panels.append({
                "type": "timeseries",
                "title": ptitle,
                "description": desc,
                "id": pid,
                "datasource": {"type": "prometheus", "uid": "prometheus"},
                "gridPos": {"h": 8, "w": 8, "x": (i % 3) * 8, "y": y + (i // 3) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
                "targets": [{"refId": chr(ord("A") + n), "expr": e, "legendFormat": l,
                             "datasource": {"type": "prometheus", "uid": "prometheus"}} for n, (e, l) in enumerate(targets)],
            })
            pid += 1
        y += ((len(row) + 2) // 3) * 8
    return {
        "title": "rebound",
        "uid": "rebound",
        "description": "Webhook ingress, job queues, email bounces and re-sends, dead letters and forwarding.",
        "tags": ["rebound"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "panels": panels,
        "templating": {"list": []},
        "annotations": {"list": []},
    }


print(json.dumps(build(), indent=2))
