"""Claims to a :class:`clasp_gateway.Principal`: who (``sub``), which role and which team,
from the mapping in ``oidc:`` only.

The role is the highest one any of the user's groups maps to (``admin`` over
``team_admin`` over ``member``); a user in no mapped group gets ``default_role``, and with
``default_role: none`` is refused (403: the identity is real, it has no access here).
The team is the ``claims.team`` claim when configured, else the first entry of
``teams:`` (in the file's order) naming one of the user's groups.
"""

from __future__ import annotations

from typing import Any

from clasp_gateway import AuthenticationError, PermissionDeniedError, Principal

from .settings import OidcSettings

RANK = {"member": 0, "team_admin": 1, "admin": 2}
MAX_GROUPS = 1000


def groups_of(claims: dict[str, Any], name: str) -> list[str]:
    """The groups claim as a list of strings (a list, or one space-separated string)."""
    raw = claims.get(name)
    if isinstance(raw, str):
        raw = raw.split()
    if not isinstance(raw, list):
        return []
    return [g for g in raw[:MAX_GROUPS] if isinstance(g, str)]


def principal_from(claims: dict[str, Any], settings: OidcSettings) -> Principal:
    """The principal the claims map to (raises 401 without a subject, 403 without a role)."""
    mapping = settings.claims
    subject = claims.get(mapping["subject"])
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise AuthenticationError(f"token lacks a usable {mapping['subject']!r} claim")
    name = claims.get(mapping["name"])
    name = name if isinstance(name, str) and 0 < len(name) <= 255 else subject
    groups = groups_of(claims, mapping["groups"])
    held = set(groups)
    role = None
    for candidate, names in settings.roles.items():
        if held.intersection(names) and (role is None or RANK[candidate] > RANK[role]):
            role = candidate
    if role is None:
        if settings.default_role == "none":
            raise PermissionDeniedError(f"{name} signed in, but none of their groups has access to this gateway "
                                        "(oidc.roles)")
        role = settings.default_role
    team = None
    if mapping.get("team"):
        raw_team = claims.get(mapping["team"])
        team = raw_team if isinstance(raw_team, str) and 0 < len(raw_team) <= 64 else None
    if team is None:
        team = next((t for group, t in settings.teams.items() if group in held), None)
    return Principal(key_id=f"oidc:{subject}", name=name, team=team, role=role,
                     metadata={"auth": "oidc", "subject": subject})
