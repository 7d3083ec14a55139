"""``clasp check``: prove each deployment is reachable, authorised and has its model."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import orjson

from .config import Config
from .errors import GatewayError
from .providers import Providers
from .types import Deployment


@dataclass(slots=True)
class ProbeResult:
    deployment: str
    ok: bool
    verdict: str


async def _probe_models(session: aiohttp.ClientSession, providers: Providers, dep: Deployment, timeout: float) -> ProbeResult | None:
    """The cheapest proof for OpenAI-compatible upstreams: ``GET /models``."""
    url, headers = providers.direct.url_and_headers(dep)
    if dep.provider == "azure":
        return None  # Azure lists models per resource, not deployments: use a 1-token call
    models_url = url.rsplit("/chat/completions", 1)[0] + "/models"
    try:
        async with session.get(models_url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status in (401, 403):
                return ProbeResult(dep.label, False, f"reachable, NOT authorised ({resp.status}): check its API key")
            if resp.status != 200:
                return None
            data = orjson.loads(await resp.read())
    except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError):
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
        return ProbeResult(dep.label, False, exc.message)
    return ProbeResult(dep.label, True, "reachable, authorised, model answered")


async def probe_all(config: Config, timeout: float = 10.0) -> list[ProbeResult]:
    """Probe every deployment concurrently; secrets never appear in the verdicts."""
    providers = Providers()
    deployments = config.deployments()
    await providers.start(deployments)
    try:
        async with aiohttp.ClientSession() as session:

            async def one(dep: Deployment) -> ProbeResult:
                problems = dep.settings.get("_problems")
                if problems:
                    return ProbeResult(dep.label, False, "not configured: " + "; ".join(problems))
                if dep.mode == "direct":
                    found = await _probe_models(session, providers, dep, timeout)
                    if found is not None:
                        return found
                return await _probe_call(providers, dep, timeout)

            return list(await asyncio.gather(*(one(d) for d in deployments)))
    finally:
        await providers.close()
