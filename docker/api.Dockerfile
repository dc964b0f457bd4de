# The API image. It also runs the one-shot `genqueue db upgrade`, `genqueue beat` and `genqueue status`.
# Slim Python with the [server] extra: no CUDA, no torch.
#   docker build -f docker/api.Dockerfile -t genqueue-api .
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY docker/constraints.txt docker/constraints.txt
COPY pyproject.toml README.md ./
COPY genqueue ./genqueue
COPY api ./api
COPY worker ./worker
COPY exporter ./exporter
RUN pip install -c docker/constraints.txt ".[server]"

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH \
    GENQUEUE_ENVIRONMENT=production GENQUEUE_MODELS_DIR=/models GENQUEUE_DATA_DIR=/data
# /models exists in the image, owned by the service user, so that a fresh named volume mounted there is too.
RUN useradd --system --uid 10001 --create-home --home-dir /data genqueue \
    && mkdir /models && chown genqueue:genqueue /models
COPY --from=build /opt/venv /opt/venv
USER genqueue
WORKDIR /data
EXPOSE 8000
ENTRYPOINT ["genqueue"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
