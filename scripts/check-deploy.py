#!/usr/bin/env python3
"""Checks docker-compose.yml and the Grafana files by reading them, where no
Docker engine is available to run `docker compose config`: every file the
stack mounts exists, workers scale, Redis persists, Grafana is provisioned,
and every dashboard panel says what it answers."""
import json
import os
import sys

import yaml

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
problems = []


def need(cond, msg):
    if not cond:
        problems.append(msg)


with open(os.path.join(root, "docker-compose.yml")) as f:
    compose = yaml.safe_load(f)
svc = compose.get("services", {})
for name in ["redis", "serve", "worker", "prometheus", "grafana"]:
    need(name in svc, f"service {name} missing")
w = svc.get("worker", {})
need("container_name" not in w, "worker has a container_name: --scale would fail")
need("ports" not in w, "worker publishes host ports: --scale would fail")
need(w.get("command") == ["work"], "worker must run `rebound work`")
need(w.get("environment", {}).get("REBOUND_METRICS_LISTEN", "").startswith("0.0.0.0:9091"), "worker metrics must listen on 0.0.0.0:9091 for Prometheus")
need(svc.get("serve", {}).get("command") == ["serve"], "serve must run `rebound serve`")
r = svc.get("redis", {})
need("--appendonly" in r.get("command", []) and "yes" in r.get("command", []), "redis must run with AOF on")
need(any(str(v).endswith(":/data") for v in r.get("volumes", [])), "redis data must be on a volume")
for s_name, s in svc.items():
    need("build" in s or "image" in s, f"{s_name} has neither build nor image")
    for v in s.get("volumes", []) or []:
        src = str(v).split(":")[0]
        if src.startswith("./"):
            need(os.path.exists(os.path.join(root, src)), f"{s_name} mounts {src}, which does not exist")
g = svc.get("grafana", {}).get("environment", {})
need(g.get("GF_AUTH_ANONYMOUS_ENABLED") == "true" and g.get("GF_AUTH_ANONYMOUS_ORG_ROLE") == "Viewer", "grafana must allow anonymous viewers")

with open(os.path.join(root, "prometheus", "prometheus.yml")) as f:
    prom = yaml.safe_load(f)
jobs = {j["job_name"]: j for j in prom.get("scrape_configs", [])}
need("rebound-serve" in jobs and "rebound-worker" in jobs, "prometheus must scrape serve and worker")
need(any("dns_sd_configs" in j for j in jobs.values()), "workers must be found by DNS so every scaled replica is scraped")

with open(os.path.join(root, "grafana", "dashboards", "rebound.json")) as f:
    dash = json.load(f)
rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
for row in ["Ingress", "Jobs", "Email", "Dead letters", "Forwarding"]:
    need(row in rows, f"dashboard row {row} missing")
for p in dash["panels"]:
    if p["type"] == "row":
        continue
    need(p.get("description", "").strip().endswith("?") or "?" in p.get("description", ""), f"panel {p['title']} does not say what question it answers")
    need(p.get("targets"), f"panel {p['title']} has no query")
with open(os.path.join(root, "grafana", "provisioning", "datasources", "prometheus.yml")) as f:
    ds = yaml.safe_load(f)
need(ds["datasources"][0]["uid"] == "prometheus", "datasource uid must be `prometheus` (the dashboard refers to it)")

if problems:
    print("deploy files have problems:")
    for p in problems:
        print(" -", p)
    sys.exit(1)
print("deploy files ok")
