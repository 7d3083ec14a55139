"""Prometheus metrics from the gateway's ``record`` events.

Names follow Prometheus' conventions (a ``clasp_`` namespace, base units in the name,
``_total`` on counters), where LiteLLM's proxy uses ``litellm_requests_metric``,
``litellm_spend_metric`` and friends. Labels are bounded: the public model, deployment,
provider, status, request class and team (teams are configured, so few); never a
request id, never a user, a key only when ``analytics.metrics.key_label`` asks; and each
label takes at most ``max_label_values`` distinct values per process (later ones are
``other``), so a client sending random model names cannot grow the series.

With several workers (``server.workers``) every worker writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR`` (set per run by :mod:`.multiproc`), and a scrape, whichever
worker answers, adds them up. The circuit breaker gauge is read at scrape time from the
shared state, so it is the same whichever worker answers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from .settings import MetricsSettings

disable_created_metrics()  # no `_created` series: half the exposition, and nobody graphs them

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OTHER = "other"
UNKNOWN = "unknown"
NONE = ""

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 600)
"""Seconds. LLM answers run from a cached 50 ms to a ten-minute agent turn."""
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 13, 20, 40, 80)
SPEED_BUCKETS = (5, 10, 20, 30, 40, 60, 80, 120, 160, 240, 400, 800)
"""Output tokens per second, after the first token."""
BUDGET_STATUSES = (402, 429)
BUDGET_ERROR = "BudgetExhaustedError:"
"""How a request event says a hard budget refused it: its ``error`` names the exception's
class (clasp-budgets' ``BudgetExhaustedError``, 402 on Anthropic routes and 429 on
OpenAI routes), which a plain rate limit's 429 does not."""
TOKEN_DIRECTIONS = (("input_tokens", "input"), ("output_tokens", "output"),
                    ("cache_read_input_tokens", "cache_read"), ("cache_creation_input_tokens", "cache_write"),
                    ("reasoning_tokens", "reasoning"))


LABEL_SETS = 10_000
"""Distinct request (and attempt) label sets whose series are remembered (memory stays
bounded)."""


class _Series:
    """One request label set: its label values, resolved once (see
    :meth:`GatewayMetrics._series`), and its child in each metric, each created on the
    label set's first sample of that metric (a series nobody observed stays out of the
    exposition, as with a ``labels()`` call per sample). A request then updates the
    children it holds: no label tuple built, no child looked up."""

    __slots__ = ("model", "provider", "timing", "spend", "requests", "duration", "ttft", "speed", "cost",
                 "unpriced", "cut", "tokens")

    def __init__(self, model: str, provider: str, timing: tuple[str, ...], spend: tuple[str, ...],
                 requests: Any) -> None:
        self.model = model
        self.provider = provider
        self.timing = timing
        """(model, provider, class): the latency histograms' labels."""
        self.spend = spend
        """(model, provider[, team]): the token and cost counters' labels (tokens add a direction)."""
        self.requests = requests
        """The ``clasp_requests`` child (every request event counts)."""
        self.duration: Any = None
        self.ttft: Any = None
        self.speed: Any = None
        self.cost: Any = None
        self.unpriced: Any = None
        self.cut: Any = None
        self.tokens: dict[str, Any] = {}
        """The ``clasp_tokens`` child per usage field (``input_tokens``...)."""


class LabelGuard:
    """Caps the distinct values of each label: past ``limit``, a value reads ``other``."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: dict[str, set[str]] = {}

    def __call__(self, label: str, value: Any) -> str:
        text = NONE if value is None else str(value)
        seen = self.seen.get(label)
        if seen is None:
            seen = self.seen[label] = set()
        if text in seen:
            return text
        if len(seen) >= self.limit:
            return OTHER
        seen.add(text)
        return text


def _child(metric: Any, labels: tuple[str, ...]) -> Any:
    """``metric.labels(*labels)``, remembered: prometheus-client validates the labels
    and takes a lock on every ``labels()`` call, a few microseconds each, and a request
    touches a dozen series. The children are the same objects it would return."""
    cache: dict[tuple[str, ...], Any] | None = getattr(metric, "_clasp_children", None)
    if cache is None:
        cache = {}
        metric._clasp_children = cache
    child = cache.get(labels)
    if child is None:
        child = cache[labels] = metric.labels(*labels)
    return child


def _number(value: Any) -> float | None:
    """``value`` when it is a number (a duration of the event), else ``None``."""
    return value if isinstance(value, int | float) else None


def multiprocess_dir() -> str | None:
    """The directory workers share their samples in, when running as several workers."""
    return os.environ.get(MULTIPROC_ENV) or None


class GatewayMetrics:
    """One app's metrics: the series, how events update them, and the scrape."""

    def __init__(self, settings: MetricsSettings) -> None:
        self.settings = settings
        self.guard = LabelGuard(settings.max_label_values)
        self.multiprocess = multiprocess_dir() is not None
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        request_labels = ["model", "deployment", "provider", "status", "class"]
        if settings.team_label:
            request_labels.append("team")
        if settings.key_label:
            request_labels.append("key")
        self.request_labels = tuple(request_labels)
        spend_labels = ["model", "provider"] + (["team"] if settings.team_label else [])
        self.requests = Counter("clasp_requests", "Requests that reached the pipeline, by outcome.",
                                request_labels, registry=r)
        self.duration = Histogram("clasp_request_duration_seconds", "Whole request, first byte in to last byte out.",
                                  ["model", "provider", "class"], buckets=DURATION_BUCKETS, registry=r)
        self.ttft = Histogram("clasp_time_to_first_token_seconds", "Request start to the upstream's first token.",
                              ["model", "provider", "class"], buckets=TTFT_BUCKETS, registry=r)
        self.speed = Histogram("clasp_output_tokens_per_second", "Output tokens per second after the first token.",
                               ["model", "provider"], buckets=SPEED_BUCKETS, registry=r)
        self.tokens = Counter("clasp_tokens", "Tokens, by direction (input, output, cache_read, cache_write, "
                              "reasoning).", [*spend_labels, "direction"], registry=r)
        self.cost = Counter("clasp_cost_usd", "Spend in US dollars (priced requests only).", spend_labels, registry=r)
        self.unpriced = Counter("clasp_unpriced_requests", "Requests whose cost could not be computed.",
                                ["model", "provider"], registry=r)
        self.cache_hits = Counter("clasp_cache_hits", "Answers served from a cache, by kind (exact, semantic, "
                                  "stale).", ["model", "kind"], registry=r)
        self.cache_saved = Counter("clasp_cache_saved_usd", "What cache hits saved: the recorded cost of the "
                                   "answers they replayed.", ["model"], registry=r)
        self.attempts = Counter("clasp_upstream_attempts", "Upstream attempts, by outcome and upstream status.",
                                ["deployment", "provider", "outcome", "upstream_status"], registry=r)
        self.retries = Counter("clasp_retries", "Attempts that retried the deployment just tried.", ["model"], registry=r)
        self.fallbacks = Counter("clasp_fallbacks", "Moves to another deployment within one request.",
                                 ["model", "from_deployment", "to_deployment"], registry=r)
        self.budget_exhausted = Counter("clasp_budget_exhausted", "Requests refused because a hard budget had no "
                                        "room left (402 billing_error; OpenAI routes: 429 insufficient_quota).",
                                        spend_labels[:1] + spend_labels[2:], registry=r)
        self.cut = Counter("clasp_streams_cut", "Streams that ended early (upstream broke, client left).",
                           ["model", "provider"], registry=r)
        self.quality = Counter("clasp_quality_signals", "Answers with a quality signal: error, truncated, "
                               "invalid_tool_json, retried.", ["model", "class", "signal"], registry=r)
        self.feedback = Counter("clasp_feedback", "Feedback received through POST /v1/feedback.", ["model"], registry=r)
        self.hook_failures = Counter("clasp_hook_failures", "Bookkeeping hooks that raised (the answers went on).",
                                     ["hook"], registry=r)
        self.in_flight = Gauge("clasp_requests_in_flight", "Requests being served now.", registry=r,
                               multiprocess_mode="livesum")
        self._hook_failures_seen: dict[str, int] = {}
        self._series_of: dict[tuple[Any, ...], _Series] = {}
        self._attempt_children: dict[tuple[Any, ...], Any] = {}
        self._signal_children: dict[tuple[Any, ...], Any] = {}

    # --- events ---------------------------------------------------------------------------

    def _series(self, event: dict[str, Any]) -> _Series:
        """A request event's series, remembered per distinct (model, deployment,
        provider, status, class, team, key): a request then costs one dict lookup here
        instead of a label guard call per label, a tuple per series and a child lookup
        per metric. Bounded by :data:`LABEL_SETS` (past it, resolved each time)."""
        team_raw = event.get("team") if self.settings.team_label else None
        key_raw = event.get("key_name") if self.settings.key_label else None
        deployment = event.get("deployment")
        status = event.get("status") or 0
        raw = (event.get("public_model"), deployment, event.get("provider"), status, event.get("request_class"),
               team_raw, key_raw)
        remember = True
        try:
            found = self._series_of.get(raw)
        except TypeError:  # an unhashable value: not remembered
            found, remember = None, False
        if found is not None:
            return found
        g = self.guard
        model = g("model", UNKNOWN if deployment is None and status == 404 else event.get("public_model"))
        provider = g("provider", event.get("provider"))
        cls = g("class", event.get("request_class"))
        team = g("team", team_raw) if self.settings.team_label else None
        labels = [model, g("deployment", deployment), provider, str(status), cls]
        if team is not None:
            labels.append(team)
        if self.settings.key_label:
            labels.append(g("key", key_raw))
        spend = (model, provider, team) if team is not None else (model, provider)
        found = _Series(model, provider, (model, provider, cls), spend, _child(self.requests, tuple(labels)))
        if remember and len(self._series_of) < LABEL_SETS:
            self._series_of[raw] = found
        return found

    def observe_request(self, event: dict[str, Any], ctx: Any) -> None:
        """A ``kind: "request"`` event: counts, latency, tokens, cost, cache, fallbacks."""
        s = self._series(event)
        s.requests.inc()
        latency = _number(event.get("latency_ms"))
        if latency is not None:
            if s.duration is None:
                s.duration = _child(self.duration, s.timing)
            s.duration.observe(latency / 1000)
        ttfb = _number(event.get("ttfb_ms"))
        if ttfb is not None:
            if s.ttft is None:
                s.ttft = _child(self.ttft, s.timing)
            s.ttft.observe(ttfb / 1000)
        usage = event.get("usage")
        if usage:
            for field, direction in TOKEN_DIRECTIONS:
                count = usage.get(field)
                if count:
                    child = s.tokens.get(field)
                    if child is None:
                        child = s.tokens[field] = _child(self.tokens, (*s.spend, direction))
                    child.inc(count)
            output = usage.get("output_tokens")
            if output and latency is not None and ttfb is not None and latency > ttfb:
                if s.speed is None:
                    s.speed = _child(self.speed, (s.model, s.provider))
                s.speed.observe(output / ((latency - ttfb) / 1000))
        cost = event.get("cost_usd")
        if cost is None:
            if event.get("deployment") is not None:
                if s.unpriced is None:
                    s.unpriced = _child(self.unpriced, (s.model, s.provider))
                s.unpriced.inc()
        elif cost:
            if s.cost is None:
                s.cost = _child(self.cost, s.spend)
            s.cost.inc(cost)
        hit = event.get("cache_hit", getattr(ctx, "cache_hit", None))
        if hit:
            _child(self.cache_hits, (s.model, self.guard("cache_kind", hit))).inc()
            saved = event.get("saved_usd", getattr(ctx, "saved_usd", 0.0))
            if saved:
                _child(self.cache_saved, (s.model,)).inc(saved)
        attempts = event.get("attempts")
        if attempts and len(attempts) > 1:  # one attempt: neither a retry nor a fallback
            self._observe_moves(s.model, attempts)
        status = event.get("status") or 0
        if status in BUDGET_STATUSES and str(event.get("error") or "").startswith(BUDGET_ERROR):
            _child(self.budget_exhausted, s.spend[:1] + s.spend[2:]).inc()  # (model[, team])
        if event.get("cut"):
            if s.cut is None:
                s.cut = _child(self.cut, (s.model, s.provider))
            s.cut.inc()

    def _observe_moves(self, model: str, attempts: list[dict[str, Any]]) -> None:
        previous: str | None = None
        for attempt in attempts:
            current = attempt.get("deployment")
            if previous is not None:
                if current == previous:
                    _child(self.retries, (model,)).inc()
                else:
                    _child(self.fallbacks, (model, self.guard("deployment", previous),
                                            self.guard("deployment", current))).inc()
            previous = current

    def observe_attempt(self, event: dict[str, Any]) -> None:
        """A ``kind: "attempt"`` event: one upstream call. Its ``clasp_upstream_attempts``
        child is remembered per distinct (deployment, provider, outcome, status), as the
        request label sets are."""
        status = event.get("upstream_status")
        deployment, provider, ok = event.get("deployment"), event.get("provider"), bool(event.get("ok"))
        raw = (deployment, provider, ok, status)
        remember = True
        try:
            child = self._attempt_children.get(raw)
        except TypeError:  # an unhashable value: not remembered
            child, remember = None, False
        if child is None:
            g = self.guard
            child = _child(self.attempts, (g("deployment", deployment), g("provider", provider),
                                           "ok" if ok else "error", NONE if status is None else str(status)))
            if remember and len(self._attempt_children) < LABEL_SETS:
                self._attempt_children[raw] = child
        child.inc()

    def observe_signals(self, model: str | None, request_class: str | None, signals: Iterable[str]) -> None:
        """Quality signals of one answer (see :mod:`.quality`); each (model, class,
        signal) child remembered, as the request label sets are."""
        for signal in signals:
            raw = (model, request_class, signal)
            child = self._signal_children.get(raw)
            if child is None:
                child = _child(self.quality, (self.guard("model", model), self.guard("class", request_class), signal))
                if len(self._signal_children) < LABEL_SETS:
                    self._signal_children[raw] = child
            child.inc()

    def sync_hook_failures(self, failures: dict[str, int], seen: dict[str, int] | None = None) -> None:
        """Export the gateway's ``hook_failures`` counter (new failures since the last call).
        ``seen``: the counts already exported from ``failures``, kept by the caller when
        these metrics outlive its gateway (a reload hands them to the next one)."""
        exported = self._hook_failures_seen if seen is None else seen
        for hook, count in failures.items():
            before = exported.get(hook, 0)
            if count > before:
                _child(self.hook_failures, (self.guard("hook", hook),)).inc(count - before)
                exported[hook] = count

    # --- the scrape -------------------------------------------------------------------------

    def exposition(self, extra: Sequence[Metric]) -> bytes:
        """The text format: every worker's samples (multiprocess) or this process's, plus
        ``extra`` families read at scrape time (breaker states)."""
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        else:
            registry = self.registry
        text = generate_latest(registry)
        if extra:
            text += generate_latest(_Families(extra))  # type: ignore[arg-type]
        return text


BREAKER_STATES = ("closed", "half_open", "open")


def breaker_family(states: list[tuple[str, str, str]]) -> GaugeMetricFamily:
    """``clasp_circuit_breaker_state{deployment,provider,state}``: 1 for each deployment's
    current state, 0 for the others (the enum pattern, so alerts read ``state="open"``)."""
    family = GaugeMetricFamily("clasp_circuit_breaker_state", "Circuit breaker state per deployment (1 = current).",
                               labels=["deployment", "provider", "state"])
    for deployment, provider, current in states:
        for state in BREAKER_STATES:
            family.add_metric([deployment, provider, state], 1.0 if state == current else 0.0)
    return family


class _Families:
    """A one-scrape collector over ready metric families."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)
