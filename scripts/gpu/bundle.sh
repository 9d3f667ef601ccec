#!/usr/bin/env bash
# Packs what a GPU run on the lent device machine needs, which has no Rust toolchain
# and no network: the stripped release binary and ONNX Runtime's GPU libraries from
# the onnxruntime-gpu wheel (the CUDA provider alone is 284 MB). The device tool
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
cargo build --release --locked ${KILN_CARGO_FEATURES:+--features "$KILN_CARGO_FEATURES"}
cp target/release/kiln "$stage/kiln" && strip "$stage/kiln"
rm -f .gpu-carry/part*
tar -C "$stage" -cz . | split -b 60M -d - .gpu-carry/part
ls -la .gpu-carry
