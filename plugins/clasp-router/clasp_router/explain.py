"""``clasp route --explain request.json [--key NAME] [--model NAME]``: how a request
would be routed (candidates, filters, scores), without calling anything.

It reads clasp.yaml, builds no gateway and calls no upstream: the same
:func:`~clasp_router.runtime.plan_route` the gateway runs, with no measurements and
every deployment available. For ``cheapest-capable`` it also prints the request's
class and difficulty bucket, the team's policy, each candidate's tier, estimated
success and cost, and why the first one won; the estimates are the ones the gateway
learned when ``state:`` is shared (Redis or SQLite: read once, nothing written),
else the priors. Exploration is left out (the explained choice is the one the
estimates make; ``explore`` of requests try another).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import fnmatch
import json
import sys
from typing import Any

import orjson

from clasp_gateway import (
    Config,
    ConfigError,
    Principal,
    RequestContext,
    StateSettings,
    build_classifier,
    create_state,
    load_config,
    parse_state_settings,
    request_features,
)

from .capability import estimated_cost, needs_of
from .difficulty import difficulty_points
from .estimates import STATE_KEY as ESTIMATES_KEY
from .learned import LearnView
from .learning import Learner
from .registry import ALIASES, LEARNED, STRATEGIES
from .runtime import LEARN_VIEW_KEY, STRATEGY_KEY, describe, plan_route
from .settings import RouterSettings, parse_settings

SCORE_NAMES = {"cost": "est_cost_usd", "latency": "ttfb_ms", "availability": "headroom", "balanced": "score",
               "cheapest-capable": "success"}
"""What each strategy's number means, in the printed order."""


def _principal(config: object, name: str | None) -> Principal | None:
    if name is None:
        return None
    for key in getattr(config, "keys", []):
        if key.name == name:
            return Principal(key_id=key.name, name=key.name, team=key.team, project=key.project, policy=key.policy)
    return None


async def _stored_estimates(config: Config) -> tuple[dict[str, Any] | None, str]:
    """The estimates the gateway learned (shared state only), and where they came from."""
    try:
        state_settings = parse_state_settings(config)
    except ConfigError as exc:
        return None, f"state: {exc.problems[0]}"
    if state_settings.backend == "memory" or (state_settings.backend == "sqlite" and not state_settings.path):
        return None, "priors (the state is this process's memory: nothing learned to read)"
    state = create_state(state_settings)
    try:
        await state.open()
        raw = await state.get(ESTIMATES_KEY)
    except Exception as exc:  # noqa: BLE001 (explain goes on with the priors)
        return None, f"priors (the {state_settings.backend} state could not be read: {type(exc).__name__})"
    finally:
        await state.close()
    if not raw:
        return None, f"priors (nothing learned yet in the {state_settings.backend} state)"
    return {"now": None, "arms": orjson.loads(raw)}, f"learned ({state_settings.backend} state)"


def _learning(config: Config, settings: RouterSettings, ctx: RequestContext, request: dict[str, Any]) -> list[str]:
    """Prepare the learner's view in ``ctx`` (as the gateway would) and say what it holds."""
    learn = dataclasses.replace(settings.learn, teams={}, policy=dataclasses.replace(
        settings.learn.policy_for(ctx.principal.team if ctx.principal else None), explore=0.0))
    stored, source = asyncio.run(_stored_estimates(config))

    async def prepared() -> LearnView:
        # The learner reads the estimates the way a replica does: from a (memory) state
        # holding the stored document, their age unknown here (read as they stand).
        state = create_state(StateSettings(), clock=lambda: 0.0)
        learner = Learner(learn, config.deployments(), state, lambda: 0.0)
        if stored is not None:
            arms = {arm: [v[0], v[1], 0.0] for arm, v in stored["arms"].items()
                    if isinstance(v, list) and len(v) == 3}
            await state.set(ESTIMATES_KEY, orjson.dumps(arms))
        await learner.estimates.sync(state)
        return await learner.prepare(ctx, request)

    view = asyncio.run(prepared())
    ctx.state[LEARN_VIEW_KEY] = view
    policy = view.policy
    floors = ", ".join(f"{k}={v}" for k, v in sorted(policy.min_tier.items())) or "none"
    return [
        f"class {view.request_class}, difficulty bucket {view.bucket} "
        f"({difficulty_points(request_features(request))} points)",
        f"policy: success_target {policy.success_target:g}, failure_weight {policy.failure_weight:g}, "
        f"min_tier {floors}, budget_low {policy.budget_low:g}"
        + (f" (team {ctx.principal.team})" if ctx.principal and ctx.principal.team in settings.learn.teams else ""),
        f"estimates: {source}",
    ]


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
    classifier = build_classifier(dataclasses.asdict(config.classes))  # built-in classes (plugins' are not loaded)
    ctx.request_class, ctx.traits = classifier.classify(request_features(request))
    if route.settings.get("router"):
        ctx.state[STRATEGY_KEY] = route.settings["router"]
    strategy = route.settings.get("router") or settings.strategy
    learning = _learning(config, settings, ctx, request) if ALIASES.get(strategy, strategy) in LEARNED else []
    result = plan_route(ctx, request, list(route.deployments), settings, lambda _: None, lambda _: True,
                        config.deployments())
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
    for line in learning:
        print(line)
    view = ctx.state.get(LEARN_VIEW_KEY)
    needs = needs_of(request, None)
    print("order:")
    for i, d in enumerate(ordered, 1):
        score = plan.scores.get(d.id)
        extra = f"  {SCORE_NAMES.get(plan.strategy, 'score')}={score:.6g}" if score is not None else ""
        if learning and view is not None:
            seen = view.estimates.observations(d.id, view.request_class, view.bucket)
            extra += (f" tier={view.tiers.get(d.id, 0)} est_cost_usd={estimated_cost(d, needs):.6g}"
                      f" observed={seen:.1f}")
        print(f"  {i}. {describe(d)}{extra}")
    if plan.note:
        print(f"note: {plan.note}")
    if plan.strategy not in STRATEGIES:
        print(f"note: {plan.strategy!r} is another plugin's strategy: shown in chain order, the gateway runs it")
    return 0
