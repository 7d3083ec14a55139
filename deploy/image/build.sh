#!/bin/sh
# Build the gateway's virtual environment at PREFIX from the source tree this script is in.
#
#   sh deploy/image/build.sh /opt/clasp
#
# The Dockerfile's build stage runs exactly this (one RUN line), and
# tests/test_deploy_image.py runs it as a non-root user in a fresh copy of the build
# context, then starts the gateway from PREFIX: what the test proves is what the image
# does. Plain POSIX sh: python:3.11-slim has no bash.
#
# Environment:
#   PYTHON                 the interpreter the venv is made from (default: python3)
#   CLASP_EXCLUDE_PLUGINS  plugin folders left out (default: the examples, which a team
#                          copies rather than runs); "" installs every plugin
#   CLASP_PLUGIN_EXTRAS    extras per plugin, e.g. "clasp-cache[semantic]" (CPU torch: ~1 GB)
set -eu

PREFIX=${1:?usage: build.sh PREFIX}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-python3}
EXCLUDE=${CLASP_EXCLUDE_PLUGINS-clasp-example-tagger clasp-provider-example clasp-router-example clasp-tool-docs}
EXTRAS=${CLASP_PLUGIN_EXTRAS:-}

# LiteLLM fetches its model price map from the internet at import unless told not to;
# the image must start (and build) without a network.
export LITELLM_LOCAL_MODEL_COST_MAP=True

"$PYTHON" -m venv "$PREFIX"

set -- "$SRC"
for dir in "$SRC"/plugins/*/; do
  name=$(basename "$dir")
  [ -f "$dir/pyproject.toml" ] || continue
  case " $EXCLUDE " in *" $name "*) continue ;; esac
  spec="$SRC/plugins/$name"
  for extra in $EXTRAS; do
    case "$extra" in "${name}["*) spec="$SRC/plugins/$extra" ;; esac
  done
  set -- "$@" "$spec"
done

# Not editable: the image keeps no source tree. --no-compile: compiled once below.
# One setuptools for every local package's build instead of an isolated build
# environment per package (nine of them: most of the install's CPU).
pip_install() { "$PREFIX/bin/python" -m pip install --no-cache-dir --disable-pip-version-check --no-compile "$@"; }
pip_install "setuptools>=68"
pip_install --no-build-isolation "$@"

# The runtime sets PYTHONDONTWRITEBYTECODE and runs read-only, so nothing is compiled at
# start: without this step every process pays `import litellm` from source (about a
# minute of CPU). unchecked-hash: valid whatever the files' mtimes after COPY, and
# never re-checked against the source (the image is immutable).
"$PREFIX/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash "$PREFIX/lib" >/dev/null

# Fail the build, not the first start, when a plugin does not import.
CLASP_CONFIG=/dev/null "$PREFIX/bin/clasp" plugins >/dev/null
