#!/usr/bin/env bash
# Install everything (gateway, plugins, test tools, Claude Code CLI) and run all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
export LITELLM_LOCAL_MODEL_COST_MAP=True
exec .venv/bin/python -m pytest -q "$@"
