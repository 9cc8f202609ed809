#!/usr/bin/env bash
# Runs rebound with every role in one process. Installs redis-server when it
# is missing; `rebound up` starts it when nothing listens on 127.0.0.1:6379.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-redis.sh
if [ -z "${RESEND_WEBHOOK_SECRET:-}" ]; then
  RESEND_WEBHOOK_SECRET="whsec_$(head -c 24 /dev/urandom | base64)"
  export RESEND_WEBHOOK_SECRET
  echo "generated a webhook secret for this run: $RESEND_WEBHOOK_SECRET" >&2
fi
exec cargo run --release -- up "$@"
