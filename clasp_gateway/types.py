"""Types shared by the core and every plugin.

The canonical request between steps is an OpenAI chat-completions body (a plain
``dict``: what providers and LiteLLM speak); the canonical stream is a sequence of
OpenAI ``chat.completion.chunk`` dicts. Everything else a step needs to know
travels in these slotted dataclasses.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

CanonicalRequest = dict[str, Any]
"""An OpenAI chat-completions request body (``model``, ``messages``, ``tools``...)."""

Chunk = dict[str, Any]
"""One OpenAI ``chat.completion.chunk`` (``choices[0].delta``, ``finish_reason``, ``usage``)."""

CallMode = Literal["direct", "transform", "litellm"]

KEEPALIVE: Chunk = {"keepalive": True}
"""Yielded (this very object, compare with ``is``) by a provider while the upstream is
silent but alive, so routes can send keep-alive pings (long reasoning, slow models)."""

PING_INTERVAL = 10.0
"""Seconds of upstream silence before a :data:`KEEPALIVE` is yielded."""


@dataclass(slots=True, frozen=True)
class ModelInfo:
    """What the gateway knows about an upstream model (from LiteLLM's catalogue,
    overridable per deployment in clasp.yaml)."""

    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    supports_tools: bool = True
    supports_parallel_tool_calls: bool = True
    supports_reasoning: bool = False
    supports_vision: bool = True
    input_cost_per_token: float = 0.0
    output_cost_per_token: float = 0.0
    cache_read_input_token_cost: float | None = None
    cache_creation_input_token_cost: float | None = None


@dataclass(slots=True)
class Secret:
    """A credential given by reference (``${ENV}``, ``file:/path``) or literally.

    ``value`` is ``None`` when the reference does not resolve; ``hint`` then says,
    for a person, what to set. ``repr`` never shows the value.
    """

    ref: str
    value: str | None
    hint: str = ""

    def __repr__(self) -> str:
        state = "set" if self.value else "missing"
        return f"Secret({self.describe()}, {state})"

    def describe(self) -> str:
        """A safe description: the reference, never the value."""
        if self.ref.startswith("${") or self.ref.startswith("file:"):
            return self.ref
        return "<literal>"


@dataclass(slots=True, frozen=True)
class Timeouts:
    """Per-deployment time limits in seconds (``None`` = no limit)."""

    connect: float | None = 10.0
    first_byte: float | None = 120.0
    idle: float | None = 120.0
    total: float | None = 900.0


@dataclass(slots=True)
class Deployment:
    """One concrete upstream: a provider model reachable with some credentials."""

    id: str
    provider: str
    model: str
    api_base: str
    keys: list[Secret] = field(default_factory=list)
    api_version: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    mode: CallMode = "direct"
    info: ModelInfo = field(default_factory=ModelInfo)
    timeouts: Timeouts = field(default_factory=Timeouts)
    extra_body: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    """Plugin-specific settings from clasp.yaml (keys the core does not know)."""

    @property
    def label(self) -> str:
        """The id, plus the upstream model when the id does not already say it."""
        upstream = f"{self.provider}/{self.model}"
        return self.id if self.id == upstream else f"{self.id} ({upstream})"


@dataclass(slots=True, frozen=True)
class KeyPolicy:
    """What a key may do: the limits a static key in clasp.yaml or a virtual key carries.

    The core only carries these; the plugin that owns keys and budgets (clasp-budgets)
    enforces them. ``None`` means no limit of that kind."""

    models: tuple[str, ...] = ()
    """Public model names (globs) the key may ask for; empty means every model."""
    rpm: int | None = None
    """Requests per minute."""
    tpm: int | None = None
    """Tokens (input + output) per minute."""
    rpd: int | None = None
    """Requests per day."""
    tpd: int | None = None
    """Tokens per day."""
    max_concurrency: int | None = None
    """Requests in flight at once."""
    max_budget_usd: float | None = None
    """Spend allowed per ``budget_period``."""
    budget_period: str | None = None
    """``daily``, ``weekly``, ``monthly`` or ``total``."""
    expires_at: float | None = None
    """Unix time after which the key is refused."""
    regions: tuple[str, ...] = ()
    """Regions (deployment ``region:``) the key's requests may be served in, and cached
    answers produced in; empty means any region."""


@dataclass(slots=True)
class Principal:
    """Who is calling: the gateway key that authenticated the request."""

    key_id: str
    name: str = ""
    team: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    role: str = "member"
    """``admin`` (admin API, every team), ``team_admin`` (its own team's keys and
    budgets) or ``member`` (model calls, its own usage)."""
    project: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    """Dimensions for analytics from the key's metadata (``project=api``)."""
    policy: KeyPolicy = field(default_factory=KeyPolicy)


@dataclass(slots=True)
class RequestHints:
    """Intent that the OpenAI body cannot carry; providers map it to their params."""

    reasoning_effort: str | None = None
    """"low" | "medium" | "high" (from Anthropic ``thinking``/``output_config``)."""
    thinking_budget: int | None = None
    top_k: int | None = None
    structured_output: bool = False
    """The client asked for an answer matching a JSON schema in a field the canonical
    body does not carry (Anthropic ``output_config.format``): a fact for the request
    classifier (Claude Code's session titles), not sent upstream."""
    task: str | None = None
    """A format plugin's hint for the request classifier: ``"background"`` makes the
    request a background call whatever its size. Nothing shipped sets it (the core's
    ``background`` class recognises Claude Code's helper calls by their shape); route
    and analyse by :attr:`RequestContext.request_class`, never by this hint."""


@dataclass(slots=True)
class Usage:
    """Token usage of one call, in Anthropic's terms (input excludes cached reads)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = None
    """What the provider itself reported the call cost (OpenRouter's ``usage.cost``,
    LiteLLM's ``response_cost``), when it did: it wins over the gateway's price map."""

    @classmethod
    def from_openai(cls, usage: dict[str, Any] | None) -> Usage:
        """Convert a canonical (OpenAI-shaped) ``usage`` object.

        In the canonical usage, as in OpenAI's and LiteLLM's, ``prompt_tokens``
        counts every input token, cached reads and cache writes included; what the
        provider's prompt cache did is in ``prompt_tokens_details.cached_tokens``
        (reads: OpenAI, Azure, vLLM, Gemini and Anthropic through LiteLLM) or
        DeepSeek's ``prompt_cache_hit_tokens``, and writes in
        ``cache_creation_input_tokens`` (LiteLLM's name; Bedrock, Anthropic) or
        ``prompt_tokens_details.cache_creation_tokens`` / ``cache_write_tokens``
        (LiteLLM, OpenRouter). ``input_tokens`` here excludes both, as Anthropic's does.
        A finite ``cost`` (OpenRouter) is kept as :attr:`cost_usd`.
        """
        if not usage:
            return cls()
        prompt = _count(usage.get("prompt_tokens"))
        details = usage.get("prompt_tokens_details")
        if not isinstance(details, dict):
            details = {}
        cached = _count(details.get("cached_tokens")) or _count(usage.get("prompt_cache_hit_tokens")) \
            or _count(usage.get("cache_read_input_tokens"))
        written = _count(usage.get("cache_creation_input_tokens")) or _count(details.get("cache_creation_tokens")) \
            or _count(details.get("cache_write_tokens"))
        out_details = usage.get("completion_tokens_details") or {}
        reasoning = _count(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0
        cost = usage.get("cost")
        reported = (
            float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool)
            and math.isfinite(cost) and cost >= 0 else None
        )
        return cls(
            input_tokens=max(0, prompt - cached - written),
            output_tokens=_count(usage.get("completion_tokens")),
            cache_read_input_tokens=cached,
            cache_creation_input_tokens=written,
            reasoning_tokens=reasoning,
            cost_usd=reported,
        )


def _count(value: Any) -> int:
    """A token count from a provider's usage (``None``, a bool or junk count as 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return max(0, int(value))


@dataclass(slots=True)
class Attempt:
    """One try of one deployment within a request."""

    deployment: Deployment
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    first_byte: float | None = None
    error: Exception | None = None
    usage: Usage | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class ReadAhead:
    """How many chunks the provider has already decoded and not yet handed out.

    Providers set ``pending`` before each chunk they yield from one network read; a
    route keeps its output while ``pending`` is non-zero and writes it in one piece
    when it reaches zero, so a burst of upstream events costs one client write, not
    one each, and nothing is ever held while the gateway waits for the network.
    """

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = 0


@dataclass(slots=True)
class RequestContext:
    """Everything known about one client request while it is served."""

    request_id: str
    api: str
    """Inbound API: "anthropic" or "openai"."""
    public_model: str
    client_stream: bool
    principal: Principal | None = None
    hints: RequestHints = field(default_factory=RequestHints)
    headers: dict[str, str] = field(default_factory=dict)
    """The client's request headers (lower-case names)."""
    started: float = field(default_factory=time.perf_counter)
    attempts: list[Attempt] = field(default_factory=list)
    response_headers: dict[str, str] = field(default_factory=dict)
    """Headers the gateway adds to the answer (x-clasp-*)."""
    state: dict[str, Any] = field(default_factory=dict)
    """Scratch space for plugins, keyed by plugin name."""
    read_ahead: ReadAhead = field(default_factory=ReadAhead)
    """Decoded upstream chunks not yet consumed (see :class:`ReadAhead`)."""
    request_class: str = ""
    """What kind of request this is (``background``, ``long_context``, ``images``,
    ``thinking``, ``coding``, ``question``, or a plugin's class): the first class of
    the gateway's :class:`~clasp_gateway.classes.Classifier` that matches. Computed once
    per request by :meth:`Gateway.open <clasp_gateway.pipeline.Gateway.open>`, before
    ``resolve_route``, from the canonical request and ``hints``; later rounds (server
    tools, context summaries) keep it. Routing (``fallback.tasks``), analytics and
    cache policy all read this one answer. Empty until then."""
    traits: frozenset[str] = frozenset()
    """Every class that matches (the primary one included): a long-context coding turn
    with images has ``{"long_context", "images", "coding", "question"}``."""
    user: str | None = None
    """The person behind a shared key, for per-user spend and limits: the
    ``x-clasp-user`` header, else the client's ``metadata.user_id`` (Claude Code sends
    one). Set before ``before_call``; ``None`` when the client says nothing."""
    tags: dict[str, str] = field(default_factory=dict)
    """Analytics dimensions of this request: the key's tags, then the client's
    ``x-clasp-tags: project=api,feature=review`` header."""
    cache_hit: str | None = None
    """Set by a cache plugin that answered: ``"exact"``, ``"semantic"`` or ``"stale"``."""
    saved_usd: float = 0.0
    """What a cache hit saved: the cost of the answer it replayed."""
    client_body: dict[str, Any] | None = None
    """The client's request body as it arrived, in its API's own shape (a reference,
    never a copy: read it, do not change it), when the route that parsed it keeps it:
    clasp-claude does for ``/v1/messages``, since its pass-through sends that body and
    it is a superset of the canonical request (numbered as the client numbers its
    content). ``None`` otherwise: the canonical request is then the client's body
    (``/v1/chat/completions``)."""
    _input_estimate: tuple[CanonicalRequest, int] | None = field(default=None, init=False, repr=False, compare=False)
    """Cache of :func:`clasp_gateway.request_facts.input_estimate` (call that, not this)."""
    _fingerprint: tuple[CanonicalRequest, Any] | None = field(default=None, init=False, repr=False, compare=False)
    """Cache of :func:`clasp_gateway.request_facts.request_fingerprint` (call that, not this)."""
    _tools_json: tuple[CanonicalRequest, Any] | None = field(default=None, init=False, repr=False, compare=False)
    """The tools' serialisations shared by the two above (``request_facts._request_tools``)."""


class UpstreamStream:
    """The canonical chunks of one successful attempt.

    The first chunk has already arrived when the pipeline hands this out, so the
    choice of deployment is final: after this point a failure becomes an in-stream
    error, never a silent switch.
    """

    __slots__ = ("deployment", "attempt", "_first", "_rest", "_closer")

    def __init__(
        self,
        deployment: Deployment,
        attempt: Attempt,
        first: list[Chunk],
        rest: AsyncIterator[Chunk],
        closer: Any = None,
    ) -> None:
        self.deployment = deployment
        self.attempt = attempt
        self._first = first
        self._rest = rest
        self._closer = closer

    @property
    def first_chunks(self) -> list[Chunk]:
        """The chunks already received when the deployment was chosen, not yet
        iterated (empty once iteration began). A format plugin reads what the provider
        reported up front from them (Anthropic's prompt usage, for ``message_start``)."""
        return self._first

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Chunk]:
        for chunk in self._first:
            yield chunk
        self._first = []
        async for chunk in self._rest:
            yield chunk

    async def aclose(self) -> None:
        """Stop reading and release the upstream connection."""
        aclose = getattr(self._rest, "aclose", None)
        if aclose is not None:
            await aclose()
        if self._closer is not None:
            await self._closer()
