# The backend as a LocalAI backend-gallery image: LocalAI unpacks the image's files into its
# backends folder and starts the top-level run.sh with `--addr 127.0.0.1:PORT`.
#
#   docker build --build-arg BUILD_TYPE=cpu  -t REGISTRY/diffusers-grpc:latest-cpu  .
#   docker build --build-arg BUILD_TYPE=cuda -t REGISTRY/diffusers-grpc:latest-cuda .
#
# The final image is FROM scratch, like LocalAI's own backend images: only /run.sh, the code
# and /python, a relocatable CPython (python-build-standalone, through uv) with every
# dependency installed into it, since the host that unpacks it may have no Python at all.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS builder
ARG BUILD_TYPE=cpu
ARG PYTHON_VERSION=3.11
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
RUN curl -LsSf https://astral.sh/uv/install.sh | env UV_INSTALL_DIR=/usr/local/bin sh
WORKDIR /backend
COPY backend.proto progress.proto diffusers_dynamic_loader.py run.sh Makefile README.md requirements*.txt ./
COPY diffusers_backend ./diffusers_backend
# CPU: torch's CPU wheels live on PyTorch's own index (PyPI's Linux wheels are CUDA builds).
RUN uv python install "${PYTHON_VERSION}" --install-dir /tmp/python \
 && mv /tmp/python/cpython-"${PYTHON_VERSION}"* /backend/python \
 && if [ "${BUILD_TYPE}" = "cpu" ]; then \
      extra="--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match"; \
    else extra=""; fi \
 && uv pip install --python /backend/python/bin/python3 --break-system-packages ${extra} \
      -r "requirements-${BUILD_TYPE}.txt" \
 && /backend/python/bin/python3 -m diffusers_backend.serving.protogen --force \
 && chmod +x run.sh

FROM scratch
COPY --from=builder /backend/ /
