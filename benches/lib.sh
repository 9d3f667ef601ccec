# Shared by the load benchmarks (sourced, not run): starting Kiln on free ports,
# the statistics extension's counts, and MiniLM's request files.

# kiln_start REPO OUT: starts target/release/kiln on REPO with ports the OS picks,
# logging to OUT/kiln.log; sets kiln_pid, kiln_http and kiln_grpc once it has loaded.
kiln_start() {
  target/release/kiln --model-repository "$1" --http-address 127.0.0.1 --grpc-address 127.0.0.1 \
    --http-port 0 --grpc-port 0 >"$2/kiln.log" 2>&1 &
  kiln_pid=$!
  for _ in $(seq 300); do grep -q "model repository loaded" "$2/kiln.log" && break; sleep 0.2; done
  local log
  log=$(sed 's/\x1b\[[0-9;]*m//g' "$2/kiln.log")
  kiln_http=$(sed -n 's/.*HTTP listening on [0-9.]*:\([0-9]*\).*/\1/p' <<<"$log")
  kiln_grpc=$(sed -n 's/.*gRPC listening on [0-9.]*:\([0-9]*\).*/\1/p' <<<"$log")
}

# model_stats PYTHON PORT MODEL: "inferences executions" of MODEL from the statistics
# extension at HTTP PORT, or "0 0" (a server without it).
model_stats() {
  curl -sf "http://127.0.0.1:$2/v2/models/$3/stats" | "$1" -c '
import json, sys
s = json.load(sys.stdin)["model_stats"][0]; print(s["inference_count"], s["execution_count"])' 2>/dev/null || echo "0 0"
}

# minilm_requests OUT: OUT/short.json (12 tokens) and OUT/long.json (128 tokens), one
# text per V2 request, as kiln-bench's --input-data.
minilm_requests() {
  local short="A man is eating a piece of bread today."
  local seed="The quick brown fox jumps over the lazy dog while the server answers every request in order. "
  local long="${seed}${seed}${seed}${seed}${seed}${seed}one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen"
  local len
  for len in short long; do
    printf '{"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["%s"]}]}' "${!len}" >"$1/$len.json"
  done
}
