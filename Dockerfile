# syntax=docker/dockerfile:1
# Three images from one file (docs/container-image.md; `make image` builds all three):
#   docker build --target server   -t orpheus-tts:0.1.0 .          the server (CUDA, no compiler)
#   docker build --target builder  -t orpheus-tts-builder:0.1.0 .  the engine builder: the server's
#                                                                   venv plus a C compiler
#   docker build --target operator -t orpheus-operator:0.1.0 .     the OrpheusVoice operator (no torch)
# Base images are pinned by tag; for builds that never change underneath, pin their digests too
# (`--build-arg CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04@sha256:...`).
# All three run as uid/gid 10001 (operator/orpheus_operator/labels.py RUN_AS_USER) on a read-only
# root filesystem: everything they write goes under /tmp, which Kubernetes mounts as an emptyDir
# (and the builder's output under /cache, the engine cache PVC).

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm
# The images' version and source labels (`make image` passes the chart's appVersion).
ARG VERSION=0.1.0
ARG SOURCE_URL=""

# ---------------------------------------------------------------------------------------------
# Server: the venv is built here, where pip may fetch and build; the final stage only copies it.
FROM ${CUDA_IMAGE} AS server-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
# Versions come with the base tag's Ubuntu release; its archive drops superseded versions, so
# exact pins would break every rebuild after a security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# The CUDA build of torch goes in first, from PyTorch's index, and a constraint holds it there:
# the package's `torch>=2.11,<2.14` is then already met, and no later install can swap it.
# (CI and `make install` use the CPU build; nothing here touches them.)
ARG TORCH_VERSION=2.11.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN echo "torch==${TORCH_VERSION}" > /opt/constraints.txt \
    && /opt/venv/bin/pip install --no-cache-dir --constraint /opt/constraints.txt \
        --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# Only what the wheel is built from: orpheus_tts, orpheus_bench and engine_jobs (README.md is the
# package's readme). pip compiles the bytecode here, so a read-only root still imports fast.
COPY pyproject.toml README.md /src/
COPY server/ /src/server/
COPY bench/orpheus_bench/ /src/bench/orpheus_bench/
COPY engine_jobs/ /src/engine_jobs/
RUN /opt/venv/bin/pip install --no-cache-dir --constraint /opt/constraints.txt /src

# ---------------------------------------------------------------------------------------------
# `orpheus-tts serve` on GPU nodes, from an engine the builder image (below) made.
FROM ${CUDA_IMAGE} AS server
ARG VERSION
ARG SOURCE_URL
LABEL org.opencontainers.image.title="orpheus-tts" \
      org.opencontainers.image.description="Streaming text-to-speech server for the Orpheus model" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}"

# Only the interpreter the venv was made with: no pip, no compiler. Triton compiles its small C
# launchers (and its cuda_utils module) with a C compiler when it first needs them; the server
# needs none, because the engine it starts from carries them compiled in its Triton cache
# (compile/triton/, written by the builder image below, which has the compiler). (Apt versions
# unpinned, as in server-build.)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 orpheus \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin orpheus \
    && install -d -o 10001 -g 10001 /tmp/orpheus-cache \
        /tmp/orpheus-cache/inductor /tmp/orpheus-cache/triton /tmp/orpheus-cache/huggingface
COPY --from=server-build /opt/venv /opt/venv

# Compile and hub caches live under /tmp: the operator's pods mount /tmp (an emptyDir) and
# nothing else writable. The engine (weights, codec) is mounted read-only
# at /engine.
ENV PATH=/opt/venv/bin:${PATH} \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/orpheus-cache \
    TORCHINDUCTOR_CACHE_DIR=/tmp/orpheus-cache/inductor \
    TRITON_CACHE_DIR=/tmp/orpheus-cache/triton \
    HF_HOME=/tmp/orpheus-cache/huggingface \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
VOLUME ["/tmp"]
# gRPC (with health and reflection), HTTP and WebSocket, Prometheus /metrics.
EXPOSE 50051 8000 9090

# Docker's own check (Kubernetes uses the pod's gRPC probes instead). Start-up reads the
# weights and captures CUDA graphs: 66 s on an H200 from a built engine, 130 s when it compiles
# the model and codec itself (no --engine; docs/performance.md), so failures count only after 180 s.
HEALTHCHECK --start-period=180s --interval=15s --timeout=5s --retries=3 \
    CMD ["orpheus-tts", "health", "--server", "localhost:50051"]
ENTRYPOINT ["orpheus-tts"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------------
# The engine builder: the operator's build Job runs `python -m engine_jobs.build` from it. It is
# the server image (same venv, user, caches under /tmp) plus what Triton needs to build its C
# launchers and cuda_utils module while the build compiles the kernels on the GPU: gcc, libc's
# headers (gcc only recommends libc6-dev) and Python.h for the venv's interpreter (python3-dev).
FROM server AS builder
ARG VERSION
ARG SOURCE_URL
LABEL org.opencontainers.image.title="orpheus-tts-builder" \
      org.opencontainers.image.description="Engine builder for the Orpheus TTS server: compiles the kernels on the target GPU" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}"
USER 0:0
# Root for apt only, then back to the Job's user. (Apt versions unpinned, as in server-build.)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev python3-dev \
    && rm -rf /var/lib/apt/lists/*
USER 10001:10001
# A Job, not a server: nothing listens for the server's health check.
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m", "engine_jobs.build"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------
# Operator: a small control-plane image; operator/pyproject.toml pulls no torch.
FROM ${PYTHON_IMAGE} AS operator-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
COPY operator/pyproject.toml operator/README.md /src/operator/
COPY operator/orpheus_operator/ /src/operator/orpheus_operator/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /src/operator

FROM ${PYTHON_IMAGE} AS operator
ARG VERSION
ARG SOURCE_URL
LABEL org.opencontainers.image.title="orpheus-operator" \
      org.opencontainers.image.description="Kubernetes operator that turns an OrpheusVoice into an engine build and a fleet of GPU pods" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}"
RUN groupadd --gid 10001 orpheus \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin orpheus
COPY --from=operator-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH} \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
VOLUME ["/tmp"]
# The liveness endpoint (the chart's operator.livenessPort).
EXPOSE 8080
ENTRYPOINT ["orpheus-operator"]
CMD ["run", "--liveness=http://0.0.0.0:8080/healthz"]
