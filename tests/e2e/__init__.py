"""End-to-end tests: the real Claude Code CLI, through the gateway, to fake upstreams."""
