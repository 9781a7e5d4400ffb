#!/usr/bin/env bash
# Sets up everything ocpp2mqtt needs in ./.venv (idempotent, quick when done).
# Sourced by scripts/run.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "ocpp2mqtt needs Python >= 3.10 (set PYTHON=/path/to/python3.x)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
extras=${OCPP2MQTT_EXTRAS:-test,fast}
stamp=.venv/.ocpp2mqtt-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -U pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
  echo "$want" > "$stamp"
fi

# Debian packages: Mosquitto (the tests' broker, and the run command's fallback broker) and,
# for the test command, Chromium (the browser tests drive Debian's chromium through
# Playwright; nothing is downloaded by Playwright itself) and PostgreSQL (the shared-store
# tests start their own server in a temporary directory).
missing=()
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  missing+=(mosquitto)
fi
if [ "${OCPP2MQTT_TEST_PACKAGES:-}" = 1 ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (apt-get)…" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null
    # Debian starts a system broker on :1883; the gateway and tests run their own.
  else
    echo "warning: ${missing[*]} not installed and cannot be installed automatically;" \
         "install it (e.g. apt-get install ${missing[*]} / brew install mosquitto)." >&2
  fi
fi
