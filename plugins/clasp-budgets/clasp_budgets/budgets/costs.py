"""What a request may cost before it runs, and what it did cost after.

The worst case reserved before the call: the input estimate (``input_estimate``,
the core's ``estimate_tokens`` computed once per request, which leans high: bytes / 3) at the dearest candidate's input price, plus
``max_tokens`` clamped to that candidate's output limit at its output price. The
real cost after: every attempt that reported usage, priced by the core
(``request_cost``), fallbacks and server-tool rounds included; a stream cut before
its usage arrived is charged what it visibly streamed, never less than what the
provider reported: the partial usage its route reports (the output it encoded), and on
a shared state, where a :class:`~.runtime.StreamMeter` keeps the streamed text for the
leases' charges, that text counted with the model's tokenizer (at checkpoints and at
the end, never per chunk), whichever is more.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clasp_gateway import (
    CanonicalRequest,
    Chunk,
    Deployment,
    RequestContext,
    Usage,
    encoding_for_model,
    get_encoding,
    request_cost,
)


@dataclass(slots=True)
class WorstCase:
    """The reservation a request needs, and how it was computed (for lowering)."""

    amount: float
    input_tokens: int
    output_tokens: int
    input_price: float
    output_price: float
    model: str = ""
    """The dearest candidate's upstream model (its tokenizer counts what streamed)."""

    @property
    def input_cost(self) -> float:
        return self.input_tokens * self.input_price

    def tokens_for(self, room: float) -> int:
        """The largest ``max_tokens`` whose worst case fits in ``room`` USD (0: none)."""
        if self.output_price <= 0:
            return self.output_tokens
        return max(0, math.floor((room - self.input_cost) / self.output_price))

    def with_output(self, tokens: int) -> WorstCase:
        return WorstCase(self.input_cost + tokens * self.output_price, self.input_tokens, tokens,
                         self.input_price, self.output_price, self.model)


def requested_max_tokens(request: CanonicalRequest) -> int | None:
    value = request.get("max_completion_tokens") or request.get("max_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def worst_case(request: CanonicalRequest, candidates: Sequence[Deployment], default_max_tokens: int,
               tokens_in: int) -> WorstCase:
    """The dearest candidate's worst case for ``request``, whose input estimate is
    ``tokens_in`` (the core's ``input_estimate``: computed once per request, the rate
    limits use it too)."""
    asked = requested_max_tokens(request)
    best = WorstCase(0.0, tokens_in, asked or default_max_tokens, 0.0, 0.0)
    for deployment in candidates:
        info = deployment.info
        out = asked or info.max_output_tokens or default_max_tokens
        if info.max_output_tokens:
            out = min(out, info.max_output_tokens)
        # Input written to a provider's prompt cache may cost more than plain input.
        in_price = max(float(info.input_cost_per_token or 0.0), float(info.cache_creation_input_token_cost or 0.0))
        out_price = float(info.output_cost_per_token or 0.0)
        amount = tokens_in * in_price + out * out_price
        if amount > best.amount or best.amount == 0.0 and best.input_price == 0.0:
            best = WorstCase(amount, tokens_in, out, in_price, out_price, deployment.model)
    return best


def worst_case_on(worst: WorstCase, deployment: Deployment) -> float:
    """The same request's worst case on another deployment (its prices and output limit)."""
    info = deployment.info
    out = worst.output_tokens
    if info.max_output_tokens:
        out = min(out, info.max_output_tokens)
    in_price = max(float(info.input_cost_per_token or 0.0), float(info.cache_creation_input_token_cost or 0.0))
    return worst.input_tokens * in_price + out * float(info.output_cost_per_token or 0.0)


def hedged_worst_case(worst: WorstCase, in_flight: Sequence[Deployment], deployment: Deployment) -> float:
    """The worst case when ``deployment`` is started beside attempts still in flight
    (a hedge, clasp_gateway.hedging): whichever answers costs its worst case, and every
    other one its input (a cancelled attempt was sent the prompt, and is billed for it)."""
    group = [*in_flight, deployment]
    inputs = [worst.input_tokens * max(float(d.info.input_cost_per_token or 0.0),
                                       float(d.info.cache_creation_input_token_cost or 0.0)) for d in group]
    total_inputs = sum(inputs)
    return max(worst_case_on(worst, d) + total_inputs - inputs[i] for i, d in enumerate(group))


def set_max_tokens(request: CanonicalRequest, tokens: int) -> None:
    """Lower the request's output limit in place (whichever field it uses)."""
    if "max_completion_tokens" in request:
        request["max_completion_tokens"] = tokens
    else:
        request["max_tokens"] = tokens


def streamed_text(chunk: Chunk, into: list[str]) -> None:
    """Append the output text of one canonical chunk (text, reasoning, tool arguments).
    Runs for every streamed chunk: the common one (one choice, text only) is a few
    dictionary reads."""
    choices = chunk.get("choices")
    if not choices:
        return
    for choice in choices:
        delta = choice.get("delta") if type(choice) is dict else None
        if type(delta) is not dict:
            continue
        text = delta.get("content")
        if text and type(text) is str:
            into.append(text)
        if text is None or len(delta) > 2 or (len(delta) == 2 and "role" not in delta):  # more than text
            text = delta.get("reasoning_content")
            if text and type(text) is str:
                into.append(text)
            calls = delta.get("tool_calls")
            if calls:
                for call in calls:
                    fn = call.get("function") if type(call) is dict else None
                    if type(fn) is dict:
                        into.append(str(fn.get("name") or "") + str(fn.get("arguments") or ""))


_ENCODINGS: dict[str, Any] = {}
"""Tokenizers loaded so far (by encoding name); loading one takes a second of CPU."""
_LOADING: set[str] = set()


def _load(name: str) -> None:
    _ENCODINGS[name] = get_encoding(name)


def load_tokenizers(models: list[str]) -> None:
    """Load the tokenizers of ``models`` now (blocking: call it in a thread)."""
    for name in {encoding_for_model(m) for m in models}:
        if name not in _ENCODINGS:
            _LOADING.add(name)
            _load(name)


def count_tokens(model: str, texts: list[str]) -> int:
    """Tokens of ``texts`` with ``model``'s tokenizer (tiktoken's closest; ~0.1 µs a token).

    The tokenizer is loaded in a thread the first time it is needed (loading it on the
    event loop would stall every stream of the process for a second); until then the
    count is characters / 3, which leans high."""
    if not texts:
        return 0
    name = encoding_for_model(model)
    encoding = _ENCODINGS.get(name)
    if encoding is None:
        if name not in _LOADING:
            _LOADING.add(name)
            threading.Thread(target=_load, args=(name,), name="clasp-budgets-tokenizer", daemon=True).start()
        return math.ceil(sum(len(t) for t in texts) / 3)
    return len(encoding.encode_ordinary("".join(texts)))


def attempt_costs(ctx: RequestContext) -> float:
    """The priced usage of every attempt of ``ctx`` that reported one."""
    total = 0.0
    for attempt in ctx.attempts:
        if attempt.usage is not None:
            try:
                total += request_cost(attempt.deployment, attempt.usage)
            except (TypeError, ValueError):
                continue
    return total


def cut_estimate(deployment: Deployment, input_tokens: int, output_tokens: int, usage: Usage | None) -> float:
    """What a stream that broke off cost at least: the input, and the output it showed
    (or what the provider reported, whichever is more)."""
    info = deployment.info
    reported_in = usage.input_tokens + usage.cache_read_input_tokens if usage else 0
    reported_out = usage.output_tokens if usage else 0
    out = max(reported_out, output_tokens)
    return max(reported_in, input_tokens) * float(info.input_cost_per_token or 0.0) \
        + out * float(info.output_cost_per_token or 0.0)
