# rnnlab: API + local worker processes, CPU-only PyTorch, SQLite in the /data volume.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
# The CPU build keeps the image small; for CUDA, build with
# --build-arg TORCH_INDEX_URL=<a CUDA wheel index> and run with a GPU.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RNNLAB_DATA_DIR=/data \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /app

RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY models ./models
COPY service ./service
# Editable, so that alembic/ beside the packages is found by `rnnlab migrate` and serve.
RUN pip install --no-cache-dir -e . \
    && groupadd --gid 10001 rnnlab \
    && useradd --create-home --uid 10001 --gid 10001 rnnlab \
    && mkdir -p /data \
    && chown rnnlab:rnnlab /data

USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# SIGTERM (docker stop) re-queues running runs at an epoch boundary; allow it time.
STOPSIGNAL SIGTERM
CMD ["rnnlab", "serve", "--host", "0.0.0.0", "--port", "8000"]
