#!/usr/bin/env bash
# The test command of README.md: installs what the tests need, then runs the
# unit and integration tests and the deploy-file check.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
python3 scripts/check-deploy.py
cargo test --all-targets "$@"
