# One image, three roles. The default target has no torch (API and worker); `exporter` adds the extra.
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
