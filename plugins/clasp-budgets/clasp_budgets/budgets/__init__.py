"""Budgets: spend limits per key, team, project, user or globally, per UTC day, week,
month or in total, that hold across processes and replicas.

- :mod:`.settings`: the ``budgets:`` section and the budgets keys' policies imply.
- :mod:`.periods`: UTC calendar periods.
- :mod:`.costs`: the worst case reserved before a call, the real cost after.
- :mod:`.scripts`: the atomic operations on the shared state (Lua + Python twins).
- :mod:`.reservations`: admit, wait, lease, settle; outages.
- :mod:`.errors`: the refusals' shapes (402 ``billing_error``, 429 ``insufficient_quota``).
- :mod:`.runtime`: the per-request hooks; :mod:`.plugin`: the pluggy plugin.
"""
