"""ocpp2mqtt benchmark: `./scripts/bench.sh` (or `python -m bench`); see bench/README.md."""
