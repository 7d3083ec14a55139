#!/usr/bin/env bash
# Install the gateway and its bundled plugins into ./.venv (idempotent).
#   bash scripts/install.sh          runtime only
#   bash scripts/install.sh --test   plus test tools and the Claude Code CLI
set -euo pipefail
cd "$(dirname "$0")/.."
export LITELLM_LOCAL_MODEL_COST_MAP=True
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
EXTRA=""
[ "${1:-}" = "--test" ] && EXTRA="[test]"
PLUGINS=()
for p in plugins/*/; do
  [ -f "$p/pyproject.toml" ] || continue
  spec="${p%/}"
  # Optional extras the test suite exercises (clasp-cache[semantic]: CPU torch from the local wheel).
  [ -n "$EXTRA" ] && [ "$spec" = plugins/clasp-cache ] && spec="$spec[semantic]"
  PLUGINS+=(-e "$spec")
done
.venv/bin/pip install --quiet --disable-pip-version-check -e ".${EXTRA}" "${PLUGINS[@]}"
# PYTHONDONTWRITEBYTECODE=1 is set on these machines: compile once here, or every
# process pays `import litellm` from source (over a minute of CPU).
.venv/bin/python -m compileall -q -j 0 .venv/lib/python*/site-packages clasp_gateway plugins >/dev/null || true
if [ "${1:-}" = "--test" ]; then
  bash scripts/install-claude-code.sh
  # The dashboard's browser test drives Debian's chromium through Playwright (executable_path).
  if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
      || echo "install.sh: could not install chromium (the dashboard browser test needs /usr/bin/chromium)" >&2
  fi
  # tests/test_replicas.py and bench/replicas_bench.py put three replicas behind Debian's haproxy.
  if ! command -v haproxy >/dev/null && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy) >/dev/null 2>&1 \
      || echo "install.sh: could not install haproxy (tests/test_replicas.py needs it)" >&2
  fi
fi
