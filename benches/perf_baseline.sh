#!/usr/bin/env bash
# Baseline: perf_analyzer against Kiln on the tiny MLP, REST and gRPC, concurrency 1 and 8.
# Points are interleaved (rep 1: http c1, http c8, grpc c1, grpc c8; rep 2: ...) and repeated,
# because the machines are shared and noisy; summary.md reports medians and min-max spreads.
#   REPS (default 3), WINDOW_MS (default 3000), OUT_DIR (default bench-out/baseline-<time>)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(scripts/setup-python.sh | tail -n 1)
cargo build --release --locked
reps=${REPS:-3}
window=${WINDOW_MS:-3000}
out=${OUT_DIR:-bench-out/baseline-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
target/release/kiln --model-repository models --http-address 127.0.0.1 --grpc-address 127.0.0.1 \
  --http-port 0 --grpc-port 0 >"$out/kiln.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "model repository loaded" "$out/kiln.log" && break; sleep 0.2; done
http=$(sed 's/\x1b\[[0-9;]*m//g' "$out/kiln.log" | sed -n 's/.*HTTP listening on [0-9.]*:\([0-9]*\).*/\1/p')
grpc=$(sed 's/\x1b\[[0-9;]*m//g' "$out/kiln.log" | sed -n 's/.*gRPC listening on [0-9.]*:\([0-9]*\).*/\1/p')
"$venv/bin/python" -c 'import json; print(json.dumps({"data": [{"INPUT0": [i / 16 for i in range(16)]}]}))' >"$out/input.json"
cudart=$("$venv/bin/python" -c 'import nvidia.cuda_runtime as m; print(list(m.__path__)[0] + "/lib")')
{
  echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -srm); client and server on the same machine"
  echo "kiln: $(git rev-parse --short HEAD), backend: $(sed 's/\x1b\[[0-9;]*m//g' "$out/kiln.log" | grep -o 'model=mlp_tiny version=1 backend="[a-z]*"' | head -1)"
  echo "perf_analyzer: tritonclient 2.51.0 wheel, --measurement-interval $window, reps $reps"
} >"$out/machine.txt"
for rep in $(seq "$reps"); do
  for proto in http grpc; do
    port=$([ "$proto" = http ] && echo "$http" || echo "$grpc")
    for c in 1 8; do
      LD_LIBRARY_PATH="$cudart:${LD_LIBRARY_PATH:-}" "$venv/bin/perf_analyzer" -m mlp_tiny -u "127.0.0.1:$port" -i "$proto" \
        --concurrency-range "$c" --measurement-interval "$window" --stability-percentage 100 --max-trials 10 \
        --input-data "$out/input.json" -f "$out/${proto}_c${c}_r${rep}.csv" >"$out/${proto}_c${c}_r${rep}.log" 2>&1 \
        || echo "perf_analyzer failed: $proto c$c rep $rep (see its log)"
    done
  done
done
"$venv/bin/python" benches/summarize.py "$out" | tee "$out/summary.md"
