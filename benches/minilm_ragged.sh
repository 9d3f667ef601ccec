#!/usr/bin/env bash
# MiniLM on mixed traffic: short (12-token) and long (128-token) texts arriving at once, so
# that batches are ragged. Two kiln-bench clients run together against one model (short
# texts at concurrency SHORT_C, long ones at LONG_C, one text per request, gRPC), on the
# same Kiln server, interleaved rep by rep between:
#   grouped   the default: a batch is sorted by length and cut into encoder calls of at
#             most 2048 padded tokens (max_tokens_per_call), each padded to its own longest
#   whole     max_tokens_per_call = 0: the whole batch in one call, padded to its longest
# Reported per model: texts/s of each client and together, p50/p99 of each, and the
# server's CPU per text (over both clients' texts).
#
#   REPS=5 SECONDS_PER_POINT=6 benches/minilm_ragged.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. benches/lib.sh
reps=${REPS:-5}
seconds=${SECONDS_PER_POINT:-6}
short_c=${SHORT_C:-16}
long_c=${LONG_C:-4}
out=${OUT_DIR:-bench-out/minilm-ragged-$(date +%Y%m%d-%H%M%S)}
venv=$(scripts/setup-python.sh | tail -n 1)
cargo build --release --locked --workspace
mkdir -p "$out"
out=$(cd "$out" && pwd)
repo=$out/repo
for m in grouped whole; do
  mkdir -p "$repo/$m"
  ln -sfn "$root/models/minilm/1" "$repo/$m/1"
  cp models/minilm/config.toml "$repo/$m/config.toml"
done
echo "max_tokens_per_call = 0" >>"$repo/whole/config.toml"
minilm_requests "$out"
kiln_start "$repo" "$out"
pid=$kiln_pid grpc=$kiln_grpc
trap 'kill $pid 2>/dev/null || true' EXIT
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); kiln $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty'); short c=$short_c + long c=$long_c, ${seconds} s per point, reps $reps" | tee "$out/machine.txt"
for rep in $(seq "$reps"); do
  for m in grouped whole; do
    clients=()
    for len in short long; do
      c=$short_c; [ "$len" = long ] && c=$long_c
      target/release/kiln-bench -u "127.0.0.1:$grpc" -m "$m" --concurrency "$c" --warmup-secs 1 \
        --duration-secs "$seconds" --server-pid "$pid" --progress false --input-data "$out/$len.json" \
        --report "$out/$m-$len-r$rep.json" >"$out/$m-$len-r$rep.log" 2>&1 &
      clients+=($!)
    done
    wait "${clients[@]}"
    echo "$m rep $rep done"
  done
done
"$venv/bin/python" - "$out" <<'PY' | tee "$out/summary.md"
import json, statistics, sys, glob, os
out = sys.argv[1]
print(open(os.path.join(out, "machine.txt")).read())
print("| model | short texts/s | long texts/s | total texts/s (min-max) | short p50 / p99 ms | long p50 / p99 ms | server CPU ms/text |")
print("|---|---|---|---|---|---|---|")
for m in ["grouped", "whole"]:
    rows = []
    for f in sorted(glob.glob(f"{out}/{m}-short-r*.json")):
        s = json.load(open(f)); l = json.load(open(f.replace("-short-", "-long-")))
        n = s["requests"] + l["requests"]
        rows.append((s["throughput_per_sec"], l["throughput_per_sec"], s["throughput_per_sec"] + l["throughput_per_sec"],
                     s["latency"]["p50_us"], s["latency"]["p99_us"], l["latency"]["p50_us"], l["latency"]["p99_us"],
                     max(s["server_cpu"]["seconds"], l["server_cpu"]["seconds"]) * 1e3 / n))
    med = lambda i: statistics.median(r[i] for r in rows)
    tot = [r[2] for r in rows]
    print(f"| {m} | {med(0):.1f} | {med(1):.1f} | {med(2):.1f} ({min(tot):.1f}-{max(tot):.1f}) | "
          f"{med(3)/1e3:.0f} / {med(4)/1e3:.0f} | {med(5)/1e3:.0f} / {med(6)/1e3:.0f} | {med(7):.2f} |")
PY
