#!/usr/bin/env bash
# Runs rebound with every role in one process and the Resend emulator, so the
# whole loop works with no Resend account. Installs redis-server when it is
# missing; `rebound up` starts it when nothing listens on 127.0.0.1:6379.
# Extra arguments go to `rebound up` (e.g. none, to use a real Resend account:
# RESEND_API_KEY=re_... RESEND_WEBHOOK_SECRET=whsec_... cargo run --release -- up).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-redis.sh
exec cargo run --release -- --config config/sandbox.toml up --sandbox "$@"
