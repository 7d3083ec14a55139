"""Permission checks: prove each upstream credential can reach its model before
requests are routed to it.

A key that cannot use its model (revoked, a project key without access to that
model, a deployment name that does not exist) would otherwise be found by a
user's request: one refused attempt per key per ``key_pool.auth_cooldown``, and
a wasted fallback step each time. So, at start-up (in the background: serving
does not wait) and every ``permissions.interval``, each credential is probed the
way ``clasp check`` probes it (:mod:`clasp_gateway.wire.probe`): each key of an
``api_keys`` pool on its own, else the deployment as a whole (its one key, its
Azure AD identity, a plugin adapter's own credentials), with a 1-token completion
through the deployment's own adapter. Not with ``GET /models``, which ``clasp
check`` uses for reachability: a listing proves neither way that a key may *call*
the model (OpenAI's restricted keys list models they get a 403 for, and may call
models while refused the listing).

Only a *definite* refusal changes anything: 401, 403 or 404 to the probe's call.
Such a key leaves rotation (:attr:`~clasp_gateway.wire.credentials.KeySlot.no_access`,
skipped by ``KeyPool.pick``) with a warning that names it by its label (its
reference, or a literal key's position and non-reversible id), never by any part
of its value. A deployment none of whose credentials has access is *unavailable*:
:class:`~clasp_gateway.pipeline.Gateway` skips it like an open circuit breaker,
without an upstream call, and records why (a ``kind: "skip"`` event, and
:data:`UNAVAILABLE_KEY` in ``ctx.state``). A timeout, a refused connection, a 5xx,
a 429 or any other answer proves nothing: the credential stays as it was. A
credential left out, or whose last probe proved nothing, is probed again every
``permissions.recheck_interval`` and comes back as soon as a probe succeeds.

Requests that arrive before the first round finished are served as before (a
refused key is benched and the next one tried, see :mod:`.credentials`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import Config, ConfigError
from ..errors import ConfigurationError, GatewayError, UpstreamError
from ..redact import redact
from ..types import Deployment, RequestContext
from ..validation import Boolean, Duration, Integer, Section
from .credentials import KeySlot, credential_settings

if TYPE_CHECKING:
    from .providers import Providers

log = logging.getLogger("clasp.permissions")

__all__ = [
    "DEFAULT_ENV", "NO_ACCESS", "PERMISSIONS", "UNAVAILABLE_KEY", "Credential", "PermissionChecker",
    "PermissionSettings", "permission_settings",
]

NO_ACCESS = (401, 403, 404)
"""Answers to a probe that mean "this credential cannot use this model": not
authenticated, not permitted, or no such model (or deployment) for it."""

UNAVAILABLE_KEY = "clasp.unavailable"
"""``ctx.state`` key: ``{deployment id: why}`` for the candidates a request skipped
because none of their credentials has access to the model."""

DEFAULT_ENV = "CLASP_PERMISSION_PROBES"
"""Environment variable that sets the default of ``permissions.enabled`` when the
file does not say (``off``/``0``/``false``). The test suite sets it, so fake
upstreams only see the requests each test sends."""


@dataclass(slots=True, frozen=True)
class PermissionSettings:
    """``permissions:`` (core). Every probe is a small upstream call per credential."""

    enabled: bool = True
    """Probe credentials at all (``false``: never; keys are only benched when refused)."""
    probe_at_startup: bool = True
    """Probe every credential when the gateway starts (in the background)."""
    interval: float = 900.0
    """Seconds between probes of every credential (0: none after start-up)."""
    recheck_interval: float = 60.0
    """Seconds between probes of a credential left out of rotation, or whose last
    probe proved nothing (a timeout, a 5xx): how soon a fixed key comes back."""
    timeout: float = 10.0
    """Longest one credential's probe may take; longer proves nothing."""
    concurrency: int = 8
    """Probes in flight at once (start-up with many keys stays gentle on providers)."""


PERMISSIONS = Section({
    "enabled": Boolean(),
    "probe_at_startup": Boolean(),
    "interval": Duration(0, 7 * 86400.0),
    "recheck_interval": Duration(1, 86400.0),
    "timeout": Duration(0.1, 300.0),
    "concurrency": Integer(1, 64),
}, into=PermissionSettings)
"""``permissions:`` (defaults: :class:`PermissionSettings`)."""


def _default_enabled() -> bool:
    return os.environ.get(DEFAULT_ENV, "").strip().lower() not in ("0", "off", "false", "no")


def permission_settings(config: Config) -> PermissionSettings:
    """The validated ``permissions:`` section; :class:`ConfigError` lists its problems."""
    raw = config.raw.get("permissions")
    problems: list[str] = []
    settings = PERMISSIONS.parse(raw, "permissions", problems)
    if problems:
        raise ConfigError(config.source, problems)
    if not (isinstance(raw, dict) and raw.get("enabled") is not None) and not _default_enabled():
        settings = dataclasses.replace(settings, enabled=False)
    assert isinstance(settings, PermissionSettings)
    return settings


@dataclass(slots=True, eq=False)
class Credential:
    """One credential of one deployment, and what its last probe found."""

    deployment: Deployment
    """The deployment requests use."""
    target: Deployment
    """What is probed: the deployment itself, or a copy restricted to this key."""
    slot: KeySlot | None
    """The key's slot in the deployment's live pool (``None``: a keyless deployment,
    an Azure AD identity or a plugin adapter's credentials, probed as a whole)."""
    label: str
    """How logs and status pages name it: never any part of a secret."""
    state: str = "unchecked"
    """"unchecked", "ok", "no_access" or "inconclusive" (the last probe proved nothing)."""
    reason: str = ""
    status: int = 0
    """The status of the refusal (``no_access``), for the error of a skipped deployment."""
    checked_at: float | None = None
    """When it was last probed (the checker's clock)."""
    probed_value: str | None = None
    """The key value that probe used: a rotated key is probed again at once."""

    @property
    def value(self) -> str | None:
        """The key's current value (``None`` when unset; keyless credentials: ``""``)."""
        return self.slot.value if self.slot is not None else ""

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "credential": self.label,
            "access": self.state if self.value is not None else "unset",
            "reason": self.reason or None,
            "checked_s_ago": None if self.checked_at is None else round(now - self.checked_at, 1),
        }


@dataclass(slots=True, frozen=True)
class Verdict:
    """What one probe proved."""

    state: str  # "ok", "no_access" or "inconclusive"
    reason: str = ""
    status: int = 0


class PermissionChecker:
    """Probes every credential of one gateway, at start-up and periodically, and keeps
    the ones without access out of rotation (see the module docstring).

    ``clock`` is what "periodically" is measured with (``time.monotonic``); tests give
    their own and call :meth:`step` directly instead of waiting for the background task.
    """

    def __init__(
        self, config: Config, providers: Providers, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = permission_settings(config)
        self.providers = providers
        self.clock = clock
        self.blocked: dict[str, Credential] = {}
        """Deployment id -> one of its credentials (the last refused), for deployments
        none of whose credentials has access. Empty in the common case: the pipeline
        looks at it once per candidate, only when it is not."""
        self.rounds = 0
        """Rounds of probes done (``step`` calls that probed something)."""
        self._deployments = [d for d in config.deployments() if not d.settings.get("_problems")]
        self._credentials: dict[str, list[Credential]] | None = None
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background probes (nothing when ``permissions.enabled`` is false).
        Called by ``Gateway.start`` once the providers are ready; never waits."""
        if self.settings.enabled and self._task is None and self._deployments:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="clasp-permissions")

    async def close(self) -> None:
        """Stop probing (a probe in flight is cancelled)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        s = self.settings
        pause = min(x for x in (s.interval, s.recheck_interval) if x > 0)
        if not s.probe_at_startup:
            if s.interval <= 0:
                return
            await asyncio.sleep(s.interval)
            # Nothing was probed at start-up: the first periodic round probes everything.
        while True:
            try:
                await self.step()
            except Exception:  # the loop must survive anything one round throws
                log.exception("permission check round failed")
            await asyncio.sleep(pause)

    # --- credentials --------------------------------------------------------------------------

    def credentials(self) -> dict[str, list[Credential]]:
        """Every probed credential, by deployment id (built on first use)."""
        if self._credentials is None:
            self._credentials = {d.id: self._credentials_of(d) for d in self._deployments}
        return self._credentials

    def _credentials_of(self, dep: Deployment) -> list[Credential]:
        pool = self.providers.credentials.pool(dep)
        if len(pool.slots) > 1:
            # Each key on its own: a bad key hides behind good ones at run time. The
            # copy is made once (its own one-key pool), as ``clasp check`` does per run.
            out = []
            for slot in pool.slots:
                target = dataclasses.replace(dep, keys=[slot.secret])
                target.settings = dict(dep.settings)
                out.append(Credential(dep, target, slot, f"API key {slot.label}"))
            return out
        if pool.slots:
            return [Credential(dep, dep, pool.slots[0], f"API key {pool.slots[0].label}")]
        ad = credential_settings(dep).azure_ad
        if ad is not None:
            label = f"Azure AD identity (client_id {ad.client_id!r}, client_secret {ad.client_secret.describe()})"
        elif dep.provider in self.providers.extra:
            label = f"the credentials of provider plugin {dep.provider!r}"
        else:
            label = "the deployment (no API key)"
        return [Credential(dep, dep, None, label)]

    def _due(self, credential: Credential, now: float) -> bool:
        value = credential.value
        if value is None:
            return False  # unset: nothing to probe (the pool skips it anyway)
        if credential.checked_at is None or credential.probed_value != value:
            return True
        age = now - credential.checked_at
        if credential.state in ("no_access", "inconclusive"):
            return age >= self.settings.recheck_interval
        return self.settings.interval > 0 and age >= self.settings.interval

    # --- one round ----------------------------------------------------------------------------

    async def step(self) -> list[Credential]:
        """Probe every credential that is due, concurrently (``permissions.concurrency``
        at a time), and apply the verdicts. Returns the credentials probed."""
        now = self.clock()
        due = [c for creds in self.credentials().values() for c in creds if self._due(c, now)]
        if not due:
            return []
        limit = asyncio.Semaphore(self.settings.concurrency)

        async def one(credential: Credential) -> Verdict:
            async with limit:
                return await self.probe(credential)

        verdicts = await asyncio.gather(*(one(c) for c in due))
        now = self.clock()
        for credential, verdict in zip(due, verdicts, strict=True):
            self._apply(credential, verdict, now)
        for dep in {c.deployment.id: c.deployment for c in due}.values():
            self._update_deployment(dep)
        self.rounds += 1
        return due

    async def probe(self, credential: Credential) -> Verdict:
        """Probe one credential now (within ``permissions.timeout``); never raises."""
        value = credential.value
        credential.probed_value = value
        try:
            async with asyncio.timeout(self.settings.timeout):
                return await self._call(credential.target)
        except TimeoutError:
            return Verdict("inconclusive", f"no answer within {self.settings.timeout:g}s")
        except Exception as exc:  # an adapter's bug must not stop the checks
            log.debug("permission probe of %s failed", credential.deployment.id, exc_info=True)
            return Verdict("inconclusive", f"the probe failed ({type(exc).__name__})")

    async def _call(self, target: Deployment) -> Verdict:
        """A 1-token completion through the deployment's own adapter."""
        body = {"model": target.model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        chunks = self.providers.open(target, body, stream=False)
        try:
            async for _ in chunks:
                pass
        except UpstreamError as exc:
            reason = self._reason(target, exc)
            if exc.kind == "http" and exc.upstream_status in NO_ACCESS:
                return Verdict("no_access", reason, exc.upstream_status)
            return Verdict("inconclusive", reason)
        except ConfigurationError as exc:
            return Verdict("inconclusive", self._reason(target, exc))
        except GatewayError as exc:
            return Verdict("inconclusive", self._reason(target, exc))
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        return Verdict("ok")

    @staticmethod
    def _reason(target: Deployment, error: GatewayError) -> str:
        text = redact(error.message).removeprefix(f"{target.id}: ")
        return text if len(text) <= 300 else text[:297] + "..."

    # --- verdicts -----------------------------------------------------------------------------

    def _apply(self, credential: Credential, verdict: Verdict, now: float) -> None:
        dep = credential.deployment
        before = credential.state
        credential.checked_at = now
        if verdict.state == "inconclusive":
            # Proves nothing: a key out stays out, a key in stays in.
            if before != "no_access":
                credential.state = "inconclusive"
            credential.reason = verdict.reason
            if before not in ("inconclusive", "no_access"):
                log.info("deployment %s: the permission probe of %s proved nothing (%s); nothing changes",
                         dep.id, credential.label, verdict.reason)
            return
        credential.state, credential.reason, credential.status = verdict.state, verdict.reason, verdict.status
        if credential.slot is not None:
            self.providers.credentials.pool(dep).set_access(
                credential.slot, (verdict.reason or "no access") if verdict.state == "no_access" else "")
        if verdict.state == "no_access" and before != "no_access":
            log.warning(
                "deployment %s: %s has no access to model %s (%s); left out of rotation, probed again every %gs",
                dep.id, credential.label, dep.model, verdict.reason, self.settings.recheck_interval,
            )
        elif verdict.state == "ok" and before == "no_access":
            log.warning("deployment %s: %s has access to model %s again; back in rotation",
                        dep.id, credential.label, dep.model)

    def _update_deployment(self, dep: Deployment) -> None:
        creds = [c for c in self.credentials().get(dep.id, ()) if c.value is not None]
        refused = [c for c in creds if c.state == "no_access"]
        if creds and len(refused) == len(creds):
            if dep.id not in self.blocked:
                log.warning("deployment %s is unavailable: none of its credentials has access to model %s; "
                            "requests skip it until a probe succeeds", dep.id, dep.model)
            self.blocked[dep.id] = refused[-1]
        elif self.blocked.pop(dep.id, None) is not None:
            log.warning("deployment %s is available again", dep.id)

    # --- routing ------------------------------------------------------------------------------

    def unavailable(self, deployment: Deployment) -> UpstreamError | None:
        """The error of skipping ``deployment`` (none of its credentials has access),
        or ``None`` when it may be tried. Call it only when :attr:`blocked` is not empty."""
        refused = self.blocked.get(deployment.id)
        if refused is None:
            return None
        if refused.slot is not None and any(
            c.slot is not None and c.slot.value and not c.slot.no_access for c in self.credentials()[deployment.id]
        ):
            # A key changed since (a rotated secret file): it is used at once, before its probe.
            del self.blocked[deployment.id]
            return None
        return UpstreamError(
            f"{deployment.id}: skipped: none of its credentials has access to model {deployment.model} "
            f"(the provider answered {refused.status} to the permission check); "
            f"it is checked again every {self.settings.recheck_interval:g}s",
            upstream_status=refused.status, deployment=deployment.id,
        )

    @staticmethod
    def skip_event(ctx: RequestContext, deployment: Deployment, error: UpstreamError) -> dict[str, Any]:
        """Note the skip in ``ctx.state`` (:data:`UNAVAILABLE_KEY`) and return its
        ``kind: "skip"`` event (the shape clasp-fallback records for an open breaker)."""
        reason = error.message.removeprefix(f"{deployment.id}: skipped: ")
        ctx.state.setdefault(UNAVAILABLE_KEY, {})[deployment.id] = reason
        return {
            "kind": "skip",
            "request_id": ctx.request_id,
            "public_model": ctx.public_model,
            "deployment": deployment.id,
            "provider": deployment.provider,
            "model": deployment.model,
            "reason": reason,
            "time": time.time(),
        }

    # --- status -------------------------------------------------------------------------------

    def status(self, deployment: Deployment) -> dict[str, Any] | None:
        """``deployment``'s access for a status page (labels only, never a secret), or
        ``None`` when permission checks are off."""
        if not self.settings.enabled:
            return None
        now = self.clock()
        refused = self.blocked.get(deployment.id)
        return {
            "available": refused is None,
            "reason": None if refused is None else
            f"none of its credentials has access to model {deployment.model} ({refused.reason})",
            "credentials": [c.as_dict(now) for c in self.credentials().get(deployment.id, ())],
        }
