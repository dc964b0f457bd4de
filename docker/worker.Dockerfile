# The GPU worker image: NVIDIA's CUDA runtime with cuDNN, and the [worker] extra. onnxruntime-gpu 1.31.1
# (pinned in pyproject.toml and docker/constraints.txt) loads CUDA 13 and cuDNN 9 from the system; with
# anything else it falls back to the CPU without an error, and the worker's log, heartbeat and
# genqueue_worker_provider_info metric show CPUExecutionProvider. No torch.
#   docker build -f docker/worker.Dockerfile -t genqueue-worker .
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
WORKDIR /src
COPY docker/constraints.txt docker/constraints.txt
COPY pyproject.toml README.md ./
COPY genqueue ./genqueue
COPY api ./api
COPY worker ./worker
COPY exporter ./exporter
RUN pip install -c docker/constraints.txt ".[worker]"

FROM ${CUDA_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH \
    GENQUEUE_ENVIRONMENT=production GENQUEUE_MODELS_DIR=/models GENQUEUE_DATA_DIR=/data
# The same python3 as the build stage, at the same path: the copied virtual environment links to it.
RUN apt-get update && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /data genqueue \
    && mkdir /models && chown genqueue:genqueue /models
COPY --from=build /opt/venv /opt/venv
USER genqueue
WORKDIR /data
EXPOSE 9464
ENTRYPOINT ["genqueue"]
CMD ["worker"]
