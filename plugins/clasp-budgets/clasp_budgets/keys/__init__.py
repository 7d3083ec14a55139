"""Virtual keys and teams: keys a team creates and revokes without editing clasp.yaml.

A virtual key (``sk-clasp-`` + 32 random bytes, base64url) is shown once when it is
created and stored as its SHA-256 only. The pieces, one idea each:

- :mod:`.tokens`: making, recognising and hashing keys;
- :mod:`.tables` and ``migrations/``: the ``teams``, ``virtual_keys`` and ``audit_log``
  tables (Alembic branch ``keys``);
- :mod:`.policy`: a key's limits combined with its team's (the stricter wins);
- :mod:`.store`: every query, on the gateway's database (SQLAlchemy Core, async);
- :mod:`.cache`: the in-process lookup cache (bounded LRU, TTL, negative entries);
- :mod:`.auth`: the ``authenticate`` hook, cache invalidation across replicas, the
  batched ``last_used_at`` writes;
- :mod:`.inputs`: what the admin API and the CLI accept (shared checks, one message style);
- :mod:`.admin`: the admin REST API under ``/admin/`` (its routes: :mod:`.admin_keys`,
  :mod:`.admin_teams`; what they share: :mod:`.web`);
- :mod:`.cli`: ``clasp keys`` and ``clasp teams``;
- :mod:`.plugin`: the entry point tying them to the gateway.
"""
