# The exporter image: slim Python, CPU-only torch 2.13.0 from PyTorch's CPU index, and the [export] extra.
# It turns PyTorch models into the ONNX model folders the workers serve; in compose.yaml it runs once and
# builds the demo models into the shared `models` volume.
#   docker build -f docker/exporter.Dockerfile -t genqueue-exporter .
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY docker/constraints.txt docker/constraints.txt
# torch first, from the CPU index: the default index would bring the CUDA build and its gigabytes.
RUN pip install -c docker/constraints.txt --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY genqueue ./genqueue
COPY api ./api
COPY worker ./worker
COPY exporter ./exporter
RUN pip install -c docker/constraints.txt ".[export]"

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH \
    GENQUEUE_MODELS_DIR=/models GENQUEUE_DATA_DIR=/data
RUN useradd --system --uid 10001 --create-home --home-dir /data genqueue \
    && mkdir /models && chown genqueue:genqueue /models
COPY --from=build /opt/venv /opt/venv
USER genqueue
WORKDIR /data
ENTRYPOINT ["genqueue"]
CMD ["export", "builtin", "--models-dir", "/models", "--skip-existing"]
