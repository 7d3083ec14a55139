"""Upstream credentials at run time: key pools, Azure AD tokens, rotated secret files.

- :class:`KeyPool`: a deployment with several API keys (``api_keys: [${K1}, ${K2},
  file:/run/secrets/k3]``) spreads requests over them round-robin, skips keys
  close to their rate limit (from the provider's headers, see
  :mod:`clasp_gateway.wire.ratelimits`), and benches a key that got a 429 (until the
  provider's reset) or a 401/403 (for ``key_pool.auth_cooldown`` seconds, with a
  log line naming the key's *reference*, never its value). The direct adapter
  retries a request on the next key at once when a key is refused (see
  ``providers.OpenAICompatible.open``): that is a same-deployment retry, before
  any fallback to another deployment, and invisible to the pipeline.
- :class:`AzureADTokens`: OAuth2 client-credentials tokens for Azure OpenAI
  (``azure_ad:`` on a deployment), cached, refreshed in the background at 80% of
  their lifetime, with one refresh in flight at a time.
- :class:`Credentials`: owns the pools and token sources of one worker, and
  re-reads ``file:`` secrets when their file changes (checked every
  ``key_pool.reread_interval`` seconds off the event loop), so rotating a
  mounted secret needs no restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from ..errors import UpstreamError
from ..redact import key_id, redact, register_secret
from ..types import Deployment, Secret
from ..validation import Field, Integer, Number, Reference, Section, String
from .ratelimits import RateLimitState

log = logging.getLogger("clasp.credentials")

KEY_REJECTED = (401, 403)
"""Statuses that mean "this key is not accepted" (bench it for ``auth_cooldown``)."""
KEY_FAILURES = (401, 403, 429)
"""Statuses after which another key of the same deployment may succeed."""

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"
_TOKEN_TIMEOUT = 15.0
"""Seconds a request to the Azure AD token endpoint may take."""


# --- configuration ---------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class KeyPoolSettings:
    """``key_pool:`` of a deployment: how its keys are chosen and benched."""

    min_remaining_requests: int = 2
    """A key whose provider says fewer requests than this are left is "near its
    limit": used only when every other key is too."""
    min_remaining_tokens: int = 1000
    """Same for tokens; a key is also near its limit when fewer tokens are left
    than the request is estimated to need (its JSON size / 4)."""
    rate_limit_cooldown: float = 5.0
    """Seconds a key is benched after a 429 that does not say when to retry."""
    auth_cooldown: float = 300.0
    """Seconds a key is benched after a 401/403 (or an exhausted quota)."""
    reread_interval: float = 5.0
    """How often ``file:`` secrets are checked for changes (seconds)."""


@dataclass(slots=True)
class AzureADConfig:
    """``azure_ad:`` of a deployment: OAuth2 client credentials for Azure OpenAI."""

    tenant_id: str
    client_id: str
    client_secret: Secret
    scope: str = DEFAULT_AZURE_SCOPE
    token_url: str = ""
    path: str = "azure_ad"
    """Where it is configured (``models.gpt-4o.0.azure_ad``), for error messages."""

    def __post_init__(self) -> None:
        if not self.token_url:
            self.token_url = f"{DEFAULT_AUTHORITY}/{self.tenant_id}/oauth2/v2.0/token"

    def __repr__(self) -> str:
        return f"AzureADConfig(tenant_id={self.tenant_id!r}, client_id={self.client_id!r}, client_secret={self.client_secret!r})"


@dataclass(slots=True)
class CredentialSettings:
    """The credential keys of one deployment, validated (see :func:`credentials_from`)."""

    key_pool: KeyPoolSettings = field(default_factory=KeyPoolSettings)
    azure_ad: AzureADConfig | None = None
    secret_headers: dict[str, Secret] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    """What is missing for a person to set (``set AZURE_CLIENT_SECRET``)."""


def _valid_key_pool(pool: KeyPoolSettings) -> KeyPoolSettings:
    # Checking files more often than every 50 ms would only cost CPU.
    return dataclasses.replace(pool, reread_interval=max(0.05, pool.reread_interval))


KEY_POOL = Section({
    "min_remaining_requests": Integer(0),
    "min_remaining_tokens": Integer(0),
    "rate_limit_cooldown": Number(0),
    "auth_cooldown": Number(0),
    "reread_interval": Number(0),
}, into=lambda **values: _valid_key_pool(KeyPoolSettings(**values)))
"""``key_pool:`` of a deployment (defaults: :class:`KeyPoolSettings`)."""

AZURE_AD = Section({
    "tenant_id": Field(String(non_empty=True), required="for Azure AD (Entra ID) client credentials"),
    "client_id": Field(String(non_empty=True), required="for Azure AD (Entra ID) client credentials"),
    "client_secret": Field(Reference(), required="as a reference such as `${AZURE_CLIENT_SECRET}`"),
    "scope": String(non_empty=True),
    "token_url": String(non_empty=True),
    "authority": String(non_empty=True),
})
"""``azure_ad:`` of a deployment (see :class:`AzureADConfig`)."""


def credentials_from(
    values: dict[str, Any],
    path: str,
    resolve: Callable[[Any], Secret],
    expand: Callable[[str], tuple[str, list[str]]],
) -> CredentialSettings:
    """The credential settings of a deployment whose keys were checked by the
    deployment schema (``key_pool`` parsed by :data:`KEY_POOL`, ``azure_ad`` by
    :data:`AZURE_AD`, ``secret_headers`` as references).

    ``resolve`` turns a reference into a :class:`Secret` (and registers it for
    redaction); ``expand`` expands ``${VAR}`` in non-secret strings. References
    that do not resolve become ``problems`` (what a person must set).
    """
    out = CredentialSettings()
    if isinstance(values.get("key_pool"), KeyPoolSettings):
        out.key_pool = values["key_pool"]
    for name, ref in (values.get("secret_headers") or {}).items():
        secret = resolve(ref)
        out.secret_headers[str(name).lower()] = secret
        if not secret.value:
            out.problems.append(f"{secret.hint or 'set it'} (used by secret header {name})")
    ad = values.get("azure_ad")
    if ad is not None:
        ad_path = f"{path}.azure_ad"
        texts: dict[str, str] = {}
        for name in ("tenant_id", "client_id", "scope", "token_url", "authority"):
            if ad.get(name) is None:
                continue
            expanded, missing = expand(ad[name])
            out.problems += [f"set {m} (used by {ad_path}.{name})" for m in missing]
            texts[name] = expanded
        secret = resolve(ad.get("client_secret"))
        if ad.get("client_secret") is not None and not secret.value:
            out.problems.append(f"{secret.hint or 'set it'} (used by {ad_path}.client_secret)")
        authority = texts.get("authority", DEFAULT_AUTHORITY).rstrip("/")
        tenant = texts.get("tenant_id", "")
        out.azure_ad = AzureADConfig(
            tenant_id=tenant,
            client_id=texts.get("client_id", ""),
            client_secret=secret,
            scope=texts.get("scope") or DEFAULT_AZURE_SCOPE,
            token_url=texts.get("token_url") or f"{authority}/{tenant}/oauth2/v2.0/token",
            path=ad_path,
        )
    return out


def credential_settings(deployment: Deployment) -> CredentialSettings:
    """The validated credential settings of ``deployment`` (defaults if none)."""
    found = deployment.settings.get("credentials")
    return found if isinstance(found, CredentialSettings) else _DEFAULT_SETTINGS


_DEFAULT_SETTINGS = CredentialSettings()


# --- key pools --------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class KeySlot:
    """One API key of a pool and what is known about its health."""

    secret: Secret
    index: int
    benched_until: float = 0.0
    bench_reason: str = ""
    limits: RateLimitState | None = None
    seen_value: str | None = None
    """The value the health below refers to: a rotated key starts afresh."""
    no_access: str = ""
    """Why a permission check (:mod:`clasp_gateway.wire.permissions`) left this key out of
    rotation ("" while it is in): the provider refused it access to the model."""

    @property
    def label(self) -> str:
        """How logs and status pages name the key: its reference (``${OPENAI_API_KEY}``,
        ``file:...``), or for a key written in the file its position in the pool and a
        short non-reversible id (:func:`~clasp_gateway.redact.key_id`); never any
        part of its value."""
        described = self.secret.describe()
        if described == "<literal>":
            return f"#{self.index + 1} (literal, id {key_id(self.secret.value)})"
        return described

    @property
    def value(self) -> str | None:
        return self.secret.value


class KeyPool:
    """The API keys of one deployment, chosen round-robin among the healthy ones.

    One pool per deployment per worker; all methods are synchronous and run on
    the worker's event loop, so no locking is needed.
    """

    def __init__(self, deployment_id: str, secrets: Iterable[Secret], settings: KeyPoolSettings | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.deployment_id = deployment_id
        self.clock = clock
        """Seconds for benches and limit windows (tests move a fake one instead of sleeping)."""
        self.settings = settings or KeyPoolSettings()
        self.slots = [KeySlot(s, i, seen_value=s.value) for i, s in enumerate(secrets)]
        self._cursor = 0
        self.always_track = False
        """Parse rate-limit headers even with one key (a routing plugin reads the headroom)."""

    @property
    def tracks_limits(self) -> bool:
        """Whether response headers are worth parsing: with one key there is no choice
        of key, unless a router wants the headroom (:meth:`headroom`)."""
        return self.always_track or len(self.slots) > 1

    def headroom(self) -> float | None:
        """The share (0..1) of requests left in the current rate-limit windows over the
        keys that reported a request limit, or ``None`` when none did (the provider sends
        no such headers, or nothing was parsed yet)."""
        now = self.clock()
        left = total = 0
        for slot in self.slots:
            limits = slot.limits
            if limits is None or not limits.requests_limit:
                continue
            remaining = limits.remaining("requests", now)
            total += limits.requests_limit
            left += limits.requests_limit if remaining is None else max(0, min(remaining, limits.requests_limit))
        return None if total == 0 else left / total

    def _near_limit(self, slot: KeySlot, need_tokens: int, now: float) -> bool:
        limits = slot.limits
        if limits is None:
            return False
        requests = limits.remaining("requests", now)
        if requests is not None and requests < self.settings.min_remaining_requests:
            return True
        tokens = limits.remaining("tokens", now)
        return tokens is not None and tokens < max(self.settings.min_remaining_tokens, need_tokens)

    def pick(self, need_tokens: int = 0, exclude: Iterable[KeySlot] = ()) -> KeySlot | None:
        """The key for the next request, or ``None`` when the pool has no usable key.

        In order of preference: a healthy key with room (round-robin), a healthy key
        near its limit (the one with the most requests left), and, when every key is
        benched, the one that comes back first (the provider then decides).
        """
        slots = self.slots
        if len(slots) == 1 and not exclude:  # the common case: nothing to choose
            only = slots[0]
            return only if only.secret.value else None
        excluded = set(map(id, exclude))
        candidates = [s for s in slots if s.value and id(s) not in excluded]
        if not candidates:
            return None
        # Keys a permission check found without access are out of rotation. When
        # every key is out, routing skips the deployment; a caller that gets here
        # anyway (e.g. the probe of that very key) gets the keys, not no key.
        in_rotation = [s for s in candidates if not s.no_access]
        if in_rotation and len(in_rotation) < len(candidates):
            excluded.update(id(s) for s in candidates if s.no_access)
            candidates = in_rotation
        now = self.clock()
        n = len(slots)
        chosen: KeySlot | None = None
        for step in range(n):
            slot = self.slots[(self._cursor + step) % n]
            if id(slot) in excluded or not slot.value or slot.benched_until > now:
                continue
            if not self._near_limit(slot, need_tokens, now):
                chosen = slot
                break
        if chosen is None:
            healthy = [s for s in candidates if s.benched_until <= now]
            if healthy:
                chosen = max(healthy, key=lambda s: self._headroom(s, now))
            else:
                chosen = min(candidates, key=lambda s: s.benched_until)
        self._cursor = (chosen.index + 1) % n
        if chosen.limits is not None:
            chosen.limits.consume(1, need_tokens)
        return chosen

    @staticmethod
    def _headroom(slot: KeySlot, now: float) -> float:
        limits = slot.limits
        if limits is None:
            return float("inf")
        left = limits.remaining("requests", now)
        return float("inf") if left is None else float(left)

    def has_alternative(self, exclude: Iterable[KeySlot]) -> bool:
        """Whether a key not in ``exclude`` is usable now (set, not benched)."""
        excluded = set(map(id, exclude))
        now = self.clock()
        return any(
            s.value and not s.no_access and id(s) not in excluded and s.benched_until <= now for s in self.slots
        )

    def soonest_available(self) -> float | None:
        """Seconds until some key of the pool is out of the bench (0 if one is usable)."""
        now = self.clock()
        usable = [s for s in self.slots if s.value and not s.no_access] or [s for s in self.slots if s.value]
        waits = [max(0.0, s.benched_until - now) for s in usable]
        return min(waits) if waits else None

    def set_access(self, slot: KeySlot, no_access: str) -> None:
        """A permission check's verdict on ``slot``: ``no_access`` says why the provider
        refuses it the model (the key leaves rotation), ``""`` that it works (it comes
        back, off the bench a refusal put it on: the probe just proved it)."""
        if not no_access and slot.no_access and slot.bench_reason.startswith("rejected"):
            slot.benched_until = 0.0
            slot.bench_reason = ""
        slot.no_access = no_access

    def observe(self, slot: KeySlot, limits: RateLimitState) -> None:
        """A response with an acceptable status: the key works (off the bench, if it
        was used while benched) and here are its limits."""
        slot.benched_until = 0.0
        slot.bench_reason = ""
        if not limits.empty:
            slot.limits = limits

    def reject(self, slot: KeySlot, status: int, limits: RateLimitState, *, error_code: str | None = None) -> float:
        """The provider refused ``slot`` with ``status``: bench it and say for how long.

        429 benches until the provider's ``retry-after`` or exhausted window resets
        (``rate_limit_cooldown`` when it says nothing); 401/403, and a 429 for an
        exhausted quota (``insufficient_quota``: billing, not rate), bench for
        ``auth_cooldown`` with a warning that names the key's reference.
        """
        now = self.clock()
        if not limits.empty:
            slot.limits = limits
        if status in KEY_REJECTED or error_code == "insufficient_quota":
            seconds = self.settings.auth_cooldown
            reason = "quota exhausted" if status == 429 else f"rejected ({status})"
            if slot.benched_until <= now or slot.bench_reason != reason:
                log.warning(
                    "deployment %s: API key %s was %s by the provider; not using it for %.0fs "
                    "(fix or rotate it; `clasp check` tests every key)",
                    self.deployment_id, slot.label, reason, seconds,
                )
        else:
            wait = limits.wait(now)
            seconds = self.settings.rate_limit_cooldown if wait is None else wait
            reason = "rate-limited"
            log.info("deployment %s: API key %s is rate-limited for %.1fs", self.deployment_id, slot.label, seconds)
        slot.benched_until = max(slot.benched_until, now + seconds) if reason == slot.bench_reason else now + seconds
        slot.bench_reason = reason
        return seconds

    def refresh(self) -> None:
        """Forget the health of keys whose value changed (a rotated secret file)."""
        for slot in self.slots:
            if slot.secret.value != slot.seen_value:
                slot.seen_value = slot.secret.value
                slot.benched_until = 0.0
                slot.bench_reason = ""
                slot.limits = None
                slot.no_access = ""  # a new key: in rotation until its own probe says otherwise
                if slot.secret.value:
                    log.info("deployment %s: API key %s changed; using the new value", self.deployment_id, slot.label)

    def status(self) -> list[dict[str, Any]]:
        """The pool for a person (admin pages, debugging): references only."""
        now = self.clock()
        out = []
        for slot in self.slots:
            limits = slot.limits
            out.append({
                "key": slot.label,
                "set": bool(slot.value),
                "benched_for": round(max(0.0, slot.benched_until - now), 1),
                "reason": slot.bench_reason if slot.benched_until > now else "",
                "no_access": slot.no_access,
                "requests_remaining": limits.remaining("requests", now) if limits else None,
                "tokens_remaining": limits.remaining("tokens", now) if limits else None,
            })
        return out


# --- Azure AD tokens -------------------------------------------------------------------------


class RefreshingToken:
    """An access token renewed before it expires, one refresh at a time.

    The shared part of every token-based credential (Azure AD client credentials in the
    core; a provider plugin's OAuth tokens, e.g. Google service accounts): a subclass
    implements :meth:`fetch` (a new token and its lifetime in seconds; raise
    :class:`UpstreamError` saying why not) and this class decides when to call it:

    - the cached token is returned as is until 80% of its lifetime; then the first
      request starts one background refresh and goes on with the current token, so
      nobody waits;
    - without a usable token (none yet, or past its safe end: the lifetime less 10%, at
      most a minute, for clock skew and slow calls) callers wait on the one refresh in
      flight;
    - a failure is remembered for ``failure_backoff`` seconds, so a broken token
      endpoint sees one attempt per few seconds, not one per client request.

    Every token fetched is registered as a secret (never logged). The clock is
    injectable (``monotonic``): tests move it instead of sleeping.
    """

    failure_backoff = 2.0

    def __init__(self, label: str, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self._monotonic = monotonic
        self._token: str | None = None
        self._refresh_at = 0.0
        self._usable_until = 0.0
        self._inflight: asyncio.Task[str] | None = None
        self._failure: UpstreamError | None = None
        self._failed_until = 0.0
        self.refreshes = 0
        """Tokens fetched so far."""

    async def fetch(self) -> tuple[str, float]:
        """A new token and its lifetime in seconds (raise UpstreamError if none)."""
        raise NotImplementedError

    def describe(self, lifetime: float) -> str:
        """The log line for a new token (never the token)."""
        return f"{self.label}: got an access token (valid {lifetime:.0f}s)"

    async def token(self) -> str:
        """A valid access token (raises :class:`UpstreamError` saying why not)."""
        now = self._monotonic()
        token = self._token
        if token is not None and now < self._refresh_at:
            return token
        if token is not None and now < self._usable_until:
            if self._failure is None or now >= self._failed_until:
                self._start_refresh()
            return token
        if self._failure is not None and now < self._failed_until:
            raise _copy(self._failure)
        return await asyncio.shield(self._start_refresh())

    def invalidate(self) -> None:
        """Drop the cached token (the provider refused it): the next call fetches another."""
        self._token = None

    def forget_failure(self) -> None:
        """Try again at the next call, whatever the back-off (e.g. a rotated secret)."""
        self._token, self._failure = None, None

    async def close(self) -> None:
        """Cancel a refresh in flight."""
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _start_refresh(self) -> asyncio.Task[str]:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self._refresh())
            # A background refresh nobody awaits must not log "exception never retrieved".
            self._inflight.add_done_callback(lambda t: t.cancelled() or t.exception())
        return self._inflight

    async def _refresh(self) -> str:
        started = self._monotonic()
        try:
            token, lifetime = await self.fetch()
        except UpstreamError as exc:
            self._failure = exc
            self._failed_until = self._monotonic() + self.failure_backoff
            log.warning("%s", exc.message)
            raise _copy(exc) from None
        register_secret(token)
        self._token = token
        self._refresh_at = started + 0.8 * lifetime
        self._usable_until = started + lifetime - min(60.0, 0.1 * lifetime)
        self._failure = None
        self.refreshes += 1
        log.info("%s", self.describe(lifetime))
        return token


def _copy(exc: UpstreamError) -> UpstreamError:
    """A fresh exception per waiting caller (one raised object must not be shared)."""
    return UpstreamError(exc.message, upstream_status=exc.upstream_status, deployment=exc.deployment, kind=exc.kind)


class AzureADTokens(RefreshingToken):
    """Client-credentials access tokens for one deployment (:class:`RefreshingToken`
    decides when to fetch; a rotated client secret file drops the cached token)."""

    def __init__(
        self, deployment_id: str, config: AzureADConfig, session: Callable[[], aiohttp.ClientSession],
        *, monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(f"deployment {deployment_id}", monotonic=monotonic)
        self.deployment_id = deployment_id
        self.config = config
        self._session = session
        self._secret_seen = config.client_secret.value

    def describe(self, lifetime: float) -> str:
        return f"deployment {self.deployment_id}: got an Azure AD token (valid {lifetime:.0f}s)"

    async def token(self) -> str:
        """A valid access token (raises :class:`UpstreamError` naming the config key)."""
        if self.config.client_secret.value != self._secret_seen:  # rotated secret file
            self._secret_seen = self.config.client_secret.value
            self.forget_failure()
        return await super().token()

    def _error(self, what: str, status: int = 0) -> UpstreamError:
        cfg = self.config
        return UpstreamError(
            f"deployment {self.deployment_id}: cannot get an Azure AD token for {cfg.path} "
            f"(tenant_id {cfg.tenant_id!r}, client_id {cfg.client_id!r}, client_secret "
            f"{cfg.client_secret.describe()}): {redact(what)}",
            upstream_status=0 if status < 400 else 502,
            deployment=self.deployment_id,
            kind="credentials",
        )

    async def fetch(self) -> tuple[str, float]:
        cfg = self.config
        secret = cfg.client_secret.value
        if not secret:
            raise self._error(f"{cfg.client_secret.hint or 'the client secret is not set'}")
        form = {
            "grant_type": "client_credentials",
            "client_id": cfg.client_id,
            "client_secret": secret,
            "scope": cfg.scope,
        }
        try:
            async with self._session().post(
                cfg.token_url, data=form, headers={"accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=_TOKEN_TIMEOUT),
            ) as response:
                status = response.status
                body = await response.content.read(64 * 1024)
        except TimeoutError:
            raise self._error(f"the token endpoint {cfg.token_url} did not answer within {_TOKEN_TIMEOUT:.0f}s") from None
        except aiohttp.ClientError as exc:
            raise self._error(f"cannot reach the token endpoint {cfg.token_url} ({type(exc).__name__}); "
                              f"check {cfg.path}.token_url / tenant_id and the network") from None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if status >= 400 or not isinstance(data, dict) or not data.get("access_token"):
            if isinstance(data, dict) and data.get("error"):
                description = str(data.get("error_description") or "").strip().splitlines()
                detail = f"{data['error']}: {description[0]}" if description else str(data["error"])
            elif status >= 400:
                detail = " ".join(body.decode("utf-8", "replace").split())[:200] or "(empty body)"
            else:
                detail = "the answer has no access_token"
            raise self._error(f"the token endpoint answered {status}: {detail}", status)
        try:
            lifetime = float(data.get("expires_in") or 3600)
        except (TypeError, ValueError):
            lifetime = 3600.0
        return str(data["access_token"]), max(1.0, lifetime)


# --- the registry of one worker --------------------------------------------------------------


class Credentials:
    """Key pools and token sources of one worker, and the secret-file watcher."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, tuple[str, ...]], KeyPool] = {}
        self._by_object: dict[int, tuple[Deployment, KeyPool]] = {}
        self._tokens: dict[tuple[str, str, str], AzureADTokens] = {}
        self._session: aiohttp.ClientSession | None = None
        self._own_session = False
        self._watcher: asyncio.Task[None] | None = None
        self._files: dict[str, list[Secret]] = {}
        self._stamps: dict[str, tuple[int, int, int] | None] = {}
        self._interval = KeyPoolSettings().reread_interval
        self.track_limits = False
        """Parse rate-limit headers for every pool (set by :meth:`Providers.track_rate_limits`)."""

    def pool(self, deployment: Deployment) -> KeyPool:
        """The key pool of ``deployment`` (created on first use).

        Pools are keyed by deployment id and key references, so a copy of a
        deployment restricted to one key (``clasp check``) gets its own pool.
        """
        cached = self._by_object.get(id(deployment))
        if cached is not None and cached[0] is deployment:  # the per-request fast path
            return cached[1]
        ident = (deployment.id, tuple(k.ref for k in deployment.keys))
        found = self._pools.get(ident)
        if found is None:
            found = KeyPool(deployment.id, deployment.keys, credential_settings(deployment).key_pool)
            found.always_track = self.track_limits
            self._pools[ident] = found
        if len(self._by_object) < 10_000:
            self._by_object[id(deployment)] = (deployment, found)
        return found

    def track_all_limits(self) -> None:
        """Parse rate-limit headers for every pool, existing and future."""
        self.track_limits = True
        for pool in self._pools.values():
            pool.always_track = True

    def token_source(self, deployment: Deployment) -> AzureADTokens | None:
        """The Azure AD token source of ``deployment``, or ``None`` without ``azure_ad``."""
        config = credential_settings(deployment).azure_ad
        if config is None:
            return None
        ident = (deployment.id, config.token_url, config.client_id)
        found = self._tokens.get(ident)
        if found is None:
            found = AzureADTokens(deployment.id, config, self._get_session)
            self._tokens[ident] = found
        return found

    async def bearer_token(self, deployment: Deployment) -> str | None:
        """The Azure AD access token to send for ``deployment``, if it uses one."""
        source = self.token_source(deployment)
        return None if source is None else await source.token()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Only when start() was not given the adapter's pooled session (one, not per request).
            self._session = aiohttp.ClientSession()
            self._own_session = True
        return self._session

    async def start(self, deployments: Iterable[Deployment], session: aiohttp.ClientSession | None = None) -> None:
        """Build the pools and start watching ``file:`` secrets (if any)."""
        if session is not None:
            self._session, self._own_session = session, False
        intervals: list[float] = []
        for dep in deployments:
            self.pool(dep)
            settings = credential_settings(dep)
            secrets = list(dep.keys) + list(settings.secret_headers.values())
            if settings.azure_ad is not None:
                secrets.append(settings.azure_ad.client_secret)
            for secret in secrets:
                if secret.ref.startswith("file:"):
                    self._files.setdefault(secret.ref[5:], []).append(secret)
                    intervals.append(settings.key_pool.reread_interval)
        if self._files and self._watcher is None:
            self._interval = min(intervals)
            self._stamps = await asyncio.to_thread(self._stat_all)
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        for source in self._tokens.values():
            await source.close()
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    def status(self) -> dict[str, list[dict[str, Any]]]:
        """Every pool's key health, by deployment id (references only)."""
        return {ident[0]: pool.status() for ident, pool in self._pools.items()}

    # --- secret files ---------------------------------------------------------------------

    @staticmethod
    def _stamp(path: str) -> tuple[int, int, int] | None:
        try:
            st = os.stat(path)  # follows symlinks: Kubernetes swaps a ..data link
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _stat_all(self) -> dict[str, tuple[int, int, int] | None]:
        return {path: self._stamp(path) for path in self._files}

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check_files()
            except Exception:  # the watcher must survive anything a file system does
                log.exception("checking secret files failed")

    async def check_files(self) -> list[str]:
        """Re-read the secret files whose stamp changed; return their paths."""
        stamps = await asyncio.to_thread(self._stat_all)
        changed = [p for p, stamp in stamps.items() if stamp != self._stamps.get(p)]
        self._stamps = stamps
        if not changed:
            return []
        values = await asyncio.to_thread(self._read_files, changed)
        updated: list[str] = []
        for path, value in values.items():
            for secret in self._files[path]:
                if secret.value != value:
                    register_secret(value)
                    secret.value = value
                    if path not in updated:
                        updated.append(path)
        if updated:
            log.info("secret file(s) changed: %s", ", ".join(f"file:{p}" for p in updated))
            for pool in self._pools.values():
                pool.refresh()
        return updated

    @staticmethod
    def _read_files(paths: list[str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for path in paths:
            try:
                out[path] = Path(path).read_text().strip() or None
            except OSError:
                out[path] = None
        return out
