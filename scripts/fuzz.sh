#!/usr/bin/env bash
# Runs every cargo fuzz target in fuzz/ for FUZZ_SECS seconds each (default
# 1800: the 30-minute runs), starting from the seed corpus in fuzz/corpus/<target>
# and keeping what it finds in a scratch corpus, so that the repository's seeds
# stay small. A crash leaves its input in fuzz/artifacts/<target>/ and fails.
#   FUZZ_SECS=60 scripts/fuzz.sh               every target, a minute each
#   FUZZ_SECS=60 scripts/fuzz.sh json_request  one target
# Needs the nightly toolchain; installs cargo-fuzz when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECS:-1800}
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(json_request binary_request bytes_elements grpc_request model_config)
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  echo "=== $t: ${secs}s"
  # -rss_limit_mb: a decoder that amplifies memory fails here too.
  rc=0
  cargo +nightly fuzz run --fuzz-dir fuzz "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    >"$scratch/$t.log" 2>&1 || rc=$?
  grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY)|Done [0-9]+ runs" "$scratch/$t.log" || true
  if [ "$rc" != 0 ]; then
    tail -n 40 "$scratch/$t.log" >&2
    echo "$t: failed (exit $rc)" >&2
    exit 1
  fi
  if [ -n "$(ls -A "fuzz/artifacts/$t" 2>/dev/null)" ]; then
    echo "$t: crash inputs in fuzz/artifacts/$t" >&2
    exit 1
  fi
done
