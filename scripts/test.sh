#!/usr/bin/env bash
# One command: set up and run the linters, the type checker and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
OCPP2MQTT_TEST_PACKAGES=1 source scripts/setup.sh
export PATH="$PATH:/usr/sbin"
.venv/bin/ruff check src tests bench
.venv/bin/mypy  # strict, on src/ (pyproject.toml)
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-auto}" -p no:cacheprovider "$@"
