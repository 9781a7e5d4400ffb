# syntax=docker/dockerfile:1
# ocpp2mqtt: OCPP 1.6J charge points ⇄ MQTT.
#   docker build -t ocpp2mqtt .
#   docker run -p 3000:3000 -p 8081:8081 -e MQTT_HOSTNAME=broker -v ocpp2mqtt-data:/data ocpp2mqtt
# Configuration: environment variables (see README); the SQLite store lives in /data.

ARG PYTHON_IMAGE=python:3.12-slim

# --- build: install the package (with uvloop) into a self-contained venv --------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# DL3013: this installs the project itself; its dependencies' ranges are in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir "." \
 && ocpp2mqtt --version

# --- runtime: the venv only, as an unprivileged user ------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="ocpp2mqtt" \
      org.opencontainers.image.description="Gateway between OCPP 1.6J charge points and MQTT" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 ocpp2mqtt \
 && useradd --system --uid 10001 --gid ocpp2mqtt --no-create-home --home-dir /data \
            --shell /usr/sbin/nologin ocpp2mqtt \
 && mkdir -p /data \
 && chown ocpp2mqtt:ocpp2mqtt /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATA_DIR=/data \
    LISTEN_ADDR=0.0.0.0 \
    LISTEN_PORT=3000 \
    HTTP_ENABLED=true \
    HTTP_ADDR=0.0.0.0 \
    HTTP_PORT=8081 \
    EMBEDDED_BROKER=off
WORKDIR /data
VOLUME /data
EXPOSE 3000 8081
USER 10001:10001
# Liveness over HTTP with the image's own Python (slim has no curl or wget).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('HTTP_PORT', '8081'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["ocpp2mqtt"]
CMD ["run"]
