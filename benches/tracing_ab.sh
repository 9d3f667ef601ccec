#!/bin/bash
# What tracing costs, side by side in one run on one binary: perf_analyzer over gRPC on mlp_tiny
# at concurrency 1 and 8, the configurations interleaved within each of REPS reps:
#   off          no --otlp-endpoint (the default; the baseline)
#   r0           traces to a live collector, --trace-sample-ratio 0 (every request is drawn, none traced)
#   r0.01        ratio 0.01 (the default ratio)
#   r1           ratio 1: every request traced (5 spans each) and exported
#   down-rX      ratio X to a collector that is not there (every export fails; spans dropped, counted)
#   stalled-rX   ratio X to a collector that holds each export for 60 s (the queue fills; dropped,
#                counted); by default X is 1 (every request's spans pile up) and 0.01 (against off)
# The collector is tests/python/otlp_receiver.py (OTLP/gRPC, the official protobufs).
# Each line: throughput, p50, and the server's CPU per inference (utime + stime from /proc over
# the window, divided by the inferences its statistics extension counted; DESIGN.md's yardstick).
#   benches/tracing_ab.sh [KILN_BIN]        REPS=3 by default; CONFS="off r1" picks some
cd "$(dirname "$0")/.."
BIN=${1:-target/release/kiln}
LIB=$(.venv/bin/python -c "import nvidia.cuda_runtime,os;print(os.path.join(list(nvidia.cuda_runtime.__path__)[0],'lib'))")
TICK=$(getconf CLK_TCK)
work=$(mktemp -d)
.venv/bin/python tests/python/otlp_receiver.py 14317 & live=$!
.venv/bin/python tests/python/otlp_receiver.py 14318 60 & stalled=$!
trap 'kill $live $stalled 2>/dev/null; rm -rf "$work"' EXIT
echo '{"data": [{"INPUT0": [0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5,1.6]}]}' > "$work/in.json"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for rep in $(seq 1 "${REPS:-3}"); do
 for conf in ${CONFS:-off r0 r0.01 r1 down-r1 stalled-r1 down-r0.01 stalled-r0.01}; do
  case $conf in
   off) flags=() ;;
   r*) flags=(--otlp-endpoint http://127.0.0.1:14317 --trace-sample-ratio "${conf#r}") ;;
   down-r*) flags=(--otlp-endpoint http://127.0.0.1:14319 --trace-sample-ratio "${conf#down-r}") ;;
   stalled-r*) flags=(--otlp-endpoint http://127.0.0.1:14318 --trace-sample-ratio "${conf#stalled-r}" --trace-export-timeout-secs 30) ;;
  esac
  $BIN --model-repository models --http-address 127.0.0.1 --grpc-address 127.0.0.1 \
    --http-port 18100 --grpc-port 18101 "${flags[@]}" 2>/dev/null &
  pid=$!
  sleep 2
  inferences() {
    curl -s http://127.0.0.1:18100/v2/models/mlp_tiny/stats \
      | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["model_stats"][0]["inference_count"])'
  }
  for c in 1 8; do
   t0=$(cpu_ticks $pid); n0=$(inferences)
   out=$(LD_LIBRARY_PATH=$LIB .venv/bin/perf_analyzer -m mlp_tiny -u 127.0.0.1:18101 -i grpc \
     --concurrency-range $c --measurement-interval 2000 --input-data "$work/in.json" \
     --stability-percentage 200 --max-trials 5 --percentile 50 2>&1)
   t1=$(cpu_ticks $pid); n1=$(inferences)
   thr=$(echo "$out" | grep -oP 'Concurrency: \d+, throughput: \K[\d.]+' | tail -1)
   p50=$(echo "$out" | grep -oP 'p50 latency: \K\d+' | tail -1)
   cpu=$(awk -v a="$t0" -v b="$t1" -v n0="$n0" -v n1="$n1" -v hz="$TICK" 'BEGIN { printf "%.1f", (b - a) / hz * 1e6 / (n1 - n0) }')
   [ -n "$thr" ] || { echo "$conf c=$c failed:"; echo "$out" | tail -5; }
   dropped=$(curl -s http://127.0.0.1:18100/metrics | awk '/^kiln_trace_spans_dropped_total/ {s += $2} END {print s + 0}')
   echo "rep=$rep conf=$conf c=$c infer/s=$thr p50_us=$p50 server_cpu_us_per_infer=$cpu spans_dropped=$dropped"
  done
  kill $pid; wait $pid 2>/dev/null
 done
done
