"""Alerts: budget thresholds and outages (sent by :mod:`clasp_budgets.budgets`) and
anomalies (spend or error rate of a key, team or model far above its own usual),
delivered to the log and, when configured, a webhook.

- :mod:`.settings`: the ``alerts:`` section.
- :mod:`.webhook`: delivery off the request path (a queue, one pooled session,
  bounded retries).
- :mod:`.anomaly`: per-minute rates against their EWMA, on an injectable clock.
- :mod:`.plugin`: the pluggy plugin (``record`` feeds the anomaly detector).
"""
