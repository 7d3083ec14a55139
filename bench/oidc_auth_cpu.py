#!/usr/bin/env python3
"""CPU of authenticating one request with clasp-oidc loaded, in one process, interleaved:
what single sign-on adds to a model call (a static key on ``/v1/messages``: the plugin
looks at the path and steps aside), and what a bearer JWT (RS256 and ES256, the
issuer's keys cached) and a session cookie cost on ``/admin/`` routes; and, alone, the
session revocation check every cookie goes through (warm: this process checked the
session before, so a dictionary lookup; the shared list is read once per session and
process, then every 30 s).

The hook chain is run as ``Gateway.authenticate`` runs it (``call_first`` over the
plugin manager); the issuer is the tests' fake on 127.0.0.1, fetched once.

    .venv/bin/python bench/oidc_auth_cpu.py [--calls 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("CLASP_DATA_DIR", tempfile.mkdtemp(prefix="clasp-oidc-bench-"))

from clasp_gateway import call_first  # noqa: E402
from clasp_gateway.testing import GATEWAY_KEY, config_from, load_module  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
support = load_module(ROOT / "plugins/clasp-oidc/tests/oidc_issuer.py", "clasp_oidc_bench_issuer")
SECRET = "bench-session-secret-0123456789abcdefghijkl"


async def per_call_us(pm: Any, config: Any, headers: dict[str, str], path: str, calls: int) -> float:
    auth = headers.get("authorization", "")
    key = headers.get("x-api-key") or (auth[7:] if auth.startswith("Bearer ") else None)
    start = time.process_time()
    for _ in range(calls):
        principal = await call_first(pm.hook.authenticate, api_key=key, headers=headers, config=config, path=path)
        assert principal is not None
    return (time.process_time() - start) / calls * 1e6


async def started(config: Any) -> tuple[Any, Any]:
    from clasp_gateway import call_each
    from clasp_gateway.shell.app import create_app
    from clasp_gateway.testing import plugin_manager

    app = create_app(config, plugin_manager(config)).starlette_app
    await call_each(app.state.pm.hook.startup, app=app, config=config)
    await app.state.gateway.start()
    return app, app.state.gateway


async def revocation_check_us(revocations: Any, issued_at: float, calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        assert not await revocations.is_revoked("bench-session", "u-ada", issued_at)
    return (time.process_time() - start) / calls * 1e6


async def measure(calls: int, rounds: int) -> dict[str, Any]:
    from clasp_oidc.runtime import SESSION_PURPOSE

    from clasp_gateway import call_each

    issuer = support.FakeIssuer().start()
    try:
        storage = {"url": f"sqlite:///{tempfile.mkdtemp(prefix='clasp-oidc-bench-db-')}/db.sqlite"}
        off_config = config_from({"models": {}, "storage": storage})
        on_config = config_from({"models": {}, "storage": storage, "oidc": support.oidc_section(
            issuer, login={"public_url": "http://127.0.0.1:9", "session_secret": SECRET})})
        off_app, off = await started(off_config)
        on_app, on = await started(on_config)
        runtime = on.pm.get_plugin("clasp_oidc.runtime")
        assert runtime.signer is not None
        now = time.time()
        cookie = runtime.signer.sign(SESSION_PURPOSE, {"sub": "u-ada", "name": "ada", "role": "admin", "team": None,
                                                       "sid": "bench-session", "iat": now}, now + 3600)
        rsa_token = issuer.mint()
        ec_token = issuer.mint(key=next(k for k in issuer.keys if k.alg == "ES256"))
        cases = (
            ("static key /v1/messages, oidc off", off.pm, off_config, {"x-api-key": GATEWAY_KEY}, "/v1/messages"),
            ("static key /v1/messages, oidc on", on.pm, on_config, {"x-api-key": GATEWAY_KEY}, "/v1/messages"),
            ("bearer JWT RS256 /admin/me", on.pm, on_config, {"authorization": f"Bearer {rsa_token}"}, "/admin/me"),
            ("bearer JWT ES256 /admin/me", on.pm, on_config, {"authorization": f"Bearer {ec_token}"}, "/admin/me"),
            ("session cookie /admin/me", on.pm, on_config, {"cookie": f"clasp_session={cookie}"}, "/admin/me"),
        )
        for _, pm, cfg, headers, path in cases:
            await per_call_us(pm, cfg, headers, path, 5)  # the issuer's keys fetched once
        check = "revocation check alone (warm)"
        results: dict[str, list[float]] = {name: [] for name, *_ in cases}
        results[check] = []
        for _ in range(rounds):
            for name, pm, cfg, headers, path in cases:
                results[name].append(await per_call_us(pm, cfg, headers, path, calls))
            results[check].append(await revocation_check_us(runtime.revocations, now, calls))
        for app, gateway in ((on_app, on), (off_app, off)):
            await gateway.close()
            await call_each(app.state.pm.hook.shutdown, app=app)
    finally:
        issuer.stop()
    return {name: {"median_us": round(statistics.median(v), 2), "runs_us": [round(x, 2) for x in v]}
            for name, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args()
    results = asyncio.run(measure(args.calls, args.rounds))
    for name, figures in results.items():
        print(f"{name:36s} {figures['median_us']:9.2f} µs CPU per authentication  (runs: {figures['runs_us']})")
    if args.output:
        with open(args.output, "w") as out:
            json.dump({"calls": args.calls, "rounds": args.rounds, "results": results}, out, indent=2)


if __name__ == "__main__":
    main()
