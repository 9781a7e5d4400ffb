#!/usr/bin/env bash
# One command: set up and run the benchmark (bench/). Options: --quick, --profile,
# --only ingest,e2e,ramp,storm,memory, --e2e-seconds N, --client raw|websockets.
# Results: a table on stdout and bench/results/latest.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OCPP2MQTT_EXTRAS=${OCPP2MQTT_EXTRAS:-test,fast,bench} source scripts/setup.sh
export PATH="$PATH:/usr/sbin"
exec .venv/bin/python -m bench "$@"
