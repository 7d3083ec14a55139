"""``clasp check``: prove each deployment is reachable, authorised and has its model."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field

import aiohttp
import orjson

from ..config import Config
from ..errors import GatewayError
from ..redact import key_id, redact
from ..types import Deployment, Secret
from .credentials import credential_settings
from .providers import ProviderAdapter, Providers
from .reads import ReadLimits


@dataclass(slots=True)
class KeyProbe:
    """One credential's verdict: ``ref`` is its reference (``${OPENAI_KEY_2}``), never its value."""

    ref: str
    ok: bool
    verdict: str


@dataclass(slots=True)
class ProbeResult:
    """One deployment's verdict, written for a person and free of secrets."""

    deployment: str
    ok: bool
    verdict: str
    method: str = "call"
    """How it was proven: "models" (``GET /models``), "call" (a 1-token completion)
    or "config" (not tried: the deployment is not configured)."""
    keys: list[KeyProbe] = field(default_factory=list)
    """One verdict per credential (API key reference, or the Azure AD client secret)."""


async def _probe_models(session: aiohttp.ClientSession, providers: Providers, dep: Deployment, timeout: float) -> ProbeResult | None:
    """The cheapest proof for OpenAI-compatible upstreams: ``GET /models``."""
    url, headers = providers.direct.url_and_headers(dep)
    if dep.provider == "azure" or credential_settings(dep).azure_ad is not None:
        # Azure lists models per resource, not deployments, and an Azure AD token is
        # fetched by the call path: use a 1-token call.
        return None
    models_url = url.rsplit("/chat/completions", 1)[0] + "/models"
    try:
        async with session.get(models_url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status in (401, 403):
                return ProbeResult(dep.label, False, f"reachable, NOT authorised ({resp.status}): check its API key")
            if resp.status != 200:
                return None
            data = orjson.loads(await resp.read())
    except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError):
        return None
    ids = {m.get("id") for m in data.get("data", []) if isinstance(m, dict)} if isinstance(data, dict) else set()
    if ids and dep.model not in ids:
        return ProbeResult(dep.label, False, f"reachable, authorised, but model {dep.model!r} is not listed")
    return ProbeResult(dep.label, True, "reachable, authorised, model present")


async def _probe_call(providers: Providers, dep: Deployment, timeout: float) -> ProbeResult:
    body = {"model": dep.model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    try:
        async with asyncio.timeout(timeout):
            async for _ in providers.open(dep, body, stream=False):
                pass
    except TimeoutError:
        return ProbeResult(dep.label, False, f"no answer within {timeout:.0f}s")
    except GatewayError as exc:
        return ProbeResult(dep.label, False, redact(exc.message))
    return ProbeResult(dep.label, True, "reachable, authorised, model answered")


async def probe_deployment(
    providers: Providers,
    dep: Deployment,
    session: aiohttp.ClientSession,
    timeout: float,
    *,
    method: str = "auto",
) -> ProbeResult:
    """Probe one deployment: ``GET /models`` when it can prove enough ("auto", direct
    deployments), else a 1-token completion. ``method`` "models" never sends a
    completion (an inconclusive listing counts as reachable); "call" always does.
    Health checkers reuse this with a long-lived ``providers`` and ``session``."""
    problems = dep.settings.get("_problems")
    if problems:
        return ProbeResult(dep.label, False, "not configured: " + "; ".join(problems), "config")
    if dep.mode == "direct" and method in ("auto", "models"):
        found = await _probe_models(session, providers, dep, timeout)
        if found is not None:
            found.method = "models"
            return found
        if method == "models":
            return await _probe_reachable(session, providers, dep, timeout)
    return await _probe_call(providers, dep, timeout)


async def _probe_reachable(session: aiohttp.ClientSession, providers: Providers, dep: Deployment, timeout: float) -> ProbeResult:
    """The listing was inconclusive: at least prove the server answers HTTP."""
    url, headers = providers.direct.url_and_headers(dep)
    models_url = url.rsplit("/chat/completions", 1)[0] + "/models"
    try:
        async with session.get(models_url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            status = resp.status
    except TimeoutError:
        return ProbeResult(dep.label, False, f"no answer within {timeout:.0f}s", "models")
    except aiohttp.ClientError as exc:
        return ProbeResult(dep.label, False, f"cannot reach the provider ({type(exc).__name__})", "models")
    if status >= 500:
        return ProbeResult(dep.label, False, f"the provider answered {status}", "models")
    return ProbeResult(dep.label, True, f"reachable (GET /models answered {status})", "models")


async def probe_all(
    config: Config, timeout: float = 10.0, extra: dict[str, ProviderAdapter] | None = None
) -> list[ProbeResult]:
    """Probe every deployment concurrently; secrets never appear in the verdicts.
    ``extra``: the provider adapters plugins registered (``register_providers``), so a
    plugin's provider is probed by its own adapter, as requests would be served."""
    providers = Providers(extra, limits=ReadLimits.of(config.server))
    deployments = config.deployments()
    await providers.start(deployments)
    try:
        async with aiohttp.ClientSession() as session:

            return list(await asyncio.gather(
                *(probe_with_keys(providers, d, session, timeout) for d in deployments)
            ))
    finally:
        await providers.close()


async def probe_with_keys(
    providers: Providers, dep: Deployment, session: aiohttp.ClientSession, timeout: float
) -> ProbeResult:
    """Probe a deployment once per credential: each API key of ``api_keys`` on its
    own (a bad key hides behind good ones at run time), or the Azure AD client."""
    ad = credential_settings(dep).azure_ad
    if len(dep.keys) <= 1:
        result = await probe_deployment(providers, dep, session, timeout)
        if dep.keys:
            result.keys = [KeyProbe(_ref(dep.keys[0], 0), result.ok, result.verdict)]
        elif ad is not None:
            result.keys = [KeyProbe(f"azure_ad client_secret {ad.client_secret.describe()}", result.ok, result.verdict)]
        return result

    async def one(index: int) -> KeyProbe:
        secret = dep.keys[index]
        if not secret.value:
            return KeyProbe(_ref(secret, index), False, f"not set: {secret.hint or 'the reference does not resolve'}")
        # The same deployment restricted to this key (its own one-key pool).
        single = dataclasses.replace(dep, keys=[secret])
        single.settings = {k: v for k, v in dep.settings.items() if k != "_problems"}
        found = await probe_deployment(providers, single, session, timeout)
        return KeyProbe(_ref(secret, index), found.ok, found.verdict)

    keys = list(await asyncio.gather(*(one(i) for i in range(len(dep.keys)))))
    good = [k for k in keys if k.ok]
    if not good:
        first = keys[0]
        return ProbeResult(dep.label, False, f"no API key works ({first.ref}: {first.verdict})", "call", keys)
    verdict = good[0].verdict
    if len(good) < len(keys):
        verdict = f"{verdict}, but only {len(good)} of {len(keys)} API keys work"
    else:
        verdict = f"{verdict} (all {len(keys)} API keys)"
    return ProbeResult(dep.label, len(good) == len(keys), verdict, "call", keys)


def _ref(secret: Secret, index: int) -> str:
    """How ``clasp check`` names a key: its reference, or for a key written in the
    file its position and a short non-reversible id; never any part of it."""
    described = secret.describe()
    if described == "<literal>":
        return f"key #{index + 1} (literal, id {key_id(secret.value)})"
    return f"key {described}"
