#!/usr/bin/env bash
# Runs a command with a CUDA 13.0 build environment for `--features cuda` (Candle's
# CUDA kernels and cudarc), on a machine with no CUDA toolkit and no GPU:
#   scripts/gpu/cuda-env.sh cargo build --release --locked --features cuda
#   scripts/gpu/cuda-env.sh env KILN_CARGO_FEATURES=cuda scripts/gpu/bundle.sh
#
# - nvcc, its headers and the CUDA runtime come from NVIDIA's PyPI wheels, pinned to
#   CUDA 13.0 so that the PTX they emit loads on a CUDA 13.0 driver (580), into a
#   virtualenv under ~/.cache/kiln-gpu;
# - cudarc links (candle's choice: `dynamic-linking`) against libcuda, libcublas,
#   libcublasLt, libcurand and libnvrtc: the last four come from the same wheels;
#   libcuda.so.1 is the driver's, so, as the toolkit's own lib64/stubs/libcuda.so
#   does, a stand-in is generated from the driver functions cudarc declares. Every
#   function of the stand-in returns CUDA_ERROR_NO_DEVICE; it exists only to link
#   against and is never shipped: at run time the driver's libcuda.so.1 is loaded.
# CUDA_COMPUTE_CAP (default 90, the H100) picks the GPU architecture the kernels are
# built for.
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${KILN_GPU_CACHE:-$HOME/.cache/kiln-gpu}
venv=$cache/cuda-venv
if ! "$venv/bin/python" -c 'import nvidia' 2>/dev/null || [ ! -f "$venv/.kiln-cuda-13.0" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-crt==13.0.88" "nvidia-nvvm==13.0.88" \
    "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85" "nvidia-cuda-nvrtc==13.0.88" \
    "nvidia-cublas==13.1.0.3" "nvidia-curand==10.4.0.35" >&2
  touch "$venv/.kiln-cuda-13.0"
fi
cu=$(ls -d "$venv"/lib/python3*/site-packages/nvidia/cu13)
link=$cache/cuda-link
if [ ! -f "$link/libcuda.so" ]; then
  mkdir -p "$link"
  cudarc=$(cargo metadata --format-version 1 --locked --all-features 2>/dev/null | python3 -c '
import json, sys, os
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc":
        print(os.path.dirname(p["manifest_path"]))')
  grep -ohE '^\s+fn cu[A-Za-z0-9_]+\(' "$cudarc/src/driver/sys/mod.rs" | sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u \
    | awk 'BEGIN { print "/* Link-time stand-in for libcuda.so.1 (see scripts/gpu/cuda-env.sh). */" }
           { print "int " $1 "(void) { return 100; /* CUDA_ERROR_NO_DEVICE */ }" }' >"$link/libcuda.c"
  gcc -shared -fPIC -o "$link/libcuda.so" -Wl,-soname,libcuda.so.1 "$link/libcuda.c"
  for l in cudart cublas cublasLt nvrtc; do ln -sf "$cu/lib/lib$l.so.13" "$link/lib$l.so"; done
  ln -sf "$cu/lib/libcurand.so.10" "$link/libcurand.so"
fi
export CUDA_HOME=$cu PATH=$cu/bin:$PATH LIBRARY_PATH=$link${LIBRARY_PATH:+:$LIBRARY_PATH}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
exec "$@"
