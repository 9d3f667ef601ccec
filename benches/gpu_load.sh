#!/usr/bin/env bash
# GPU load benchmark, run on the GPU machine after scripts/gpu/bundle.sh's parts were
# unpacked into /tmp/kiln-gpu (scripts/gpu/check.sh does that first). For each model
# (mlp_heavy, cnn_small) on $DEVICE (default cuda:0), per repetition, interleaved:
#   inprocess  the in-process limit: Kiln's ONNX Runtime backend on the same GPU,
#              called directly (benches/ort_inprocess.rs), by batch size and by threads;
#   kiln       Kiln over gRPC, perf_analyzer at each concurrency, one row per request,
#              dynamic batching up to 64 rows, max_queue_delay 0, one instance.
# GPU utilisation is sampled from Kiln's own kiln_gpu_utilization_ratio (NVML, 1 s).
#   REPS=2 WINDOW_MS=1500 CONCURRENCY="1 2 4 8 16 32 64" OUT=... bash benches/gpu_load.sh
# Writes inprocess.csv, served.csv, util.csv, machine.txt and kiln.log into $OUT;
# benches/gpu_report.py turns them into the table in benches/README.md.
set -uo pipefail
D=${KILN_GPU_DIR:-/tmp/kiln-gpu}
out=${OUT:-/tmp/kiln-gpu-bench}; mkdir -p "$out"
reps=${REPS:-2}
window=${WINDOW_MS:-1500}
conc=${CONCURRENCY:-"1 2 4 8 16 32 64"}
models=${MODELS:-"mlp_heavy cnn_small"}
# MINILM=1 adds MiniLM on Candle (needs the bundle made with KILN_CARGO_FEATURES=cuda
# for a GPU): short (12-token) and long (128-token) texts, one per request.
minilm=${MINILM:-0}
# DEVICE=cpu runs the same pipeline without a GPU (to try the tooling).
device=${DEVICE:-cuda:0}
export ORT_DYLIB_PATH=$D/libonnxruntime.so.1.31.1 NO_COLOR=1
repo=$D/bench-repo
rm -rf "$repo" && mkdir -p "$repo"
for m in $models; do
  src=$D/models/$m; [ -d "$src" ] || src=$PWD/models/$m
  mkdir -p "$repo/$m/1" && cp "$src/1/model.onnx" "$repo/$m/1/"
  printf 'device = "%s"\nmax_batch_size = 64\n' "$device" >"$repo/$m/config.toml"
done
if [ "$minilm" = 1 ]; then
  src=$D/models/minilm; [ -d "$src" ] || src=$PWD/models/minilm
  mkdir -p "$repo/minilm" && cp -r "$src/1" "$repo/minilm/"
  # Candle, as the in-process limit below (minilm_inprocess) runs it.
  { grep -v '^device\|^backend' "$src/config.toml"; echo "backend = \"candle\""; echo "device = \"$device\""; } >"$repo/minilm/config.toml"
  seed="The quick brown fox jumps over the lazy dog while the server answers every request in order. "
  long="${seed}${seed}${seed}${seed}${seed}${seed}one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen"
  printf '{"data": [{"text": ["%s"]}]}' "A man is eating a piece of bread today." >"$out/short.json"
  printf '{"data": [{"text": ["%s"]}]}' "$long" >"$out/long.json"
fi
{
  echo "date: $(date -u +%FT%TZ)"
  echo "device: $device"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
  echo "cpu: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "kiln: $("$D/kiln" --version 2>&1 | head -1)"
  echo "perf_analyzer: tritonclient 2.51.0 wheel, --measurement-interval $window, --stability-percentage 200, --max-trials 4, reps $reps"
} >"$out/machine.txt"
cat "$out/machine.txt"

"$D/kiln" --model-repository "$repo" --http-address 127.0.0.1 --grpc-address 127.0.0.1 \
  --http-port 18100 --grpc-port 18101 --gpu-metrics-secs 1 >"$out/kiln.log" 2>&1 &
pid=$!
for _ in $(seq 1 240); do curl -fs localhost:18100/v2/health/ready >/dev/null 2>&1 && break; sleep 0.25; done
curl -fs localhost:18100/v2/health/ready >/dev/null || { cat "$out/kiln.log"; exit 1; }
grep -E "CUDA libraries| loaded " "$out/kiln.log" | cut -c1-400

# GPU utilisation, as Kiln exports it, with the time.
(while kill -0 "$pid" 2>/dev/null; do
  u=$(curl -fs localhost:18100/metrics | awk '/^kiln_gpu_utilization_ratio\{gpu="0"/ {print $2}')
  echo "$(date +%s.%N),${u:-}"
  sleep 0.5
done) >"$out/util.csv" &
sampler=$!

echo "rep,model,mode,n,samples_per_s,p50_ms,p99_ms,calls" >"$out/inprocess.csv"
echo "rep,model,concurrency,infer_per_s,p50_us,p90_us,p99_us,avg_batch,start,end" >"$out/served.csv"
points=$models
[ "$minilm" = 1 ] && points="$points minilm-short minilm-long"
for rep in $(seq "$reps"); do
  if [ "$minilm" = 1 ]; then
    # length,batch,sentences_per_s,p50_ms,p99_ms,calls -> the in-process rows.
    "$D/minilm_inprocess" 1 --model-dir "$repo/minilm" --device "$device" \
      --batches "$(echo "$conc" | tr ' ' ',')" 2>>"$out/inprocess.log" | tail -n +2 \
      | awk -F, -v rep="$rep" '{ print rep ",minilm-" $1 ",batch," $2 "," $3 "," $4 "," $5 "," $6 }' >>"$out/inprocess.csv"
  fi
  for p in $points; do
    m=${p%%-*}; input=()
    case $p in minilm-*) input=(--input-data "$out/${p#minilm-}.json") ;; esac
    [ "$m" = minilm ] || "$D/ort_inprocess" "$repo/$m" --device "$device" --seconds 1 \
      --batches 1,2,4,8,16,32,64 --threads "$(echo "$conc" | tr ' ' ',')" 2>>"$out/inprocess.log" \
      | sed "s/^/$rep,/" >>"$out/inprocess.csv"
    for c in $conc; do
      f=$out/pa-$rep-$p-$c
      curl -fs "localhost:18100/v2/models/$m/stats" >"$f.before.json"
      t0=$(date +%s.%N)
      LD_LIBRARY_PATH=$D/pa timeout 120 "$D/pa/perf_analyzer" -m "$m" -u 127.0.0.1:18101 -i grpc \
        --concurrency-range "$c" --measurement-interval "$window" --stability-percentage 200 \
        --max-trials 4 "${input[@]}" -f "$f.csv" >"$f.log" 2>&1 || { echo "perf_analyzer failed: $p c$c"; tail -5 "$f.log"; continue; }
      t1=$(date +%s.%N)
      curl -fs "localhost:18100/v2/models/$m/stats" >"$f.after.json"
      python3 - "$f" "$rep,$p,$c" "$t0" "$t1" >>"$out/served.csv" <<'PY'
import csv, json, sys
f = sys.argv[1]
r = next(csv.DictReader(open(f + ".csv")))
count = lambda p: [(s["inference_count"], s["execution_count"]) for s in json.load(open(p))["model_stats"]][0]
(i0, e0), (i1, e1) = count(f + ".before.json"), count(f + ".after.json")
batch = (i1 - i0) / max(1, e1 - e0)
print(f"{sys.argv[2]},{float(r['Inferences/Second']):.1f},{r['p50 latency']},{r['p90 latency']},{r['p99 latency']},{batch:.2f},{sys.argv[3]},{sys.argv[4]}")
PY
      tail -n 1 "$out/served.csv"
    done
  done
done
curl -fs localhost:18100/v2/models/stats >"$out/stats.json"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv >>"$out/machine.txt" 2>&1
kill -TERM "$pid"; wait "$pid"; echo "kiln exit status $?"
kill "$sampler" 2>/dev/null
