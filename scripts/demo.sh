#!/usr/bin/env bash
# Installs what the demo needs (apt packages, .venv), then runs a simulated mesh of three agent
# processes with fake hardware on this machine. Extra arguments go to `avi-agent simulate`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/avi-agent simulate "$@"
