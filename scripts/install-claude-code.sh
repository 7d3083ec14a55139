#!/usr/bin/env bash
# The real Claude Code CLI for end-to-end tests, cached outside the repo.
set -euo pipefail
VERSION=2.1.331
DIR=${CLASP_CLAUDE_CODE_DIR:-$HOME/.cache/clasp/claude-code-$VERSION}
if [ -x "$DIR/node_modules/.bin/claude" ] && "$DIR/node_modules/.bin/claude" --version 2>/dev/null | grep -q "$VERSION"; then
  exit 0
fi
mkdir -p "$DIR"
cd "$DIR"
npm install --silent --no-audit --no-fund "@anthropic-ai/claude-code@$VERSION" >/dev/null 2>&1 \
  || npm install --no-audit --no-fund "@anthropic-ai/claude-code@$VERSION"
"$DIR/node_modules/.bin/claude" --version
