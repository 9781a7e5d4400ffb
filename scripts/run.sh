#!/usr/bin/env bash
# One command: set up and run the gateway. Configuration: environment or .env.
set -euo pipefail
cd "$(dirname "$0")/.."
OCPP2MQTT_EXTRAS=${OCPP2MQTT_EXTRAS:-fast} source scripts/setup.sh
exec .venv/bin/ocpp2mqtt "$@"
