# spec-sidecar image: a wheel built in one stage, installed into a venv copied into a small final stage.
# Runs as a non-root user with a read-only root filesystem (only /tmp needs to be writable, and only barely).
# BASE_IMAGE lets an offline build use a locally made Debian bookworm image (deploy/docker/make-base-image.sh).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when the dependencies change.
COPY pyproject.toml README.md ./
RUN python3 -m venv /opt/venv \
 && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
    > requirements.txt \
 && /opt/venv/bin/pip install --requirement requirements.txt
COPY sidecar ./sidecar
# Then the wheel (build isolation fetches setuptools) without dependencies, and the venv is trimmed for size:
# the sidecar uses the kubernetes client's sync API only (its asyncio twin, kubernetes/aio, is half of the
# package), and nothing installs packages at run time (no pip or setuptools in the final venv).
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-deps /wheels/spec_sidecar-*.whl \
 && rm -rf /opt/venv/lib/python3*/site-packages/kubernetes/aio \
 && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools \
 && /opt/venv/bin/python -c "import sidecar.adapters.kube.actuator, sidecar.web.app" \
 && /opt/venv/bin/spec-sidecar --help >/dev/null

FROM ${BASE_IMAGE}
# No .pyc writes at run time (the root fs is read-only; pip already compiled them), unbuffered logs, and a HOME
# that is writable if a library insists.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp
RUN groupadd --system --gid 10001 spec-sidecar \
 && useradd --system --uid 10001 --gid spec-sidecar --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin spec-sidecar
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8081
# Python, not curl (the image has none): the process is alive and its listener answers (the metrics listener's,
# when SPEC_SIDECAR_METRICS_LISTEN gives the sidecar's routes a port apart from the tap).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; port = (os.environ.get('SPEC_SIDECAR_METRICS_LISTEN') or os.environ.get('SPEC_SIDECAR_LISTEN', ':8081')).rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
ENTRYPOINT ["spec-sidecar"]
CMD ["run", "--vllm-url", "http://127.0.0.1:8000", "--listen", "0.0.0.0:8081"]
