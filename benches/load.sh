#!/usr/bin/env bash
# Load benchmark: Kiln against the in-process ONNX Runtime limit and against MLServer,
# in ONE run on one machine, with Triton's perf_analyzer as the load tool.
#
#   benches/load.sh                       # REPS=3 WINDOW_MS=2000 CONCURRENCY="1 8 32"
#
# Models (made by scripts/make_models.py --bench-models): mlp_tiny (16->32->4) and
# mlp_heavy (256->1024->1024->1024->10). Targets, interleaved point by point and
# repeated REPS times (the machines are shared and noisy):
#   kiln-grpc, kiln-http           Kiln with its default config (dynamic batching on,
#                                  max_batch_size 32, max_queue_delay_us 0, 1 instance)
#   kiln-grpc-nobatch              mlp_heavy only: the same with dynamic_batching = false
#   kiln-grpc-8rows                mlp_heavy only, a diagnostic: 8 rows per request
#                                  (perf_analyzer -b 8), so per-request costs (client,
#                                  HTTP/2, protobuf) are shared by 8 samples
#   mlserver-grpc                  MLServer 1.7.1, a minimal onnxruntime runtime, adaptive
#                                  batching (max_batch_size 32, max_batch_time 2 ms)
#   ort (limit)                    benches/ort_limit.py: the model run in-process by
#                                  onnxruntime 1.31.1 at batch 1, 2, 4, ... 32
# Both runtimes use ONNX Runtime's default threading. Client and servers share the machine.
#
# Needs: what scripts/setup-python.sh installs (perf_analyzer, onnxruntime), python3 with
# venv, the peer harness in ../shared/peers (MLServer runtime and the model-config shim
# perf_analyzer needs). MLServer and matplotlib are installed into their own virtualenvs
# under BENCH_CACHE (default ~/.cache/kiln-bench). Output in OUT_DIR (default
# bench-out/load-<time>): CSVs and logs per point, limit.jsonl, summary.md, load.png.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
reps=${REPS:-3}
window=${WINDOW_MS:-2000}
concs=${CONCURRENCY:-"1 8 32"}
out=${OUT_DIR:-bench-out/load-$(date +%Y%m%d-%H%M%S)}
peers=${PEERS_SRC:-$root/../shared/peers}
cache=${BENCH_CACHE:-$HOME/.cache/kiln-bench}
mls_http=${MLS_HTTP_PORT:-18080}
mls_grpc=${MLS_GRPC_PORT:-18081}
mls_metrics=${MLS_METRICS_PORT:-18082}

venv=$(scripts/setup-python.sh | tail -n 1)
cargo build --release --locked
mkdir -p "$out" "$cache"
out=$(cd "$out" && pwd)
[ -f "$peers/mls/onnx_runtime.py" ] || { echo "peer harness not found at $peers (set PEERS_SRC)"; exit 1; }

mlsvenv=$cache/mlsvenv
if ! "$mlsvenv/bin/python" -c 'import mlserver, onnxruntime' 2>/dev/null; then
  python3 -m venv "$mlsvenv"
  "$mlsvenv/bin/pip" install -q mlserver==1.7.1 onnxruntime==1.31.1 numpy 'uvloop<0.22'
fi
plotvenv=$cache/plotvenv
if ! "$plotvenv/bin/python" -c 'import matplotlib' 2>/dev/null; then
  python3 -m venv "$plotvenv"
  "$plotvenv/bin/pip" install -q matplotlib
fi

# Models, and Kiln's repository for them.
"$venv/bin/python" scripts/make_models.py --bench-models "$out/models" >/dev/null
repo=$out/kiln-repo
for m in mlp_tiny mlp_heavy mlp_heavy_nobatch; do
  src=${m%_nobatch}
  mkdir -p "$repo/$m/1"
  cp "$out/models/$src/1/model.onnx" "$repo/$m/1/model.onnx"
done
echo 'dynamic_batching = false' >"$repo/mlp_heavy_nobatch/config.toml"

# MLServer's repository: same files, adaptive batching.
mls=$out/mls
mkdir -p "$mls"
cat >"$mls/settings.json" <<EOF
{"debug": false, "host": "127.0.0.1", "http_port": $mls_http, "grpc_port": $mls_grpc,
 "metrics_port": $mls_metrics, "parallel_workers": 1, "model_repository_root": "$mls"}
EOF
for m in mlp_tiny:16:4 mlp_heavy:256:10; do
  IFS=: read -r name din dout <<<"$m"
  mkdir -p "$mls/$name"
  cat >"$mls/$name/model-settings.json" <<EOF
{"name": "$name", "implementation": "onnx_runtime.OnnxModel", "platform": "onnxruntime_onnx",
 "max_batch_size": 32, "max_batch_time": 0.002,
 "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, $din]}],
 "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, $dout]}],
 "parameters": {"uri": "$out/models/$name/1/model.onnx", "version": "1"}}
EOF
done

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

target/release/kiln --model-repository "$repo" --http-address 127.0.0.1 --grpc-address 127.0.0.1 \
  --http-port 0 --grpc-port 0 >"$out/kiln.log" 2>&1 &
pids+=($!)
(cd "$mls" && PYTHONPATH="$peers/mls" MLS_ORT_THREADS=0 MLSERVER_PARALLEL_WORKERS=1 \
  exec "$mlsvenv/bin/python" "$peers/mls/serve_compat.py" "$mls" >"$out/mlserver.log" 2>&1) &
pids+=($!)
for _ in $(seq 150); do grep -q "model repository loaded" "$out/kiln.log" && break; sleep 0.2; done
strip() { sed 's/\x1b\[[0-9;]*m//g' "$1"; }
kiln_http=$(strip "$out/kiln.log" | sed -n 's/.*HTTP listening on [0-9.]*:\([0-9]*\).*/\1/p')
kiln_grpc=$(strip "$out/kiln.log" | sed -n 's/.*gRPC listening on [0-9.]*:\([0-9]*\).*/\1/p')
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$mls_http/v2/health/ready" >/dev/null && break; sleep 0.5; done
curl -sf "http://127.0.0.1:$mls_http/v2/health/ready" >/dev/null || { echo "MLServer did not start"; tail -30 "$out/mlserver.log"; exit 1; }

for m in mlp_tiny:16 mlp_heavy:256; do
  IFS=: read -r name din <<<"$m"
  "$venv/bin/python" -c "import json; print(json.dumps({'data': [{'INPUT0': [((i * 7) % 13) / 13 for i in range($din)]}]}))" >"$out/input_$name.json"
done
cudart=$("$venv/bin/python" -c 'import nvidia.cuda_runtime as m; print(list(m.__path__)[0] + "/lib")')
{
  echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -srm); client and servers on the same machine"
  echo "kiln: $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty'), $(strip "$out/kiln.log" | grep -o 'model=mlp_heavy version=1 backend="[a-z]*"' | head -1)"
  echo "mlserver: $("$mlsvenv/bin/pip" show mlserver | awk '/^Version/{print $2}'), onnxruntime $("$mlsvenv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)')"
  echo "perf_analyzer: tritonclient 2.51.0 wheel, --measurement-interval $window, --stability-percentage 200, reps $reps"
  echo "command: REPS=$reps WINDOW_MS=$window CONCURRENCY=\"$concs\" benches/load.sh"
} >"$out/machine.txt"
cat "$out/machine.txt"

point() { # target model protocol port concurrency rep [perf_analyzer options]
  local f="$out/$1__$2__c$5__r$6"
  LD_LIBRARY_PATH="$cudart:${LD_LIBRARY_PATH:-}" timeout 180 "$venv/bin/perf_analyzer" -m "$2" -u "127.0.0.1:$4" -i "$3" \
    --concurrency-range "$5" --measurement-interval "$window" --stability-percentage 200 --max-trials 8 \
    --input-data "$out/input_${2%_nobatch}.json" -f "$f.csv" "${@:7}" >"$f.log" 2>&1 \
    || echo "perf_analyzer failed: $1 $2 c$5 rep $6 (see $f.log)"
  printf '%s %s c=%s rep %s: %s\n' "$1" "$2" "$5" "$6" "$(grep -m1 'Throughput:' "$f.log" | xargs)"
}

for rep in $(seq "$reps"); do
  "$venv/bin/python" benches/ort_limit.py --model "mlp_tiny=$out/models/mlp_tiny/1/model.onnx" \
    --model "mlp_heavy=$out/models/mlp_heavy/1/model.onnx" --batches 1 2 4 8 16 32 --seconds 2 \
    | sed "s/^{/{\"rep\": $rep, /" >>"$out/limit.jsonl"
  for c in $concs; do
    for model in mlp_tiny mlp_heavy; do
      point kiln-grpc "$model" grpc "$kiln_grpc" "$c" "$rep"
      point kiln-http "$model" http "$kiln_http" "$c" "$rep"
      point mlserver-grpc "$model" grpc "$mls_grpc" "$c" "$rep"
    done
    point kiln-grpc-nobatch mlp_heavy_nobatch grpc "$kiln_grpc" "$c" "$rep"
    point kiln-grpc-8rows mlp_heavy grpc "$kiln_grpc" "$c" "$rep" -b 8
  done
done

"$plotvenv/bin/python" benches/load_report.py "$out" | tee "$out/summary.md"
echo "results in $out"
