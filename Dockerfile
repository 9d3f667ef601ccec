# Kiln's container image. Stages:
#   kiln-build        the `kiln` binary, built from this checkout on the official Rust image
#   ort-pypi          libonnxruntime from the PyPI wheel (onnxruntime, or onnxruntime-gpu for CUDA)
#   runtime-base      debian:bookworm-slim (or the CUDA base), the non-root user, /models, ports
#   runtime-prebuilt  runtime-base with a binary and library built beforehand (.prebuilt/)
#   runtime           runtime-base with kiln-build's binary and ort-pypi's library (the default)
#
#   podman build -t kiln .                                       # CPU, everything from source
#   podman build -t kiln:cuda \
#     --build-arg RUNTIME_IMAGE=docker.io/nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 \
#     --build-arg ORT_PACKAGE=onnxruntime-gpu .                  # CUDA variant
#   podman build --pull=never --target runtime-prebuilt -t kiln:ci .   # CI (scripts/deploy-checks.sh)
#
# Run: podman run -p 8000:8000 -p 8001:8001 -v "$PWD/models:/models:ro" kiln

ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS kiln-build
# Extra cargo features for the binary (none by default).
ARG CARGO_FEATURES=""
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY crates crates
COPY benches benches
RUN cargo build --release --locked --bin kiln --features "${CARGO_FEATURES}" \
    && install -D -s -m 0755 target/release/kiln /out/kiln

FROM ${PYTHON_IMAGE} AS ort-pypi
ARG ORT_PACKAGE=onnxruntime
ARG ORT_VERSION=1.31.1
WORKDIR /wheel
# Only the shared libraries are kept: the Python bindings are not needed.
RUN pip download --no-cache-dir --no-deps --only-binary=:all: --dest /wheel "${ORT_PACKAGE}==${ORT_VERSION}" \
    && python -m zipfile -e /wheel/*.whl /wheel/unpacked \
    && mkdir -p /out \
    && cp /wheel/unpacked/onnxruntime/capi/libonnxruntime*.so* /out/

FROM ${RUNTIME_IMAGE} AS runtime-base
ARG ORT_VERSION=1.31.1
# A fixed numeric user, so that Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 kiln \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin kiln \
    && mkdir -p /models
ENV KILN_MODEL_REPOSITORY=/models \
    KILN_HTTP_PORT=8000 \
    KILN_GRPC_PORT=8001 \
    ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION} \
    NO_COLOR=1
EXPOSE 8000 8001
USER 10001:10001
# Kiln drains on SIGTERM: not ready, new requests refused, admitted ones finish
# (within --exit-timeout-secs, default 30 s), then it exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/kiln"]

# A binary cargo built on a Debian 12 (glibc 2.36) host and the ONNX Runtime
# library from the wheel, placed in .prebuilt/ (kiln, onnxruntime/libonnxruntime.so.*,
# and the host's CA bundle, ca-certificates.crt).
FROM runtime-base AS runtime-prebuilt
COPY .prebuilt/onnxruntime/ /opt/onnxruntime/lib/
COPY .prebuilt/kiln /usr/local/bin/kiln
COPY .prebuilt/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt

FROM runtime-base AS runtime
COPY --from=ort-pypi /out/ /opt/onnxruntime/lib/
COPY --from=kiln-build /out/kiln /usr/local/bin/kiln
# The CA roots HTTPS to object storage (S3, GCS, Azure) is verified against.
COPY --from=kiln-build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
