# syntax=docker/dockerfile:1
# The calsync image: one image, two commands (docker-compose.yml runs `calsync worker`
# and `calsync gateway`). All dependencies ship manylinux wheels, so no compiler is needed.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# .dockerignore lets in only pyproject.toml, README.md, requirements.lock and calsync/;
# dependencies come from the hash-pinned lock, calsync itself without resolving again
COPY . /src
RUN pip install --require-hashes -r /src/requirements.lock \
    && pip install --no-deps /src && rm -rf /src

# run unprivileged; /data holds the worker's RocksDB tables (a named volume in compose)
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin calsync \
    && mkdir -p /data \
    && chown calsync:calsync /data
USER calsync
WORKDIR /data
ENV CALSYNC_DATA_DIR=/data \
    CALSYNC_WEB_BIND=0.0.0.0
VOLUME ["/data"]
EXPOSE 6066 8080

CMD ["calsync", "worker"]
