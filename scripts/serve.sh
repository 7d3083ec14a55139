#!/usr/bin/env bash
# Install (if needed) and start the gateway on embedded defaults: no Redis or
# PostgreSQL needed. Configure with clasp.yaml; pass extra `clasp serve` flags.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export LITELLM_LOCAL_MODEL_COST_MAP=True
exec .venv/bin/clasp serve "$@"
