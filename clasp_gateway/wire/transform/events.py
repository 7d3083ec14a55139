"""Reading one stream's events: LiteLLM's parser for the provider, corrected where
the provider's :class:`~.spec.StreamSpec` says it must be, and error events mapped
to :class:`~clasp_gateway.errors.UpstreamError`."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from ...content_log import describe_error
from ...errors import UpstreamError
from ...redact import redact
from ...types import Chunk
from ..litellm_adapter import clean_error_text
from .convert import stream_object_to_chunk
from .recipe import Prepared

log = logging.getLogger("clasp.transform")


def _event_error(event: dict[str, Any]) -> tuple[str, int] | None:
    """(message, status) when a stream event is an error report (HTTP 200 streams
    may still fail: Anthropic ``event: error``, Gemini ``{"error": {...}}``)."""
    err = event.get("error")
    if event.get("type") == "error" or (isinstance(err, (dict, str)) and "candidates" not in event and "choices" not in event):
        if isinstance(err, dict):
            message = str(err.get("message") or err.get("type") or err)
            code = err.get("code")
            kind = err.get("type")
            status = code if isinstance(code, int) else {"overloaded_error": 529, "rate_limit_error": 429,
                                                         "api_error": 500}.get(str(kind), 502)
            return message, status
        return str(err), 502
    return None


class EventReader:
    """One stream's events (decoded JSON) -> canonical chunks, through LiteLLM's
    parser for the provider, corrected where :class:`StreamSpec` says it must be."""

    __slots__ = ("label", "finished", "_parser", "_parse", "_is_final", "_adapt", "_extra", "_fast", "_head")

    def __init__(self, prepared: Prepared, label: str, *, fast: bool = True) -> None:
        self.label = label
        self.finished = False
        # Every chunk of one stream carries the same id, model and creation time
        # (OpenAI clients read them; LiteLLM's Ollama parser invents an id per chunk).
        self._head = {"id": "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion.chunk",
                      "created": int(time.time()), "model": prepared.model}
        """The event carrying the real finish reason was read."""
        spec = prepared.spec
        self._parser = prepared.recipe.stream_parser(prepared)
        self._parse = self._parser.chunk_parser
        self._is_final, self._adapt, self._extra = spec.is_final, spec.adapt, spec.extra
        self._fast = spec.fast if fast else None

    def read(self, event: Any) -> list[Chunk]:
        """The chunks for one event (often none: block boundaries, pings)."""
        if not isinstance(event, dict):
            return []
        label = self.label
        failure = _event_error(event)
        if failure is not None:
            message, status = failure
            raise UpstreamError(
                f"{label}: provider error mid-stream: {redact(message)[:300]}",
                upstream_status=status, deployment=label, kind="protocol",
            )
        if self._fast is not None:
            quick = self._fast(event, self._parser)
            if quick is not None:
                quick.update(self._head)
                return [quick]
        out: list[Chunk] = []
        if self._extra is not None:
            made = self._extra(event)
            if made is not None:
                made.update(self._head)
                out.append(made)
        final = self._is_final(event) if self._is_final is not None else None
        parsed_event = self._adapt(event) if self._adapt is not None else event
        if parsed_event is None:
            return out
        try:
            obj = self._parse(parsed_event)
        except Exception as exc:  # LiteLLM parsers raise their own exception types
            code = getattr(exc, "status_code", None)
            log.info("%s: cannot read a stream event: %s", label, describe_error(exc))
            raise UpstreamError(
                f"{label}: cannot read a stream event: {clean_error_text(exc) or 'not a valid event'}",
                upstream_status=code if isinstance(code, int) and code >= 400 else 502,
                deployment=label, kind="protocol",
            ) from None
        if obj is None:
            return out
        chunk = stream_object_to_chunk(obj)
        choices = chunk["choices"]
        for choice in choices:
            reason = choice.get("finish_reason")
            if reason:
                if final is False:
                    choice["finish_reason"] = None  # LiteLLM guessed; not the end yet
                else:
                    choice["finish_reason"] = _map_finish(reason)
                    self.finished = True
        if "usage" not in chunk and (not choices or (not choices[0]["delta"] and not choices[0]["finish_reason"])):
            return out  # nothing a client could see
        chunk.update(self._head)
        out.append(chunk)
        return out


# Provider finish reasons LiteLLM's stream parsers pass through unmapped (Cohere's).
_FINISH = {
    "COMPLETE": "stop", "STOP_SEQUENCE": "stop", "MAX_TOKENS": "length", "TOOL_CALL": "tool_calls",
    "ERROR": "stop", "ERROR_TOXIC": "content_filter", "ERROR_LIMIT": "length",
}


def _map_finish(reason: str) -> str:
    return _FINISH.get(reason, reason)
