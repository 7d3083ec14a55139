"""Admitting a request against every limit that applies to it, and settling it after.

Which limits apply (:func:`scopes_for`): the key's policy, its team's (``limits.teams``)
and its user's (``limits.users``, keyed by ``ctx.user``: one person behind a shared key).
Each kind is a sliding window in the state backend (``hit``): requests count 1 at
admission; tokens count an estimate at admission (the input estimate plus
``max_tokens`` clamped to ``output_estimate_cap``) and are corrected by the real usage
when the request ends. Concurrency is a total per scope (``add_within`` +1, -1 on every
exit path) with a lease TTL, so slots a killed replica held free themselves.

Admission is one atomic script (:mod:`.admit`): every window and slot fits and is
counted, or nothing is, so a refused request costs the client nothing against its other
limits, and it is one round trip to Redis whatever the number of limits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from clasp_gateway import RequestContext, StateBackend, input_estimate

from .admit import ADMIT
from .settings import LimitSet, LimitsSettings, limits_of
from .shape import Headroom, LimitExceeded, headroom_headers, refusal, tightest
from .store import Store

WINDOWS = (("rpm", 60.0, False), ("rpd", 86400.0, False), ("tpm", 60.0, True), ("tpd", 86400.0, True))
"""(kind, window seconds, counts tokens)."""

UNLIMITED = 1e18
"""The limit of a correction: it always applies (the tokens were spent)."""

NS = "limits:"


@dataclass(slots=True, frozen=True)
class Scope:
    """One subject limits apply to: ``key``, ``team`` or ``user``."""

    kind: str
    ident: str
    """Its id in state keys (a key's id, a team or user name)."""
    label: str
    """How a refusal names it (a key's name, never its secret)."""
    limits: LimitSet


@dataclass(slots=True)
class Admission:
    """What one request holds: token counts to correct and concurrency slots to release."""

    backend: StateBackend
    estimate: int
    tokens: list[tuple[str, float, float]] = field(default_factory=list)
    """(state key, window, tokens counted) of each token window: a request larger than
    a whole limit counts the limit, so it can pass an empty window rather than never."""
    slots: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    """The headroom headers for the answer."""
    settled: bool = False


def scopes_for(ctx: RequestContext, settings: LimitsSettings) -> list[Scope]:
    """The scopes with limits for this request (empty: nothing to count)."""
    out: list[Scope] = []
    principal = ctx.principal
    if principal is not None:
        own = limits_of(principal.policy)
        if not own.empty:
            out.append(Scope("key", principal.key_id, f"key '{principal.name or 'unnamed'}'", own))
        if principal.team is not None:
            team = settings.teams.get(principal.team)
            if team is not None and not team.empty:
                out.append(Scope("team", principal.team, f"team '{principal.team}'", team))
    if ctx.user is not None and settings.users:
        user = settings.users.get(ctx.user) or settings.users.get("default")
        if user is not None and not user.empty:
            out.append(Scope("user", ctx.user, f"user '{ctx.user}'", user))
    return out


def token_estimate(ctx: RequestContext, request: Any, cap: int) -> int:
    """Input estimate (the core's, computed once per request: budgets use it too) +
    ``max_tokens`` (or ``max_completion_tokens``) clamped to ``cap``."""
    asked = request.get("max_completion_tokens") or request.get("max_tokens")
    output = min(int(asked), cap) if isinstance(asked, int) and asked > 0 else cap
    return input_estimate(ctx, request) + output


class Limiter:
    """Counts admissions in a :class:`Store`; one per app."""

    def __init__(self, store: Store, settings: LimitsSettings) -> None:
        self.store = store
        self.settings = settings

    async def admit(self, ctx: RequestContext, request: Any, scopes: list[Scope]) -> Admission:
        """Count the request against every scope's limits, or raise a 429 (nothing counted)."""
        needs_tokens = any(s.limits.tpm is not None or s.limits.tpd is not None for s in scopes)
        estimate = token_estimate(ctx, request, self.settings.output_estimate_cap) if needs_tokens else 0
        admission, backend = await self.store.run(lambda b: self._admit(b, ctx.api, scopes, estimate))
        admission.backend = backend
        return admission

    async def _admit(self, backend: StateBackend, api: str, scopes: list[Scope], estimate: int) -> Admission:
        """One atomic script (:data:`~.admit.ADMIT`): every window and slot, or nothing."""
        keys: list[str] = []
        args: list[float | int] = [0]
        windows: list[tuple[Scope, str, float, float, float]] = []  # scope, kind, allowed, window, cost
        slots: list[tuple[Scope, str, float]] = []
        for scope in scopes:
            base = f"{NS}{scope.kind}:{scope.ident}:"
            for kind, window, tokens in WINDOWS:
                limit = getattr(scope.limits, kind)
                if limit is not None:
                    allowed = self.store.scaled(limit, backend)
                    cost = min(float(estimate), allowed) if tokens else 1.0
                    keys.append(base + kind)
                    args += [allowed, window, cost]
                    windows.append((scope, kind, allowed, window, cost))
            if scope.limits.max_concurrency is not None:
                slots.append((scope, base + "concurrency", self.store.scaled(scope.limits.max_concurrency, backend)))
        args[0] = len(windows)
        lease_ms = math.ceil(self.settings.lease_ttl * 1000)
        for _, key, allowed in slots:
            keys.append(key)
            args += [allowed, lease_ms]
        result = await backend.run(ADMIT, keys, args)
        wall = time.time()
        rooms = [Headroom(kind, allowed, allowed - count, window - wall % window)
                 for (_, kind, allowed, window, _), count in zip(windows, result.counts, strict=False)]
        if not result.ok:
            if result.failed >= len(windows):
                scope, _, _ = slots[result.failed - len(windows)]
                raise LimitExceeded(
                    f"concurrency limit of {scope.label}: {scope.limits.max_concurrency} requests in flight at once",
                    kind="concurrency", headers={"retry-after": "1"})
            scope, kind, allowed, _, _ = windows[result.failed]
            room = Headroom(kind, allowed, max(0.0, rooms[-1].remaining), result.retry_after)
            raise refusal(api, f"rate limit of {scope.label}: {getattr(scope.limits, kind)} {_noun(kind)} "
                          f"(retry in {max(1, round(result.retry_after))}s)", room, rooms[:-1] + [room])
        admission = Admission(backend, estimate)
        admission.tokens = [(keys[i], w[3], w[4]) for i, w in enumerate(windows) if w[1] in ("tpm", "tpd")]
        admission.slots = [key for _, key, _ in slots]
        admission.headers = headroom_headers(api, tightest(rooms, frozenset({"rpm", "rpd"})),
                                             tightest(rooms, frozenset({"tpm", "tpd"})), wall)
        return admission

    async def settle(self, admission: Admission, used_tokens: int | None) -> None:
        """The request ended (however): release its slots, correct its token counts to
        ``used_tokens`` (``None``: keep the estimate). Idempotent."""
        if admission.settled:
            return
        admission.settled = True
        backend = admission.backend
        for key in admission.slots:
            await self.store.quietly(backend.add_within(key, -1, None, ttl=self.settings.lease_ttl))
        if used_tokens is not None:
            for key, window, counted in admission.tokens:
                delta = float(used_tokens) - counted
                if delta:
                    await self.store.quietly(backend.hit(key, UNLIMITED, window, cost=delta))


def _noun(kind: str) -> str:
    return {"rpm": "requests per minute", "rpd": "requests per day", "tpm": "tokens per minute",
            "tpd": "tokens per day"}[kind]
