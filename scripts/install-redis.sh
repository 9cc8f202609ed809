#!/usr/bin/env bash
# Installs redis-server from Debian's packages when it is missing.
# rebound's tests start their own redis-server; `rebound up` starts one when
# nothing listens on 127.0.0.1:6379. Both need the binary.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "redis-server not found; installing it with apt-get" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
# Debian's package starts a system service on 6379; rebound does not need it
# to run, and the tests never touch it.
command -v redis-server >/dev/null
