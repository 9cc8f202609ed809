#!/usr/bin/env bash
# Installs what the tests use and a fresh Debian machine lacks, from Debian's
# packages: redis-server (every Redis test starts its own), prometheus and
# promtool (the observability tests run a real Prometheus), openssl (a
# self-signed TLS listener for the forwarding tests), python3-yaml (the
# deploy-file check).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-redis.sh
missing=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
python3 -c 'import yaml' >/dev/null 2>&1 || missing+=(python3-yaml)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "installing ${missing[*]} with apt-get" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
