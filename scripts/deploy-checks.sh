#!/usr/bin/env bash
# Checks Kiln's deployment files by machine, and builds and runs its image:
#   1. hadolint and checkov on the Dockerfile;
#   2. every kustomize overlay rendered (kubectl kustomize), its core objects
#      validated by kubernetes-validate --strict (a warning, such as an unknown
#      apiVersion, fails), its ServiceMonitor / PrometheusRule against the
#      Prometheus Operator CRD schemas (k8s/tools), and checkov;
#   3. the alert and recording rules: promtool check rules + promtool test rules;
#      every PromQL expression of the Grafana dashboard and the Prometheus Adapter
#      rules parsed by promtool (tests/python/test_prometheus.py also evaluates
#      them against a real Prometheus scraping a real Kiln);
#   4. the image: the Dockerfile's runtime-prebuilt stage built with podman from a base
#      made by debootstrap (nothing can be pulled here), with the kiln binary
#      cargo built and the ONNX Runtime library from the venv; the container
#      started read-only, without capabilities, as its non-root user; readiness,
#      one inference per backend through the published ports, and a graceful stop
#      (SIGTERM, exit code 0).
# Installs what it needs (apt as root, a venv, npm). Environment:
#   KILN_REQUIRE_CONTAINER=1   fail (not skip) when podman cannot be had (CI sets it)
#   KILN_DEPLOY_VENV           the tools' venv (default <repo>/.venv-deploy)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
venv=${KILN_DEPLOY_VENV:-$repo/.venv-deploy}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say() { echo "--- deploy-checks: $*"; }

# --- tools ---
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -r scripts/deploy-requirements.txt
# KServe's SDK only for the types it generates from KServe's OpenAPI spec (its
# server dependencies are not needed): scripts/deploy/kserve_validate.py.
"$venv/bin/python" -m pip install -q --no-deps kserve==0.21.0
if ! command -v promtool >/dev/null; then
  scripts/apt-install.sh prometheus || { echo "promtool missing: install Debian's prometheus package" >&2; exit 1; }
fi
(cd k8s/tools && npm ci --silent --no-audit --no-fund >/dev/null 2>&1 || npm ci --no-audit --no-fund)
py="$venv/bin/python"
k8s_tool() { "$py" scripts/deploy/k8s_tool.py "$@"; }

# --- 1. Dockerfile ---
say "hadolint Dockerfile"
"$venv/bin/hadolint" Dockerfile
say "checkov Dockerfile"
"$venv/bin/checkov" --config-file k8s/checkov.yaml -f Dockerfile --framework dockerfile

# --- 2. manifests ---
for overlay in k8s/overlays/*/ k8s/monitoring/; do
  name=$(basename "$overlay")
  say "kubectl kustomize $overlay"
  "$venv/bin/kubectl" kustomize "$overlay" >"$work/$name.yaml"
  k8s_tool split "$work/$name.yaml" "$work/$name-core.yaml" "$work/$name-crd.json"
  say "kubernetes-validate --strict ($name)"
  "$venv/bin/kubernetes-validate" --strict "$work/$name-core.yaml" 2>&1 | tee "$work/$name-validate.log"
  if grep -E '^(WARN|ERROR)' "$work/$name-validate.log" >/dev/null \
    || ! grep -q '^INFO .*passed for resource' "$work/$name-validate.log"; then
    echo "kubernetes-validate: $name has warnings or errors (above)" >&2
    exit 1
  fi
  if [ "$(cat "$work/$name-crd.json")" != "[]" ]; then
    say "CRD schemas ($name)"
    node k8s/tools/validate-crds.mjs "$work/$name-crd.json"
  fi
  mkdir -p "$work/checkov-$name"
  cp "$work/$name.yaml" "$work/checkov-$name/"
  say "checkov ($name)"
  "$venv/bin/checkov" --config-file k8s/checkov.yaml -d "$work/checkov-$name" --framework kubernetes
done

# --- 3. rules and PromQL ---
say "KServe runtime and InferenceServices against KServe's types (strict)"
"$py" scripts/deploy/kserve_validate.py k8s/kserve/*.yaml

say "promtool check rules / test rules"
k8s_tool rules "$work/cpu.yaml" "$work/kiln-rules.yaml"
promtool check rules "$work/kiln-rules.yaml"
cp k8s/monitoring/tests/rules.test.yaml "$work/"
(cd "$work" && promtool test rules rules.test.yaml)
say "PromQL of the dashboard and the adapter rules"
k8s_tool promql "$work/promql.yaml" dashboard=k8s/monitoring/grafana-dashboard.json \
  adapter=k8s/monitoring/prometheus-adapter-config.yaml
promtool check rules "$work/promql.yaml"

# --- 4. the image ---
container_unavailable() {
  if [ "${KILN_REQUIRE_CONTAINER:-0}" = 1 ]; then
    echo "container check: $*" >&2
    exit 1
  fi
  echo "warning: container check skipped: $*" >&2
  exit 0
}
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
  scripts/apt-install.sh podman buildah debootstrap runc uidmap \
    || container_unavailable "podman/debootstrap missing and cannot be installed (not root?)"
fi
# Debian's podman on a machine without systemd or a container engine: runc,
# cgroupfs, file events, no default ulimits (the defaults exceed this sandbox's).
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF="$work/containers.conf"
base=docker.io/library/debian:bookworm-slim
if ! podman image exists "$base"; then
  say "base image: debootstrap --variant=minbase bookworm, imported as $base"
  rootfs="$work/rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log"; container_unavailable "debootstrap failed"; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import - "$base" >/dev/null
  rm -rf "$rootfs"
fi

say "podman build --target runtime-prebuilt (the binary cargo built, the venv's ONNX Runtime library)"
[ -x target/release/kiln ] || cargo build --release --locked
ort_lib=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1 2>/dev/null | head -n 1)
[ -n "$ort_lib" ] || { echo "no ONNX Runtime library in .venv (run scripts/setup-python.sh)" >&2; exit 1; }
rm -rf .prebuilt && mkdir -p .prebuilt/onnxruntime
cp target/release/kiln .prebuilt/kiln && strip .prebuilt/kiln
cp "$ort_lib" .prebuilt/onnxruntime/
# The CA roots for HTTPS to object storage (the minbase image has none).
cp /etc/ssl/certs/ca-certificates.crt .prebuilt/ca-certificates.crt
image=localhost/kiln:ci
podman build --pull=never -q -t "$image" --target runtime-prebuilt . >/dev/null
rm -rf .prebuilt
size=$(podman image inspect "$image" --format '{{.Size}}')
base_size=$(podman image inspect "$base" --format '{{.Size}}')
say "image size: $((size / 1000000)) MB ($(((size - base_size) / 1000000)) MB over the base image's $((base_size / 1000000)) MB)"

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port=$(free_port)
grpc_port=$(free_port)
name=kiln-ci-$$
cleanup() { podman rm -f "$name" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
say "podman run: read-only root, no capabilities, no new privileges, user 10001"
podman run -d --name "$name" \
  -p "127.0.0.1:$http_port:8000" -p "127.0.0.1:$grpc_port:8001" \
  -v "$repo/models:/models:ro" --tmpfs /tmp \
  --read-only --cap-drop=ALL --security-opt no-new-privileges \
  "$image" >/dev/null
ok=""
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$http_port/v2/health/ready" >/dev/null 2>&1; then ok=1; break; fi
  if [ "$(podman inspect "$name" --format '{{.State.Running}}')" != true ]; then break; fi
  sleep 0.5
done
podman logs "$name" 2>&1 | tail -n 20
[ -n "$ok" ] || { echo "the container never became ready" >&2; exit 1; }
[ "$(podman exec "$name" id -u)" = 10001 ] || { echo "the server does not run as uid 10001" >&2; exit 1; }
podman exec "$name" test -s /etc/ssl/certs/ca-certificates.crt \
  || { echo "no CA roots in the image (HTTPS to object storage would fail)" >&2; exit 1; }
# The logs are read whole before grep: with pipefail, `podman logs | grep -q` fails when
# grep stops reading at its match and podman gets SIGPIPE.
grep -q 'ONNX Runtime: /opt/onnxruntime/lib/libonnxruntime.so.1.31.1' <<<"$(podman logs "$name" 2>&1)" \
  || { echo "ONNX Runtime was not found in the image" >&2; exit 1; }
say "inference through the published ports"
KILN_HTTP_PORT=$http_port KILN_GRPC_PORT=$grpc_port .venv/bin/python scripts/deploy/container_smoke.py
say "podman stop (SIGTERM): graceful exit"
podman stop -t 40 "$name" >/dev/null
code=$(podman inspect "$name" --format '{{.State.ExitCode}}')
podman logs "$name" 2>&1 | tail -n 3
[ "$code" = 0 ] || { echo "the container exited with $code after SIGTERM" >&2; exit 1; }
grep -q 'SIGTERM received' <<<"$(podman logs "$name" 2>&1)" || { echo "no SIGTERM in the log" >&2; exit 1; }
say "all deployment checks passed"
