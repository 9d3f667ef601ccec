#!/bin/bash
# Interleaved A/B of two kiln binaries (REPS reps, old then new each rep), perf_analyzer gRPC on
# mlp_tiny at concurrency 1 and 8: throughput, p50, and the server's CPU per inference (utime +
# stime of the server process over the window, from /proc, divided by the inferences its
# statistics extension counted in it; DESIGN.md's yardstick).
#   benches/ab.sh OLD_KILN_BIN [NEW_KILN_BIN]      REPS=3 by default
#   PROTOCOL=http benches/ab.sh ...                 the REST (JSON) path instead of gRPC
cd "$(dirname "$0")/.."
OLD=${1:?usage: benches/ab.sh OLD_KILN_BIN [NEW_KILN_BIN]}; NEW=${2:-target/release/kiln}
LIB=$(.venv/bin/python -c "import nvidia.cuda_runtime,os;print(os.path.join(list(nvidia.cuda_runtime.__path__)[0],'lib'))")
TICK=$(getconf CLK_TCK)
echo '{"data": [{"INPUT0": [0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5,1.6]}]}' > /tmp/in.json
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
inferences() {
  curl -s "127.0.0.1:18100/v2/models/mlp_tiny/stats" \
    | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["model_stats"][0]["inference_count"])'
}
for rep in $(seq 1 "${REPS:-3}"); do
 for which in old new; do
  bin=$OLD; [ $which = new ] && bin=$NEW
  $bin --model-repository models --http-port 18100 --grpc-port 18101 2>/dev/null &
  pid=$!
  sleep 2
  for c in 1 8; do
   t0=$(cpu_ticks $pid); n0=$(inferences)
   if [ "${PROTOCOL:-grpc}" = http ]; then url=127.0.0.1:18100; else url=127.0.0.1:18101; fi
   out=$(LD_LIBRARY_PATH=$LIB .venv/bin/perf_analyzer -m mlp_tiny -u $url -i "${PROTOCOL:-grpc}" --concurrency-range $c --measurement-interval 2000 --input-data /tmp/in.json --stability-percentage 200 --max-trials 5 --percentile 50 2>&1)
   t1=$(cpu_ticks $pid); n1=$(inferences)
   thr=$(echo "$out" | grep -oP 'Concurrency: \d+, throughput: \K[\d.]+' | tail -1)
   p50=$(echo "$out" | grep -oP 'p50 latency: \K\d+' | tail -1)
   cpu=$(awk -v a="$t0" -v b="$t1" -v n0="$n0" -v n1="$n1" -v hz="$TICK" 'BEGIN { printf "%.1f", (b - a) / hz * 1e6 / (n1 - n0) }')
   echo "rep=$rep bin=$which proto=${PROTOCOL:-grpc} c=$c infer/s=$thr p50_us=$p50 server_cpu_us_per_infer=$cpu"
  done
  kill $pid; wait $pid 2>/dev/null
 done
done
