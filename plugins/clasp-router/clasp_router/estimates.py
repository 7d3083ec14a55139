"""Success estimates per arm (deployment, request class, difficulty bucket), as Beta
posteriors over decayed success and failure counts, shared by replicas.

Why counts that fade: a model that was good last week may degrade today (a provider
change, an overloaded region). Each arm keeps ``(successes, failures, t)``; before an
update both counts are multiplied by ``0.5 ** (elapsed / half_life)``, so old
outcomes weigh less and a changed model is re-learned within a few half-lives (and an
arm that stopped being tried drifts back to its prior, which re-tries it).

Why two levels: a new bucket of a known class should not start from nothing. Every
outcome updates the fine arm ``deployment|class|bucket`` and the coarse one
``deployment|class|*``; a fine arm's prior is its easier neighbour's mean (the model
that fails easy coding turns will fail harder ones), else the optimistic prior.

Hot path: :meth:`Estimates.mean` and :meth:`Estimates.sample` read a local dict.
Outcomes are added locally at once (this replica sees them immediately) and queued;
:meth:`Estimates.sync`, run in the background at most every ``SYNC_EVERY`` seconds,
sends the queued deltas to the gateway's state in one atomic :class:`Script` that
merges them into one JSON document (decaying what it touches) and answers the merged
whole, which replaces the local view (plus what was observed meanwhile). A state outage
only delays sharing: deltas stay queued (bounded).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from clasp_gateway import Script, ScriptTx, StateBackend, StateUnavailable

log = logging.getLogger("clasp.router")

STATE_KEY = "router:learn:v1"
"""The state key of the merged estimates (one JSON document)."""
SYNC_EVERY = 2.0
"""Seconds between two syncs with the state (per replica)."""
MAX_ARMS = 20_000
"""Arms kept (deployments x classes x buckets x 2 levels; bounded by configuration, capped anyway)."""
PRIOR_STRENGTH = 2.0
"""Pseudo-observations of a prior: two outcomes are enough to move away from it."""
FORGET_BELOW = 0.05
"""An arm whose decayed counts sum below this is dropped (it is back to its prior)."""
MEAN_TTL = 1.0
"""Seconds a computed mean is reused while its deployment and class saw no new outcome
(the decay over a second is negligible: half-lives are hours)."""

_MERGE_LUA = """
local raw = redis.call('GET', KEYS[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local data = {}
if raw then data = cjson.decode(raw) end
local deltas = cjson.decode(ARGV[1])
local half_life = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local count = 0
for _ in pairs(data) do count = count + 1 end
for arm, d in pairs(deltas) do
  local cur = data[arm]
  if cur then
    local f = math.pow(0.5, math.max(0, now - cur[3]) / half_life)
    cur[1] = cur[1] * f
    cur[2] = cur[2] * f
  elseif count < cap then
    cur = {0, 0, now}
    count = count + 1
  end
  if cur then
    cur[1] = math.max(0, cur[1] + d[1])
    cur[2] = math.max(0, cur[2] + d[2])
    cur[3] = now
    data[arm] = cur
  end
end
local out = cjson.encode({now = now, arms = data})
redis.call('SET', KEYS[1], cjson.encode(data))
return out
"""


def _merge_python(tx: ScriptTx, keys: list[str], args: Sequence[Any]) -> bytes:
    raw = tx.get(keys[0])
    now = tx.now()
    data: dict[str, list[float]] = orjson.loads(raw) if raw else {}
    if not isinstance(data, dict):
        data = {}
    deltas = orjson.loads(args[0])
    half_life = float(args[1])
    cap = int(args[2])
    for arm, (ds, df) in deltas.items():
        cur = data.get(arm)
        if cur is not None:
            factor = 0.5 ** (max(0.0, now - cur[2]) / half_life)
            cur = [cur[0] * factor, cur[1] * factor, now]
        elif len(data) < cap:
            cur = [0.0, 0.0, now]
        else:
            continue
        data[arm] = [max(0.0, cur[0] + ds), max(0.0, cur[1] + df), now]
    tx.set(keys[0], orjson.dumps(data))
    return orjson.dumps({"now": now, "arms": data})


def _decode(reply: Any) -> bytes:
    return reply if isinstance(reply, bytes) else str(reply).encode()


MERGE = Script("router.learn.merge", _MERGE_LUA, _merge_python, _decode)
"""Merge queued deltas into the shared estimates; answers ``{"now", "arms"}``."""


def arm_key(deployment_id: str, request_class: str, bucket: int | str) -> str:
    """The arm of a deployment for a class and a bucket (``"*"``: every bucket)."""
    return f"{deployment_id}|{request_class}|{bucket}"


class Estimates:
    """Decayed success/failure counts per arm, with Beta posteriors read locally."""

    def __init__(self, *, half_life: float, prior: float, clock: Callable[[], float],
                 rng: random.Random | None = None) -> None:
        self.half_life = half_life
        self.prior = prior
        """The optimistic prior mean of an arm nothing is known about ("start cheap")."""
        self.clock = clock
        self.rng = rng or random.Random()
        self.arms: dict[str, list[float]] = {}
        """Arm -> [successes, failures, time of the last update] (decayed at updates)."""
        self.pending: dict[str, list[float]] = {}
        """Deltas not yet sent to the state: [successes, failures, time], decayed like the
        arms, so deltas held back by an outage do not arrive as fresh news."""
        self.synced_at = float("-inf")
        self._versions: dict[str, dict[str, int]] = {}
        """Class -> deployment -> bumped by every outcome there (invalidates cached means)."""
        self._means: dict[tuple[str, int], dict[str, tuple[int, float, float]]] = {}
        """(class, bucket) -> deployment -> (version, computed at, mean)."""

    # --- reading (the hot path) --------------------------------------------------------------

    def counts(self, arm: str) -> tuple[float, float]:
        """The arm's (successes, failures), decayed to now."""
        cur = self.arms.get(arm)
        if cur is None:
            return 0.0, 0.0
        factor = 0.5 ** (max(0.0, self.clock() - cur[2]) / self.half_life)
        return cur[0] * factor, cur[1] * factor

    def posterior(self, deployment_id: str, request_class: str, bucket: int) -> tuple[float, float]:
        """Beta(alpha, beta) of the fine arm ``deployment|class|bucket``.

        Its prior (``PRIOR_STRENGTH`` pseudo-outcomes) has the mean of, first found:
        the easier neighbour bucket's estimate (the model that fails easy coding turns
        fails harder ones), itself on the class prior; else the class prior: what the
        class's other buckets showed (the class-level counts minus this bucket's, so
        no outcome counts twice), else the optimistic prior. Three dict reads: it runs
        for every candidate of every request a learned strategy routes."""
        arms = self.arms
        now = self.clock()
        half_life = self.half_life

        def decayed(key: str) -> tuple[float, float]:
            cur = arms.get(key)
            if cur is None:
                return 0.0, 0.0
            factor = 0.5 ** (max(0.0, now - cur[2]) / half_life)
            return cur[0] * factor, cur[1] * factor

        prefix = f"{deployment_id}|{request_class}|"
        s, f = decayed(prefix + str(bucket))
        cs, cf = decayed(prefix + "*")
        cs, cf = max(0.0, cs - s), max(0.0, cf - f)
        p = self.prior
        if cs + cf >= 1.0:
            p = (cs + p * PRIOR_STRENGTH) / (cs + cf + PRIOR_STRENGTH)
        if bucket > 0:
            ns, nf = decayed(prefix + str(bucket - 1))
            if ns + nf >= 1.0:
                p = (ns + p * PRIOR_STRENGTH) / (ns + nf + PRIOR_STRENGTH)
        return s + p * PRIOR_STRENGTH, f + (1 - p) * PRIOR_STRENGTH

    def mean(self, deployment_id: str, request_class: str, bucket: int) -> float:
        """The estimated success rate (posterior mean)."""
        a, b = self.posterior(deployment_id, request_class, bucket)
        return a / (a + b)

    def means(self, deployment_ids: list[str], request_class: str, bucket: int) -> dict[str, float]:
        """:meth:`mean` of each deployment, reusing what was computed in the last
        ``MEAN_TTL`` seconds when the deployment saw no outcome in this class since
        (the common case: a request costs a few dict reads per candidate)."""
        now = self.clock()
        cache = self._means.get((request_class, bucket))
        if cache is None:
            if len(self._means) >= MAX_ARMS:  # classes come from the classifier: bounded anyway
                self._means.clear()
            cache = self._means[(request_class, bucket)] = {}
        versions = self._versions.get(request_class) or {}
        out = {}
        for ident in deployment_ids:
            version = versions.get(ident, 0)
            hit = cache.get(ident)
            if hit is not None and hit[0] == version and now - hit[1] < MEAN_TTL:
                out[ident] = hit[2]
                continue
            a, b = self.posterior(ident, request_class, bucket)
            out[ident] = mean = a / (a + b)
            if len(cache) >= MAX_ARMS:
                cache.clear()
            cache[ident] = (version, now, mean)
        return out

    def sample(self, deployment_id: str, request_class: str, bucket: int) -> float:
        """A Thompson sample of the success rate."""
        a, b = self.posterior(deployment_id, request_class, bucket)
        return self.rng.betavariate(max(a, 1e-6), max(b, 1e-6))

    def observations(self, deployment_id: str, request_class: str, bucket: int) -> float:
        """How much the fine arm has seen (decayed outcomes)."""
        s, f = self.counts(arm_key(deployment_id, request_class, bucket))
        return s + f

    # --- learning (after the answer) -----------------------------------------------------------

    def observe(self, deployment_id: str, request_class: str, bucket: int, successes: float, failures: float) -> None:
        """Add an outcome (or a correction: ``-1, +1`` turns a counted success into a
        failure, when a retry or a feedback shows the answer was wrong)."""
        now = self.clock()
        versions = self._versions.setdefault(request_class, {})
        versions[deployment_id] = versions.get(deployment_id, 0) + 1
        for arm in (arm_key(deployment_id, request_class, bucket), arm_key(deployment_id, request_class, "*")):
            cur = self.arms.get(arm)
            if cur is None:
                if len(self.arms) >= MAX_ARMS:
                    continue
                cur = self.arms[arm] = [0.0, 0.0, now]
            factor = 0.5 ** (max(0.0, now - cur[2]) / self.half_life)
            cur[0] = max(0.0, cur[0] * factor + successes)
            cur[1] = max(0.0, cur[1] * factor + failures)
            cur[2] = now
            queued = self.pending.get(arm)
            if queued is None:
                if len(self.pending) >= MAX_ARMS:
                    continue
                queued = self.pending[arm] = [0.0, 0.0, now]
            factor = 0.5 ** (max(0.0, now - queued[2]) / self.half_life)
            queued[0] = queued[0] * factor + successes
            queued[1] = queued[1] * factor + failures
            queued[2] = now

    # --- sharing (background) ------------------------------------------------------------------

    def due(self) -> bool:
        """Whether a sync is due."""
        return self.clock() - self.synced_at >= SYNC_EVERY

    async def sync(self, state: StateBackend) -> bool:
        """Send the queued deltas, take the merged whole; False on a state outage (the
        deltas stay queued)."""
        now = self.synced_at = self.clock()
        sent = {arm: self._aged(q, now) for arm, q in self.pending.items()}
        self.pending = {}
        try:
            raw = await state.run(MERGE, [STATE_KEY], [orjson.dumps(sent), self.half_life, MAX_ARMS])
            merged = orjson.loads(raw)
        except (StateUnavailable, orjson.JSONDecodeError) as exc:
            log.debug("router: estimates not shared this time: %s", exc)
            for arm, (ds, df) in sent.items():  # put them back, merged with the newer ones
                queued = self.pending.get(arm)
                if queued is None:
                    self.pending[arm] = [ds, df, now]
                else:
                    aged = self._aged(queued, now)
                    self.pending[arm] = [aged[0] + ds, aged[1] + df, now]
            return False
        self.load(merged, sent)
        return True

    def _aged(self, queued: list[float], now: float) -> list[float]:
        factor = 0.5 ** (max(0.0, now - queued[2]) / self.half_life)
        return [queued[0] * factor, queued[1] * factor]

    def load(self, merged: dict[str, Any], sent: dict[str, list[float]] | None = None) -> None:
        """Replace the local view by the state's (decayed to the state's clock, then
        rebased on ours), keeping what was observed since the deltas were sent."""
        arms = merged.get("arms") if isinstance(merged, dict) else None
        if not isinstance(arms, dict):
            return
        their_now = float(merged.get("now") or 0.0)
        now = self.clock()
        fresh: dict[str, list[float]] = {}
        for arm, value in arms.items():
            if not (isinstance(value, list) and len(value) == 3):
                continue
            s, f, t = (float(v) for v in value)
            factor = 0.5 ** (max(0.0, their_now - t) / self.half_life)
            s, f = s * factor, f * factor
            if s + f < FORGET_BELOW:
                continue
            fresh[arm] = [s, f, now]
        for arm, queued in self.pending.items():  # observed while the sync was in flight
            ds, df = self._aged(queued, now)
            cur = fresh.setdefault(arm, [0.0, 0.0, now])
            cur[0] = max(0.0, cur[0] + ds)
            cur[1] = max(0.0, cur[1] + df)
        if len(fresh) > MAX_ARMS:
            fresh = dict(sorted(fresh.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))[:MAX_ARMS])
        self.arms = fresh
        self._means.clear()  # other replicas' outcomes are in

