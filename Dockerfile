# Kiln's container image. Build stages:
#   kiln-source    the `kiln` binary, built from this checkout on the official Rust image
#   kiln-prebuilt  or taken from .prebuilt/kiln (a binary cargo built on a Debian 12 host)
#   ort-pypi       libonnxruntime from the PyPI wheel (onnxruntime, or onnxruntime-gpu for CUDA)
#   ort-prebuilt   or taken from .prebuilt/onnxruntime/
#   runtime        the image: debian:bookworm-slim (or the CUDA base), non-root, models at /models
#
#   podman build -t kiln .                                       # CPU, everything from source
#   podman build -t kiln:cuda \
#     --build-arg RUNTIME_IMAGE=docker.io/nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 \
#     --build-arg ORT_PACKAGE=onnxruntime-gpu .                  # CUDA variant
#   podman build --pull=never -t kiln:ci \
#     --build-arg KILN_BIN=prebuilt --build-arg ORT_LIB=prebuilt .   # what CI does (scripts/container-test.sh)
#
# Run: podman run -p 8000:8000 -p 8001:8001 -v "$PWD/models:/models:ro" kiln

ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim
# source | prebuilt
ARG KILN_BIN=source
# pypi | prebuilt
ARG ORT_LIB=pypi

FROM ${RUST_IMAGE} AS kiln-source
# Extra cargo features for the binary (none by default).
ARG CARGO_FEATURES=""
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY crates crates
COPY benches benches
RUN cargo build --release --locked --bin kiln --features "${CARGO_FEATURES}" \
    && install -D -s -m 0755 target/release/kiln /out/kiln

FROM scratch AS kiln-prebuilt
COPY .prebuilt/kiln /out/kiln

FROM ${PYTHON_IMAGE} AS ort-pypi
ARG ORT_PACKAGE=onnxruntime
ARG ORT_VERSION=1.31.1
WORKDIR /wheel
# Only the shared libraries are kept: the Python bindings are not needed.
RUN pip download --no-cache-dir --no-deps --only-binary=:all: --dest /wheel "${ORT_PACKAGE}==${ORT_VERSION}" \
    && python -m zipfile -e /wheel/*.whl /wheel/unpacked \
    && mkdir -p /out \
    && cp /wheel/unpacked/onnxruntime/capi/libonnxruntime*.so* /out/

FROM scratch AS ort-prebuilt
COPY .prebuilt/onnxruntime/ /out/

# These name stages of this file, chosen by the build arguments above, not images
# (hadolint cannot tell).
# hadolint ignore=DL3006
FROM kiln-${KILN_BIN} AS kiln-bin
# hadolint ignore=DL3006
FROM ort-${ORT_LIB} AS ort-lib

FROM ${RUNTIME_IMAGE} AS runtime
ARG ORT_VERSION=1.31.1
# A fixed numeric user, so that Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 kiln \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin kiln \
    && mkdir -p /models
COPY --from=ort-lib /out/ /opt/onnxruntime/lib/
COPY --from=kiln-bin /out/kiln /usr/local/bin/kiln
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
