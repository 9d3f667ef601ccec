#!/usr/bin/env bash
# Packs what a GPU run on the lent device machine needs, which has no Rust toolchain
# and no network (KILN_CARGO_FEATURES=cuda, under scripts/gpu/cuda-env.sh, for
# Candle on CUDA): the stripped release binary, the GPU integration test and the
# in-process benchmark (built here), perf_analyzer, the benchmark models, and ONNX
# Runtime's GPU libraries from the onnxruntime-gpu wheel (the CUDA provider alone is
# 284 MB). The device tool
# carries at most 64 MiB a call, working tree included, so the bundle is split into
# parts under .gpu-carry/ (git-ignored), to carry one a call, back to back while the
# machine is warm:
#   run(carry=[".gpu-carry/part00"], command="mkdir -p /tmp/kiln-gpu && mv .gpu-carry/part00 /tmp/kiln-gpu/")
#   ... part01, part02 ...
#   run(carry=[".gpu-carry/part04"], command="mv .gpu-carry/part04 /tmp/kiln-gpu/ && bash scripts/gpu/check.sh")
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${KILN_GPU_CACHE:-$HOME/.cache/kiln-gpu}
mkdir -p "$cache" .gpu-carry
wheel=$(ls "$cache"/onnxruntime_gpu-1.31.1-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$cache" onnxruntime-gpu==1.31.1
  wheel=$(ls "$cache"/onnxruntime_gpu-1.31.1-*.whl | head -n 1)
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
python3 - "$wheel" "$stage" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for n in z.namelist():
    base = n.rsplit("/", 1)[-1]
    if n.startswith("onnxruntime/capi/libonnxruntime") and ".so" in base:
        open(f"{sys.argv[2]}/{base}", "wb").write(z.read(n))
PY
cargo build --release --locked -p kiln ${KILN_CARGO_FEATURES:+--features "$KILN_CARGO_FEATURES"}
cp target/release/kiln "$stage/kiln" && strip "$stage/kiln"
# The GPU integration test and the in-process benchmark, built here to run there.
exe() { python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$1" | tail -n 1; }
cp "$(cargo test --release --locked -p kiln --test gpu --no-run --message-format=json 2>/dev/null | exe gpu)" "$stage/gpu-test"
cp "$(cargo bench --locked -p kiln-backend-ort --bench ort_inprocess --no-run --message-format=json 2>/dev/null | exe ort_inprocess)" "$stage/ort_inprocess"
cp "$(cargo bench --locked -p kiln-backend-candle ${KILN_CARGO_FEATURES:+--features "$KILN_CARGO_FEATURES"} --bench minilm_inprocess --no-run --message-format=json 2>/dev/null | exe minilm_inprocess)" "$stage/minilm_inprocess"
strip "$stage/gpu-test" "$stage/ort_inprocess" "$stage/minilm_inprocess"
# perf_analyzer (tritonclient 2.51.0 wheel) and the two libraries it needs that the
# GPU machine lacks; the heavy benchmark model.
venv=$(scripts/setup-python.sh | tail -n 1)
mkdir -p "$stage/pa"
cp "$venv/bin/perf_analyzer" "$stage/pa/"
cp /lib/x86_64-linux-gnu/libb64.so.0d "$stage/pa/"
cp "$("$venv/bin/python" -c 'import nvidia.cuda_runtime,os;print(os.path.join(list(nvidia.cuda_runtime.__path__)[0],"lib"))')/libcudart.so.12" "$stage/pa/"
"$venv/bin/python" scripts/make_models.py --bench-models "$stage/models" >/dev/null
cp -r models/minilm "$stage/models/"
rm -f .gpu-carry/part*
tar -C "$stage" -cz . | split -b 60M -d - .gpu-carry/part
ls -la .gpu-carry
