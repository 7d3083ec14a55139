"""Ending sessions before they expire: sign-out, and an administrator's revocation of
one session or of every session of a person, on every replica.

A session cookie is signed, not stored, so it stays valid until its ``exp`` (up to
``login.session_max_age``) wherever it is shown. To end one early, the gateway keeps
a revocation list in the shared state (the public :class:`~clasp_gateway.StateBackend`:
Redis or SQLite when several processes serve, memory for one), where each entry lives
exactly as long as what it revokes could:

- ``oidc:revoked:session:<sid>``: one session (sign-out, or an administrator), until
  that session's own expiry;
- ``oidc:revoked:subject:<sub>`` = the time of the revocation: every session of that
  person signed in before it, for ``session_max_age`` (by then all have expired).

Every admin request with a session cookie is checked, at about no cost: what this
process knows (its own revocations and those announced on the ``oidc.revocations``
channel) is a dictionary lookup, and the shared list is read once per session and
process, then again only after :data:`RECHECK_SECONDS` (the bound on how late a replica
learns of a revocation whose announcement it missed: a restart, a lost connection).
A replica that starts later reads the shared list for each session it sees, so it
never needs the announcements it missed. When the shared state is down, a session
already checked here keeps its verdict; one never seen here is refused with a 503
(fail closed: a revoked session must not come back during an outage).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from clasp_gateway import GatewayError, StateBackend, StateUnavailable, Subscription

log = logging.getLogger("clasp.oidc")

CHANNEL = "oidc.revocations"
SESSION_KEY = "oidc:revoked:session:"
SUBJECT_KEY = "oidc:revoked:subject:"
RECHECK_SECONDS = 30.0
"""How long a "not revoked" answer of the shared list is trusted in one process."""
MAX_CHECKED = 50_000
"""Sessions whose verdict one process keeps (cleared when full: they are read again)."""


class RevocationsUnavailable(GatewayError):
    """The shared revocation list cannot be read and this session was never checked here."""

    status = 503
    error_type = "api_error"

    def __init__(self) -> None:
        super().__init__("the gateway cannot check this sign-in right now (its shared state is unavailable); "
                         "retry shortly, or use a bearer token", headers={"retry-after": "2"})


class Revocations:
    """One gateway's view of the revocation list (see the module docstring)."""

    def __init__(self, state: StateBackend | None, max_age: float, *,
                 clock: Callable[[], float] = time.time, recheck: float = RECHECK_SECONDS) -> None:
        self.state = state
        self.max_age = max_age
        self.clock = clock
        self.recheck = recheck
        self._sessions: dict[str, float] = {}
        """Revoked sessions known here: sid -> until when the entry matters."""
        self._subjects: dict[str, tuple[float, float]] = {}
        """Revoked subjects known here: sub -> (revoked at, until when the entry matters)."""
        self._checked: dict[str, float] = {}
        """Sessions the shared list did not revoke: sid -> until when that answer is trusted."""
        self._subscription: Subscription | None = None
        self._started: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def ensure_started(self) -> None:
        """Subscribe to the announcements on first use (the gateway opens its state
        after the start-up hooks, so the first request does it, once)."""
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._subscribe())
        await asyncio.shield(self._started)

    async def _subscribe(self) -> None:
        if self.state is None:
            return
        try:
            self._subscription = await self.state.subscribe(CHANNEL, self._on_message)
        except Exception:  # StateUnavailable or a backend's own error: the recheck bounds the delay
            log.warning("oidc: cannot subscribe to session revocations on the shared state; other replicas' "
                        "revocations reach this one within %gs", self.recheck)

    async def close(self) -> None:
        if self._started is not None and not self._started.done():
            self._started.cancel()
        if self._subscription is not None:
            try:
                await self._subscription.close()
            except StateUnavailable:  # the state closed first (shutdown order)
                pass

    # --- the check ------------------------------------------------------------------------

    async def is_revoked(self, sid: str, subject: str, issued_at: float) -> bool:
        """Whether the session ``sid`` of ``subject``, signed in at ``issued_at``, was
        revoked. A dictionary lookup unless this process has not checked it lately."""
        now = self.clock()
        if self._known_revoked(sid, subject, issued_at, now):
            return True
        if self._checked.get(sid, 0.0) > now:
            return False
        await self.ensure_started()
        if self.state is None:
            return False
        try:
            session, subject_at = await asyncio.gather(self.state.get(SESSION_KEY + sid),
                                                       self.state.get(SUBJECT_KEY + subject))
        except StateUnavailable:
            if sid in self._checked:  # checked before the outage: keep serving that verdict
                return False
            raise RevocationsUnavailable() from None
        if session is not None:
            self._sessions[sid] = now + self.max_age
        if subject_at is not None:
            self._note_subject(subject, _float(subject_at))
        if self._known_revoked(sid, subject, issued_at, now):
            return True
        if len(self._checked) >= MAX_CHECKED:
            self._checked.clear()
        self._checked[sid] = now + self.recheck
        return False

    def _known_revoked(self, sid: str, subject: str, issued_at: float, now: float) -> bool:
        until = self._sessions.get(sid)
        if until is not None:
            if until > now:
                return True
            del self._sessions[sid]
        entry = self._subjects.get(subject)
        if entry is not None:
            if entry[1] <= now:
                del self._subjects[subject]
            elif issued_at <= entry[0]:
                return True
        return False

    def _note_subject(self, subject: str, at: float) -> None:
        known = self._subjects.get(subject)
        if known is None or known[0] < at:
            self._subjects[subject] = (at, at + self.max_age)

    # --- revoking -------------------------------------------------------------------------

    async def revoke_session(self, sid: str, expires_at: float | None = None) -> None:
        """Revoke one session until ``expires_at`` (default: the longest a session lives)."""
        now = self.clock()
        until = expires_at if expires_at is not None and expires_at > now else now + self.max_age
        self._sessions[sid] = until
        self._checked.pop(sid, None)
        await self._share(SESSION_KEY + sid, b"1", until - now, {"session": sid, "until": until})

    async def revoke_subject(self, subject: str) -> float:
        """Revoke every session of ``subject`` signed in until now; returns that time."""
        now = self.clock()
        self._note_subject(subject, now)
        await self._share(SUBJECT_KEY + subject, repr(now), self.max_age, {"subject": subject, "at": now})
        return now

    async def _share(self, key: str, value: bytes | str, ttl: float, message: dict[str, Any]) -> None:
        """Write the entry (every replica reads it) and announce it (every replica
        listening drops the session now). The entry must be written: a revocation that
        only this process knows is refused as failed (503)."""
        await self.ensure_started()
        if self.state is None:
            return
        try:
            await self.state.set(key, value, ttl=max(ttl, 1.0))
        except StateUnavailable:
            raise RevocationsUnavailable() from None
        try:
            await self.state.publish(CHANNEL, orjson.dumps(message))
        except StateUnavailable:  # written: the others learn it within the recheck interval
            log.warning("oidc: a revocation could not be announced (shared state down); other replicas see it "
                        "within %gs", self.recheck)

    async def _on_message(self, payload: bytes) -> None:
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(message, dict):
            return
        sid, subject = message.get("session"), message.get("subject")
        if isinstance(sid, str):
            until = _float(message.get("until"))
            self._sessions[sid] = until if until > self.clock() else self.clock() + self.max_age
            self._checked.pop(sid, None)
        elif isinstance(subject, str):
            self._note_subject(subject, _float(message.get("at")))


def _float(value: Any) -> float:
    try:
        return float(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError, AttributeError):
        return 0.0
