# opsgate's container image (docs/operations.md, "Container image").
#
#   docker build -t opsgate .                            # opsgate alone: its own admin actions
#   docker build -t opsgate --build-arg WITH_DEMO=true . # with the demo plugin (opsgate-demo)
#
# The image serves; it never migrates. `opsgate db upgrade` is its own step, run as the
# database owner (compose.yaml's `migrate` service), so the serving processes never hold the
# owner's credentials.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: opsgate's wheel (and the demo's, if asked) plus every dependency as a wheel ---
FROM ${PYTHON_IMAGE} AS build
ARG WITH_DEMO=false
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m pip install "build>=1.2,<2"
COPY pyproject.toml README.md ./
COPY src ./src
COPY demo ./demo
RUN python -m build --wheel --outdir /wheels/app . \
    && if [ "$WITH_DEMO" = "true" ]; then python -m build --wheel --outdir /wheels/app ./demo; fi \
    && python -m pip wheel --wheel-dir /wheels/deps /wheels/app/*.whl

# --- runtime: no compiler, no build tools, no source tree; a user that owns nothing else ---
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    OPSGATE_ENVIRONMENT=production \
    OPSGATE_LOG_FORMAT=json \
    OPSGATE_AUDIT_ANCHOR_DIR=/var/lib/opsgate/audit-anchors \
    OPSGATE_AUDIT_ANCHOR_KEY_FILE=/run/secrets/anchor_key
RUN groupadd --system --gid 10001 opsgate \
    && useradd --system --uid 10001 --gid opsgate --home-dir /var/lib/opsgate \
       --shell /usr/sbin/nologin opsgate \
    && install -d -o opsgate -g opsgate -m 0700 /var/lib/opsgate /var/lib/opsgate/audit-anchors
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links /wheels/deps /wheels/app/*.whl
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/opsgate-entrypoint
USER opsgate:opsgate
WORKDIR /var/lib/opsgate
# The anchors are evidence kept outside the database: keep them on a volume.
VOLUME ["/var/lib/opsgate/audit-anchors"]
EXPOSE 8000
# Slim images have no curl: the image's own Python asks /api/v1/healthz (a database round trip).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/v1/healthz', timeout=4)"]
ENTRYPOINT ["/usr/local/bin/opsgate-entrypoint"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
