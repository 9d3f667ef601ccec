#!/usr/bin/env bash
# A soak of one Kiln process (see scripts/soak.py): 30 minutes by default,
# DURATION_SECS=120 INTERVAL_SECS=20 for CI's short form. Uses the test venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${KILN_VENV:-$PWD/.venv}
exec "$venv/bin/python" scripts/soak.py "$@"
