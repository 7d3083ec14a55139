#!/usr/bin/env bash
# Install the LiteLLM proxy that bench/run_bench.py compares against, in its OWN venv
# (the gateway's .venv stays clean). Idempotent; ~1-2 min the first time.
#   bash bench/install_litellm_proxy.sh [VENV]     default: /root/.cache/clasp/litellm-proxy-venv
#
# `pip install 'litellm[proxy]==1.110.2'` does not resolve: that extra pins a
# `litellm-proxy==1.110.2` package the registry does not have. So this installs
# litellm itself plus the proxy's runtime imports (found by importing
# litellm.proxy.proxy_server until it succeeds).
set -euo pipefail
VENV=${1:-${CLASP_BENCH_LITELLM_VENV:-/root/.cache/clasp/litellm-proxy-venv}}
VERSION=1.110.2
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || { mkdir -p "$(dirname "$VENV")"; "$PY" -m venv "$VENV"; }
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  "litellm==$VERSION" gunicorn uvicorn uvloop fastapi starlette backoff pyyaml rq orjson \
  apscheduler python-multipart PyJWT cryptography websockets semver expression fastapi-sso mcp soundfile \
  2>&1 | grep -v "^WARNING: Location" || true
# PYTHONDONTWRITEBYTECODE=1 is set on these machines: without compiled files the
# proxy's imports take about a minute of CPU at every start.
"$VENV/bin/python" -m compileall -q -j 0 "$VENV"/lib/python*/site-packages >/dev/null 2>&1 || true
LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_OFFLINE_MODE=true \
  "$VENV/bin/python" -c "import litellm.proxy.proxy_server" >/dev/null 2>&1 \
  || { echo "litellm proxy does not import; try: $VENV/bin/python -c 'import litellm.proxy.proxy_server'" >&2; exit 1; }
echo "LiteLLM proxy $VERSION ready in $VENV"
