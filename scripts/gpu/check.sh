#!/usr/bin/env bash
# On the GPU machine (after scripts/gpu/bundle.sh's parts reached /tmp/kiln-gpu):
# serves the example ONNX models with device = "cuda:0" on ONNX Runtime's CUDA
# provider, compares each answer with onnxruntime on the CPU (the machine's own
# Python), shows the process's GPU memory and Kiln's NVML metrics beside
# nvidia-smi's, and stops Kiln with SIGTERM.
#
# Then runs the GPU integration test (crates/kiln/tests/gpu.rs, built here) against
# the same binary, and, with BENCH=1, benches/gpu_load.sh into $OUT/gpu-bench.
set -uo pipefail
root=$PWD
D=/tmp/kiln-gpu
(cd "$D" && cat part* | tar -xz) || exit 1
# MiniLM's weights are not in git; the bundle has them.
[ -d "$root/models/minilm/1" ] || cp -r "$D/models/minilm" "$root/models/"
echo "== GPU integration test"
KILN_TEST_BIN=$D/kiln KILN_TEST_ROOT=$root KILN_GPU_TESTS=1 ORT_DYLIB_PATH=$D/libonnxruntime.so.1.31.1 \
  "$D/gpu-test" --nocapture 2>&1 | grep -vE "^\s*$" | tail -n 40
echo "== against onnxruntime on the CPU (the machine's own Python)"
repo=/tmp/kiln-gpu-repo
rm -rf "$repo" && mkdir -p "$repo"
for m in mlp_tiny cnn_small digits_mlp; do
  cp -r "$root/models/$m" "$repo/"
  if [ -f "$repo/$m/config.toml" ]; then sed -i '/^device/d' "$repo/$m/config.toml"; fi
  printf 'device = "cuda:0"\ntf32 = false\n' >>"$repo/$m/config.toml"
done
# No LD_LIBRARY_PATH: Kiln's own search finds CUDA in /usr/local/cuda/lib64.
export ORT_DYLIB_PATH=$D/libonnxruntime.so.1.31.1 NO_COLOR=1
"$D/kiln" --model-repository "$repo" --http-address 127.0.0.1 --grpc-address 127.0.0.1 \
  --http-port 18000 --grpc-port 18001 --strict-readiness false --gpu-metrics-secs 1 >"$D/kiln.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do curl -fs localhost:18000/v2/health/ready >/dev/null 2>&1 && break; sleep 0.5; done
cut -c1-300 "$D/kiln.log"
curl -s -X POST localhost:18000/v2/repository/index; echo
py=${KILN_GPU_PYTHON:-/opt/torch/.venv/bin/python}
"$py" - <<'PY'
import json, urllib.request, numpy as np, onnxruntime as ort
for m, shape in [("mlp_tiny", (8, 16)), ("cnn_small", (8, 1, 28, 28)), ("digits_mlp", (8, 64))]:
    x = np.random.default_rng(0).random(shape, dtype=np.float32) * 4
    s = ort.InferenceSession(f"/tmp/kiln-gpu-repo/{m}/1/model.onnx", providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    want = s.run(None, {name: x})
    body = json.dumps({"inputs": [{"name": name, "shape": list(shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    r = json.load(urllib.request.urlopen(
        urllib.request.Request(f"http://127.0.0.1:18000/v2/models/{m}/infer", body), timeout=60))
    for o, w in zip(r["outputs"], want):
        g = np.array(o["data"], dtype=w.dtype).reshape(w.shape)
        print(f"{m}/{o['name']}: max |gpu - cpu| = {float(np.max(np.abs(g.astype(np.float64) - w))):.3g}")
PY
nvidia-smi --query-compute-apps=pid,used_memory --format=csv
# NVML metrics (sampled every --gpu-metrics-secs, 1 s here).
sleep 2
curl -s localhost:18000/metrics | grep '^kiln_gpu' || echo "no kiln_gpu_* metrics"
nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total --format=csv
kill -TERM "$pid"
wait "$pid"
echo "kiln exit status $?"
if [ "${BENCH:-0}" = 1 ]; then
  echo "== load benchmark"
  OUT=${OUT:-/tmp}/gpu-bench bash "$root/benches/gpu_load.sh"
fi
