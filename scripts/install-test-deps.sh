#!/usr/bin/env bash
# Installs what the tests use and a fresh Debian machine lacks, from Debian's
# packages: redis-server (every Redis test starts its own), prometheus and
# promtool (the observability tests run a real Prometheus), openssl (a
# self-signed TLS listener for the forwarding tests), PyYAML (the deploy-file
# check).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-redis.sh
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
missing=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} with apt-get" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# PyYAML for the python3 on PATH (which may be pyenv's, not Debian's).
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
  python3 -m pip install --quiet pyyaml 2>/dev/null \
    || { $SUDO apt-get install -y -qq python3-yaml >/dev/null; }
fi
python3 -c 'import yaml' >/dev/null 2>&1 || { echo "python3 cannot import yaml; install PyYAML" >&2; exit 1; }
