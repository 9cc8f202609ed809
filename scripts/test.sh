#!/usr/bin/env bash
# The test command of README.md: installs what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-redis.sh
cargo test --all-targets "$@"
