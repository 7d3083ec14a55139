"""clasp-budgets: what makes the gateway a team's shared service.

Each feature is its own pluggy plugin module with its own entry point in this package's
``pyproject.toml`` (keys and teams, rate limits, the spend ledger and prices, budgets), so
they can be turned on and off one by one with ``CLASP_LOAD_PLUGINS``.
"""
