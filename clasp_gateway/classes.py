"""Request classes: what kind of request this is, computed once per request.

Analytics group by class, cache policy decides per class, routing picks models per
class; all three read the same answer from :attr:`RequestContext.request_class`
(one primary class) and :attr:`RequestContext.traits` (every class that matched).

A class is a name and a predicate over :class:`RequestFeatures` (cheap facts about
the canonical request, gathered in one pass). Built-in classes, in priority order
(the first that matches is the primary class):

``background``
    Small helper calls that offer no tools: a ``max_tokens`` at or under
    ``background_max_tokens`` (a ``max_tokens: 1`` quota probe, short titles and topic
    checks), or a structured-output request (a JSON schema the answer must match)
    whose input is not long: Claude Code 2.1's session titles ask for
    ``{"title": ...}`` through ``output_config.format`` with ``max_tokens: 128000``
    and an effort, so their size alone does not give them away. A format plugin may
    also mark one (``hints.task = "background"``).
``long_context``
    An estimated input of at least ``long_context_tokens``.
``images``
    Any image or document part in the conversation.
``coding``
    A turn with tools offered: Claude Code's main loop (which always asks for an
    effort or thinking as well, so ``coding`` comes before ``thinking``).
``thinking``
    Reasoning requested (Anthropic ``thinking`` or ``output_config.effort``, OpenAI
    ``reasoning_effort``) on a turn without tools.
``question``
    Everything else: a plain question.

Plugins add classes with ``register_request_classes`` (placed before the built-in
ones unless ``after=`` names a class), and ``classes:`` in clasp.yaml sets the
thresholds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .types import CanonicalRequest, RequestHints

BACKGROUND_MAX_TOKENS = 512
"""``max_tokens`` at or under this, with no tools offered, marks a background call."""

LONG_CONTEXT_TOKENS = 100_000
"""An estimated input at or above this marks a long-context request."""

_CHARS_PER_TOKEN = 4.0
_MEDIA = frozenset({"image_url", "image", "input_image", "file", "document", "input_audio"})


@dataclass(slots=True, frozen=True)
class RequestFeatures:
    """Cheap facts about one canonical request, gathered in a single pass."""

    input_tokens: int
    """Estimated input tokens (UTF-8 bytes / 4; media not counted)."""
    messages: int
    tools: int
    """Tools offered to the model."""
    tool_results: int
    """Tool results already in the conversation (an agent loop under way)."""
    images: int
    """Image, document and audio parts."""
    thinking: bool
    max_tokens: int | None
    task: str | None
    """The format plugin's hint (``hints.task``), e.g. ``"background"``."""
    stream: bool
    structured: bool = False
    """The answer must match a JSON schema (OpenAI ``response_format`` ``json_schema``
    or ``json_object``, or ``hints.structured_output`` for a format whose field the
    canonical body does not carry, such as Anthropic's ``output_config.format``)."""


Predicate = Callable[[RequestFeatures], bool]


@dataclass(slots=True, frozen=True)
class RequestClass:
    """A named class of requests and the predicate that recognises it."""

    name: str
    predicate: Predicate
    description: str = ""


def features(request: CanonicalRequest, hints: RequestHints | None = None) -> RequestFeatures:
    """Gather :class:`RequestFeatures` from a canonical (OpenAI chat) request."""
    size = 0
    images = 0
    tool_results = 0
    messages = request.get("messages")
    if type(messages) is not list:
        messages = []
    for message in messages:  # one pass, as few lookups as possible: it runs per request
        if type(message) is not dict:
            continue
        content = message.get("content")
        if type(content) is str:
            size += len(content)
        elif type(content) is list:
            for part in content:
                if type(part) is dict:
                    text = part.get("text")
                    if type(text) is str:
                        size += len(text)
                    elif part.get("type") in _MEDIA:
                        images += 1
        role = message.get("role")
        if role == "tool":
            tool_results += 1
        elif role == "assistant":
            calls = message.get("tool_calls")
            if type(calls) is list:
                for call in calls:
                    fn = call.get("function") if type(call) is dict else None
                    arguments = fn.get("arguments") if type(fn) is dict else None
                    if type(arguments) is str:
                        size += len(arguments)
    tools = request.get("tools")
    tool_count = len(tools) if type(tools) is list else 0
    raw_max = request.get("max_completion_tokens") or request.get("max_tokens")
    max_tokens = raw_max if type(raw_max) is int else None
    thinking = bool(
        request.get("reasoning_effort")
        or (hints is not None and (hints.reasoning_effort or hints.thinking_budget))
    )
    response_format = request.get("response_format")
    structured = (
        type(response_format) is dict and response_format.get("type") in ("json_schema", "json_object")
    ) or (hints is not None and hints.structured_output)
    return RequestFeatures(
        input_tokens=int(size / _CHARS_PER_TOKEN),
        messages=len(messages),
        tools=tool_count,
        tool_results=tool_results,
        images=images,
        thinking=thinking,
        max_tokens=max_tokens,
        task=hints.task if hints is not None else None,
        stream=bool(request.get("stream")),
        structured=bool(structured),
    )


def builtin_classes(
    *, background_max_tokens: int = BACKGROUND_MAX_TOKENS, long_context_tokens: int = LONG_CONTEXT_TOKENS
) -> list[RequestClass]:
    """The built-in classes, in priority order, with the given thresholds."""

    def background(f: RequestFeatures) -> bool:
        if f.task == "background":
            return True
        if f.tools:
            return False
        if f.max_tokens is not None and f.max_tokens <= background_max_tokens:
            return True
        return f.structured and f.input_tokens < long_context_tokens

    return [
        RequestClass("background", background, "small helper calls: titles, topic checks, one-token probes"),
        RequestClass("long_context", lambda f: f.input_tokens >= long_context_tokens, "a long input"),
        RequestClass("images", lambda f: f.images > 0, "images or documents in the conversation"),
        RequestClass("coding", lambda f: f.tools > 0, "a turn with tools offered (an agent loop)"),
        RequestClass("thinking", lambda f: f.thinking, "reasoning requested"),
        RequestClass("question", lambda f: True, "a plain question"),
    ]


class Classifier:
    """Classes in priority order; :meth:`classify` gives the primary class and traits."""

    __slots__ = ("classes",)

    def __init__(self, classes: Iterable[RequestClass]) -> None:
        self.classes: list[RequestClass] = []
        for cls in classes:
            if any(c.name == cls.name for c in self.classes):
                raise ValueError(f"request class {cls.name!r} is registered twice")
            self.classes.append(cls)

    @property
    def names(self) -> list[str]:
        """Every class name, in priority order."""
        return [c.name for c in self.classes]

    def classify(self, feats: RequestFeatures) -> tuple[str, frozenset[str]]:
        """The primary class (the first that matches) and every class that matches.

        A plugin predicate that raises is treated as "no match": classification never
        fails a request.
        """
        primary: str | None = None
        traits: set[str] = set()
        for cls in self.classes:
            try:
                matched = cls.predicate(feats)
            except Exception:
                matched = False
            if matched:
                traits.add(cls.name)
                if primary is None:
                    primary = cls.name
        return primary or "question", frozenset(traits)


def build_classifier(
    settings: Mapping[str, Any], extra: Iterable[tuple[RequestClass, str | None]] = ()
) -> Classifier:
    """The classifier for ``classes:`` settings plus plugin classes.

    ``extra`` holds ``(class, after)`` pairs: a plugin class goes before the built-in
    ones (in the order given), or right after the class named by ``after`` (a
    built-in class or another plugin's).
    """
    ordered = builtin_classes(
        background_max_tokens=int(settings.get("background_max_tokens", BACKGROUND_MAX_TOKENS)),
        long_context_tokens=int(settings.get("long_context_tokens", LONG_CONTEXT_TOKENS)),
    )
    head: list[RequestClass] = []
    pending: list[tuple[RequestClass, str]] = []
    for cls, after in extra:
        if after is None:
            head.append(cls)
        else:
            pending.append((cls, after))
    ordered = head + ordered
    while pending:  # a class may follow one that is itself placed with ``after``
        placed = False
        for item in reversed(list(pending)):  # reversed: two after one class keep their order
            cls, after = item
            index = next((i for i, c in enumerate(ordered) if c.name == after), None)
            if index is not None:
                ordered.insert(index + 1, cls)
                pending.remove(item)
                placed = True
        if not placed:
            cls, after = pending[0]
            raise ValueError(f"request class {cls.name!r}: after={after!r} names no class")
    return Classifier(ordered)
