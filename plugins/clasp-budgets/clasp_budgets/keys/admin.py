"""The admin REST API for keys, teams and the audit log (``/admin/...``).

Who may do what: ``admin`` everything; ``team_admin`` its own team's keys (never an
``admin`` key, never another team's: another team's key reads as not found) and reading
its own team, and moving a key between member and team_admin within it; an admin moves
keys between teams and grants any role. ``PATCH /admin/keys/{id}`` changes any field of
a key in place, team and role included (``POST /admin/keys/{id}/assign`` does team and
role only); ``member`` only ``GET /admin/me``. Every change writes an audit row in the
same transaction and announces itself so every replica's lookup cache drops it.

A created key is in exactly one answer (``201``, ``cache-control: no-store``); lists and
reads show its display prefix only. Bodies are bounded (64 KiB), pages too
(``limit`` up to 500). Each endpoint's docstring carries its OpenAPI description (after
``---``), which the core serves as ``/admin/openapi.json``.
"""

from __future__ import annotations

from .admin_keys import assign_key, create_key, get_key, list_keys, me, revoke_key, update_key
from .admin_teams import create_team, delete_team, get_team, list_audit, list_teams, update_team
from .web import RUNTIME, Endpoint

ROUTES: list[tuple[str, Endpoint, list[str]]] = [
    ("/admin/keys", create_key, ["POST"]),
    ("/admin/keys", list_keys, ["GET"]),
    ("/admin/keys/{key_id}", get_key, ["GET"]),
    ("/admin/keys/{key_id}", update_key, ["PATCH"]),
    ("/admin/keys/{key_id}/revoke", revoke_key, ["POST"]),
    ("/admin/keys/{key_id}/assign", assign_key, ["POST"]),
    ("/admin/teams", create_team, ["POST"]),
    ("/admin/teams", list_teams, ["GET"]),
    ("/admin/teams/{name}", get_team, ["GET"]),
    ("/admin/teams/{name}", update_team, ["PATCH"]),
    ("/admin/teams/{name}", delete_team, ["DELETE"]),
    ("/admin/audit", list_audit, ["GET"]),
    ("/admin/me", me, ["GET"]),
]

__all__ = ["ROUTES", "RUNTIME"]
