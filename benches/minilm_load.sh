#!/usr/bin/env bash
# MiniLM (Candle) under load: sentences/s and p50/p99 at concurrency 1, 8, 32 for
# short (12-token) and long (128-token) texts, one text per request over gRPC
# (perf_analyzer), next to the in-process limit (benches/minilm_inprocess.rs: the
# same backend called directly with batches of 1, 8 and 32).
#   OUT_DIR=bench-out/minilm WINDOW_MS=4000 benches/minilm_load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT_DIR:-bench-out/minilm}; mkdir -p "$out"
window=${WINDOW_MS:-4000}
venv=$(scripts/setup-python.sh | tail -n 1)
cargo build --release --locked -q
lib=$("$venv/bin/python" -c "import nvidia.cuda_runtime,os;print(os.path.join(list(nvidia.cuda_runtime.__path__)[0],'lib'))")
short="A man is eating a piece of bread today."
seed="The quick brown fox jumps over the lazy dog while the server answers every request in order. "
long="${seed}${seed}${seed}${seed}${seed}${seed}one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen"
printf '{"data": [{"text": ["%s"]}]}' "$short" > "$out/short.json"
printf '{"data": [{"text": ["%s"]}]}' "$long" > "$out/long.json"

echo "== in-process limit" | tee "$out/inprocess.csv.log"
cargo bench -q -p kiln-backend-candle --bench minilm_inprocess -- 4 | tee "$out/inprocess.csv"

target/release/kiln --model-repository models --http-port 18300 --grpc-port 18301 --allow-metrics false 2>"$out/kiln.log" &
pid=$!
trap 'kill $pid 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sf localhost:18300/v2/health/ready >/dev/null && break; sleep 0.2; done
echo "length,concurrency,sentences_per_s,p50_ms,p99_ms" > "$out/served.csv"
for len in short long; do
  for c in 1 8 32; do
    res=$(LD_LIBRARY_PATH=$lib "$venv/bin/perf_analyzer" -m minilm -u 127.0.0.1:18301 -i grpc \
      --input-data "$out/$len.json" --concurrency-range "$c" --measurement-interval "$window" \
      --stability-percentage 200 --max-trials 3 --percentile 99 -f "$out/pa-$len-$c.csv" 2>&1) \
      || { echo "$res"; exit 1; }
    echo "$res" > "$out/pa-$len-$c.log"
    "$venv/bin/python" - "$out/pa-$len-$c.csv" "$len" "$c" >> "$out/served.csv" <<'PY'
import csv, sys
row = next(csv.DictReader(open(sys.argv[1])))
print(f"{sys.argv[2]},{sys.argv[3]},{float(row['Inferences/Second']):.1f},{int(row['p50 latency'])/1000:.2f},{int(row['p99 latency'])/1000:.2f}")
PY
    tail -n 1 "$out/served.csv"
  done
done
