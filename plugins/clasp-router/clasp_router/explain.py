"""``clasp route --explain request.json [--key NAME] [--model NAME]``: how a request
would be routed (candidates, filters, scores), without calling anything.

It reads clasp.yaml, builds no gateway and opens no connection: the same
:func:`~clasp_router.runtime.plan_route` the gateway runs, with no measurements and
every deployment available.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys

from clasp_gateway import ConfigError, Principal, RequestContext, load_config

from .runtime import STRATEGY_KEY, describe, plan_route
from .settings import parse_settings
from .strategies import STRATEGIES

SCORE_NAMES = {"cost": "est_cost_usd", "latency": "ttfb_ms", "availability": "headroom", "balanced": "score"}
"""What each strategy's number means, in the printed order."""


def _principal(config: object, name: str | None) -> Principal | None:
    if name is None:
        return None
    for key in getattr(config, "keys", []):
        if key.name == name:
            return Principal(key_id=key.name, name=key.name, team=key.team, project=key.project, policy=key.policy)
    return None


def main(argv: list[str], config_path: str) -> int:
    """Print the plan; 0 ok, 1 refused (regions) or unknown model, 2 usage or bad input."""
    parser = argparse.ArgumentParser(prog="clasp route", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--explain", metavar="REQUEST_JSON", required=True, help="an OpenAI chat request body")
    parser.add_argument("--key", help="the name of a key under keys: (its regions apply)")
    parser.add_argument("--config", "-c", default=None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        config = load_config(args.config or config_path)
        # Another plugin's strategy is accepted here but not run (its plugin is not loaded).
        section = config.raw.get("router")
        others = [section.get("strategy")] if isinstance(section, dict) else []
        others += [r.settings.get("router") for r in config.models]
        settings = parse_settings(config, [str(n) for n in others if isinstance(n, str)])
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    try:
        with open(args.explain, encoding="utf-8") as f:
            request = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"clasp route: cannot read {args.explain}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(request, dict) or not isinstance(request.get("model"), str):
        print("clasp route: the request must be a JSON object with a \"model\"", file=sys.stderr)
        return 2
    model = request["model"]
    route = next((r for r in config.models if r.pattern == model), None) or next(
        (r for r in config.models if fnmatch.fnmatchcase(model, r.pattern)), None)
    if route is None:
        print(f"clasp route: model {model!r} is not served (models: {', '.join(r.pattern for r in config.models)})",
              file=sys.stderr)
        return 1
    if args.key is not None and _principal(config, args.key) is None:
        print(f"clasp route: no key named {args.key!r} under keys:", file=sys.stderr)
        return 2
    ctx = RequestContext("explain", "openai", model, False, principal=_principal(config, args.key))
    if route.settings.get("router"):
        ctx.state[STRATEGY_KEY] = route.settings["router"]
    result = plan_route(ctx, request, list(route.deployments), settings, lambda _: None, lambda _: True,
                        config.deployments())
    strategy = route.settings.get("router") or settings.strategy
    print(f"model {model} -> route {route.pattern}, strategy {strategy}")
    print("candidates:")
    for d in route.deployments:
        print(f"  {describe(d)}")
    if isinstance(result, Exception):
        print(f"refused: {getattr(result, 'message', result)}")
        return 1
    ordered, plan = result
    if plan.removed:
        print("filtered out:")
        for ident, reason in plan.removed.items():
            print(f"  {ident}: {reason}")
    print("order:")
    for i, d in enumerate(ordered, 1):
        score = plan.scores.get(d.id)
        extra = f"  {SCORE_NAMES.get(plan.strategy, 'score')}={score:.6g}" if score is not None else ""
        print(f"  {i}. {describe(d)}{extra}")
    if plan.note:
        print(f"note: {plan.note}")
    if plan.strategy not in STRATEGIES:
        print(f"note: {plan.strategy!r} is another plugin's strategy: shown in chain order, the gateway runs it")
    return 0
