#!/usr/bin/env bash
# Runs Kiln's whole test suite: Rust unit and integration tests (the real binary
# over REST and gRPC), then the Python suite (tritonclient over HTTP JSON/binary and
# gRPC against in-process onnxruntime on both backends, and perf_analyzer smoke runs).
# Then a 2-minute soak (scripts/soak.py), each fuzz target for 10 seconds
# (scripts/fuzz.sh) and the deployment checks
# (scripts/deploy-checks.sh): Dockerfile, Kubernetes manifests, alert rules and
# dashboard, and the image built and run with podman.
# Installs what it needs: the virtualenv (scripts/setup-python.sh), libb64 for
# perf_analyzer, Prometheus for the scrape test, and the deployment tools.
#   KILN_DEPLOY_CHECKS=0   skip the deployment checks
#   KILN_FUZZ=0            skip the fuzz targets' short runs (KILN_FUZZ_SECS each)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(scripts/setup-python.sh | tail -n 1)
cargo build --release --locked
cargo test --release --workspace --locked
KILN_BIN="$PWD/target/release/kiln" \
KILN_REQUIRE_PERF_ANALYZER="${KILN_REQUIRE_PERF_ANALYZER:-1}" \
  "$venv/bin/python" -m pytest -q tests/python "$@"
# The soak's short form: 2 minutes of load, hot reloads, canary changes and
# connection churn, failing on growth of memory, descriptors or threads
# (scripts/soak.sh runs the 30-minute one).
KILN_BIN="$PWD/target/release/kiln" DURATION_SECS=120 INTERVAL_SECS=20 \
  "$venv/bin/python" scripts/soak.py
# The fuzz targets' short form: each for KILN_FUZZ_SECS (default 10) from its
# seed corpus, failing on a crash (scripts/fuzz.sh alone runs 30 minutes each).
if [ "${KILN_FUZZ:-1}" != 0 ]; then
  FUZZ_SECS="${KILN_FUZZ_SECS:-10}" scripts/fuzz.sh
fi
if [ "${KILN_DEPLOY_CHECKS:-1}" != 0 ]; then
  scripts/deploy-checks.sh
fi
