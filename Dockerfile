# One source tree, three images: `base` (API, migrations), `worker` (CUDA + cuDNN for onnxruntime-gpu)
# and `exporter` (adds the [export] extra with torch). Neither the API nor the worker image has torch.
# onnxruntime-gpu 1.31 loads CUDA 13 and cuDNN 9 from the system; without them it silently runs on the CPU
# (the worker logs the provider that actually runs). Override CUDA_IMAGE to match your driver.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY genqueue ./genqueue
COPY api ./api
COPY worker ./worker
COPY exporter ./exporter
RUN pip install .
ENV GENQUEUE_MODELS_DIR=/models GENQUEUE_DATA_DIR=/data
ENTRYPOINT ["genqueue"]

FROM base AS exporter
RUN pip install ".[export]"

# The worker's base: onnxruntime-gpu 1.31 loads CUDA 13 and cuDNN 9 from it.
FROM ${CUDA_IMAGE} AS worker
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
WORKDIR /app
COPY --from=base /app /app
RUN pip install .
ENV GENQUEUE_MODELS_DIR=/models GENQUEUE_DATA_DIR=/data
ENTRYPOINT ["genqueue"]
