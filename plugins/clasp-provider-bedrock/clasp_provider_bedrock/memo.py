"""LiteLLM's Converse request build, with its per-model and per-tool-set work done once.

``AmazonConverseConfig.transform_request`` costs ~2.3 ms of CPU for a Claude Code request
(20 KB, 15 tools; ``bench/bedrock_request_cpu.py``), and most of it does not depend on
the conversation: each request looks the model's capabilities up in the cost map a few
dozen times (``get_supported_openai_params``, ``supports_*``), translates the same
tool definitions to Converse ``toolSpec`` blocks (``_process_tools_and_beta``, called
twice per request: ~1 ms alone), and deep-copies and walks the parameters, tools
included (``_prepare_request_params``). A client such as Claude Code sends the same
tools and parameters on every turn.

:func:`remember_answers` wraps those methods on one config instance (the adapter's own;
LiteLLM's module and class are untouched) with a bounded memo: the key is a 128-bit
BLAKE2b digest of the arguments serialised canonically (``orjson``, sorted keys); the
answer is kept serialised and decoded afresh for each caller, so no caller can change
what the next one gets (LiteLLM edits the lists it is handed). Arguments or answers
that are not plain JSON (a pydantic object, bytes...) are not remembered: the method
runs as before. The methods are pure
in their arguments and the cost map, which the gateway reads once at start-up.
:data:`REMEMBERED` names them; a LiteLLM release that renames one makes
:func:`remember_answers` raise, and the plugin's contract test fail, rather than the
request build silently slow down again.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["MEMO_SIZE", "REMEMBERED", "remember_answers"]

REMEMBERED = ("_process_tools_and_beta", "get_supported_openai_params", "map_openai_params",
              "_prepare_request_params")
"""The config methods whose answers are remembered (pure in their arguments)."""

CONSUMED = {"_prepare_request_params": ("_output_config_normalized",)}
"""Keys a method removes from the dict it is given first (its one edit of its
arguments): removed on every call, answered from the memo or not."""

MEMO_SIZE = 64
"""Distinct argument sets remembered per method (least recently used dropped first):
a gateway serves a handful of tool sets and models. An answer holds the tool set (Claude
Code's: ~15 KB), so the memo stays under ~3 MB per method however many tool sets come."""

_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def _remembered(method: Callable[..., Any], size: int, consumed: tuple[str, ...] = ()) -> Callable[..., Any]:
    answers: OrderedDict[bytes, tuple[bool, bytes]] = OrderedDict()

    def remembered(*args: Any, **kwargs: Any) -> Any:
        try:
            key = hashlib.blake2b(orjson.dumps([args, kwargs], option=_OPTS), digest_size=16).digest()
        except TypeError:  # not plain JSON: not remembered
            return method(*args, **kwargs)
        if consumed and args and isinstance(args[0], dict):
            for name in consumed:
                args[0].pop(name, None)  # what the method does to its argument (in the key already)
        found = answers.get(key)
        if found is None:
            answer = method(*args, **kwargs)
            try:
                found = (isinstance(answer, tuple), orjson.dumps(answer))
            except TypeError:
                return answer
            answers[key] = found
            if len(answers) > size:
                answers.popitem(last=False)
        else:
            answers.move_to_end(key)
        was_tuple, data = found
        decoded = orjson.loads(data)
        return tuple(decoded) if was_tuple else decoded

    remembered.__wrapped__ = method  # type: ignore[attr-defined]
    return remembered


def remember_answers(config: Any, size: int = MEMO_SIZE) -> Any:
    """``config`` (an ``AmazonConverseConfig``) with :data:`REMEMBERED` memoized on the
    instance; raises ``AttributeError`` naming a method LiteLLM no longer has."""
    for name in REMEMBERED:
        method = getattr(config, name, None)
        if not callable(method):
            raise AttributeError(f"LiteLLM's AmazonConverseConfig has no {name}(): clasp-provider-bedrock's "
                                 "request memo (memo.py) needs updating for this LiteLLM")
        setattr(config, name, _remembered(method, size, CONSUMED.get(name, ())))
    return config
