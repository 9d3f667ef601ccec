#!/usr/bin/env bash
# Load benchmark: Kiln against the in-process ONNX Runtime limit, MLServer and Triton,
# in ONE run on one machine, every server driven by the same client, kiln-bench
# (closed loop, gRPC, one connection, as perf_analyzer's gRPC client).
#
#   benches/load.sh                       # REPS=3 SECONDS_PER_POINT=4 CONCURRENCY="1 16 32"
#
# Models (made by scripts/make_models.py --bench-models): mlp_tiny (16->32->4) and
# mlp_heavy (256->1024->1024->1024->10). Targets, interleaved point by point and
# repeated REPS times (the machines are shared and noisy):
#   kiln-grpc, kiln-http           Kiln with its default config (dynamic batching on,
#                                  max_batch_size 32, max_queue_delay_us 0, 1 instance);
#                                  REST with the binary tensor extension
#   kiln-grpc-nobatch              mlp_heavy only: the same with dynamic_batching = false
#   mlserver-grpc                  MLServer 1.7.1, a minimal onnxruntime runtime, adaptive
#                                  batching (max_batch_size 32, max_batch_time 2 ms)
#   triton-grpc                    Triton 2.51 (nvidia-pytriton 0.7.0's tritonserver),
#                                  onnxruntime in a Python callable, dynamic batching
#                                  (max_batch_size 32, max_queue_delay 2 ms)
#   ort (limit)                    benches/ort_limit.py: the model run in-process by
#                                  onnxruntime 1.31.1 at batch 1, 2, 4, ... 32
# Every runtime uses ONNX Runtime's default threading. Per point: throughput, p50/p90/p99
# (kiln-bench), the server's CPU per inference (its whole process tree from /proc over the
# measured window) and, where the server has the statistics extension, the batch it formed;
# per batch size in-process: samples/s and CPU per sample. Client and servers share the
# machine.
#
# Needs: what scripts/setup-python.sh installs (onnxruntime), python3 with venv, the peer
# harness in ../shared/peers (MLServer's onnxruntime runtime). MLServer, PyTriton and
# matplotlib are installed into their own virtualenvs under BENCH_CACHE (default
# ~/.cache/kiln-bench). Output in OUT_DIR (default bench-out/load-<time>): one kiln-bench
# JSON report per point, limit.jsonl, summary.md, load.png.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. benches/lib.sh
reps=${REPS:-3}
seconds=${SECONDS_PER_POINT:-4}
concs=${CONCURRENCY:-"1 16 32"}
out=${OUT_DIR:-bench-out/load-$(date +%Y%m%d-%H%M%S)}
peers=${PEERS_SRC:-$root/../shared/peers}
cache=${BENCH_CACHE:-$HOME/.cache/kiln-bench}
mls_http=${MLS_HTTP_PORT:-18080}
mls_grpc=${MLS_GRPC_PORT:-18081}
mls_metrics=${MLS_METRICS_PORT:-18082}
pyt_http=${PYT_HTTP_PORT:-18090}
pyt_grpc=${PYT_GRPC_PORT:-18091}

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
ptvenv=$cache/ptvenv
if ! "$ptvenv/bin/python" -c 'import pytriton, onnxruntime' 2>/dev/null; then
  python3 -m venv "$ptvenv"
  "$ptvenv/bin/pip" install -q nvidia-pytriton==0.7.0 onnxruntime==1.31.1
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

kiln_start "$repo" "$out"
pids+=("$kiln_pid")
(cd "$mls" && PYTHONPATH="$peers/mls" MLS_ORT_THREADS=0 MLSERVER_PARALLEL_WORKERS=1 \
  exec "$mlsvenv/bin/python" "$peers/mls/serve_compat.py" "$mls" >"$out/mlserver.log" 2>&1) &
pids+=($!)
# Triton's Python-backend stub links libpython: the running Python's LIBDIR first.
(export PYTRITON_HOME=$out/pytriton-home PYT_HTTP_PORT=$pyt_http PYT_GRPC_PORT=$pyt_grpc \
   PYT_METRICS_PORT=$((pyt_grpc + 1)) \
   LD_LIBRARY_PATH=$("$ptvenv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
 exec "$ptvenv/bin/python" benches/peers/pytriton_serve.py "mlp_tiny=$out/models/mlp_tiny/1/model.onnx" \
   "mlp_heavy=$out/models/mlp_heavy/1/model.onnx" >"$out/triton.log" 2>&1) &
pids+=($!)
strip() { sed 's/\x1b\[[0-9;]*m//g' "$1"; }
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$mls_http/v2/health/ready" >/dev/null && break; sleep 0.5; done
curl -sf "http://127.0.0.1:$mls_http/v2/health/ready" >/dev/null || { echo "MLServer did not start"; tail -30 "$out/mlserver.log"; exit 1; }
for _ in $(seq 240); do curl -sf "http://127.0.0.1:$pyt_http/v2/models/mlp_heavy/ready" >/dev/null && break; sleep 0.5; done
curl -sf "http://127.0.0.1:$pyt_http/v2/models/mlp_heavy/ready" >/dev/null || { echo "Triton did not start"; tail -30 "$out/triton.log"; exit 1; }

{
  echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -srm); client and servers on the same machine"
  echo "kiln: $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty'), $(strip "$out/kiln.log" | grep -o 'model=mlp_heavy version=1 backend="[a-z]*"' | head -1)"
  echo "mlserver: $("$mlsvenv/bin/pip" show mlserver | awk '/^Version/{print $2}'), triton: nvidia-pytriton $("$ptvenv/bin/pip" show nvidia-pytriton | awk '/^Version/{print $2}'), onnxruntime $("$mlsvenv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)')"
  echo "client: kiln-bench, closed loop, gRPC (REST: binary tensors), 1 connection, ${seconds} s per point after 1 s of warm-up, reps $reps"
  echo "command: REPS=$reps SECONDS_PER_POINT=$seconds CONCURRENCY=\"$concs\" benches/load.sh"
} >"$out/machine.txt"
cat "$out/machine.txt"

# Each server's CPU is its whole process tree's: MLServer's inference workers and
# Triton's tritonserver and Python-backend stubs are children of the pids started here.
mls_pid=${pids[1]}; pyt_pid=${pids[2]}
point() { # target model port http_port pid concurrency rep [kiln-bench options]
  local f="$out/$1__$2__c$6__r$7" before after
  before=$(model_stats "$venv/bin/python" "$4" "$2")
  timeout 120 target/release/kiln-bench -u "127.0.0.1:$3" -m "$2" --concurrency "$6" --warmup-secs 1 \
    --duration-secs "$seconds" --server-pid "$5" --progress false --report "$f.json" "${@:8}" >"$f.log" 2>&1 \
    || echo "kiln-bench failed: $1 $2 c$6 rep $7 (see $f.log)"
  after=$(model_stats "$venv/bin/python" "$4" "$2")
  echo "$before $after" >"$f.stats"
  printf '%s %s c=%s rep %s: %s\n' "$1" "$2" "$6" "$7" "$(grep -m1 -i 'throughput' "$f.log" | xargs)"
}

for rep in $(seq "$reps"); do
  "$venv/bin/python" benches/ort_limit.py --model "mlp_tiny=$out/models/mlp_tiny/1/model.onnx" \
    --model "mlp_heavy=$out/models/mlp_heavy/1/model.onnx" --batches 1 2 4 8 16 32 --seconds 2 \
    | sed "s/^{/{\"rep\": $rep, /" >>"$out/limit.jsonl"
  for c in $concs; do
    for model in mlp_tiny mlp_heavy; do
      point kiln-grpc "$model" "$kiln_grpc" "$kiln_http" "$kiln_pid" "$c" "$rep"
      point kiln-http "$model" "$kiln_http" "$kiln_http" "$kiln_pid" "$c" "$rep" -i http --binary
      point mlserver-grpc "$model" "$mls_grpc" 0 "$mls_pid" "$c" "$rep"
      point triton-grpc "$model" "$pyt_grpc" "$pyt_http" "$pyt_pid" "$c" "$rep"
    done
    point kiln-grpc-nobatch mlp_heavy_nobatch "$kiln_grpc" "$kiln_http" "$kiln_pid" "$c" "$rep"
  done
done

"$plotvenv/bin/python" benches/load_report.py "$out" | tee "$out/summary.md"
echo "results in $out"
