"""The ``litellm`` path: ``litellm.acompletion``, the catch-all for providers that
neither the direct path nor a ``transform`` recipe covers.

It costs ~7x a raw HTTP call and ~20x on a long stream (``docs/ARCHITECTURE.md``), so
it serves only what the gateway's own wire cannot. Also here: how a LiteLLM exception
becomes the gateway's error (:func:`clean_error_text`, used by the transform path for
LiteLLM's parsers too) and how LiteLLM's loggers join the gateway's
(:func:`adopt_litellm_logging`). LiteLLM is imported once, before serving, and only
when a deployment needs it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator
from typing import Any

from ..canonical import completion_to_chunk
from ..content_log import describe_error
from ..errors import UpstreamError
from ..redact import redact
from ..tracing import upstream_headers
from ..types import CanonicalRequest, Chunk, Deployment
from .credentials import KEY_FAILURES, Credentials, KeySlot, credential_settings
from .params import MODEL_PARAMS
from .ratelimits import parse_rate_limits
from .reads import ERROR_BODY_BYTES
from .upstream import KeyRefused, error_message, parse_retry_after, rotate_keys

log = logging.getLogger("clasp.providers")


_LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")
"""LiteLLM's loggers: each gets its own stream handler at import (see :func:`adopt_litellm_logging`)."""

_LITELLM_PREFIX = re.compile(r"^(?:\s*(?:litellm\.)?[A-Za-z0-9_]*(?:Error|Exception)\s*(?:[:-]\s*|\s+-\s+))+")
"""LiteLLM's prefixes: ``litellm.AuthenticationError: AuthenticationError: Ai21_chatException - ``."""
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)|\n\s+File \"|Received Model Group|LiteLLM Retried", re.S)
_STATUS_PREFIX = re.compile(r"^Error code: \d+\s*-?\s*")
_QUOTED_MESSAGE = re.compile(r"""['"]message['"]\s*:\s*(['"])(.+?)(?<!\\)\1""", re.S)


def adopt_litellm_logging() -> None:
    """Route LiteLLM's log records through the gateway's own handlers.

    ``import litellm`` adds its own stream handler to its loggers, which would
    print every record (provider error texts included) without the gateway's
    redaction and in another format; the records go to the root logger's handlers
    instead, where :func:`~clasp_gateway.redact.install_redaction` and the handler
    set up by ``clasp serve`` apply."""
    for name in _LITELLM_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


def clean_error_text(exc: BaseException) -> str:
    """The provider's own message from a LiteLLM exception, for a client: without
    LiteLLM's class-name prefixes, tracebacks, retry notes and echoed bodies,
    redacted, bounded (``""`` when nothing of the provider's is left)."""
    text = str(getattr(exc, "message", None) or exc)
    cut = _TRACEBACK.search(text)
    if cut is not None:
        text = text[: cut.start()]
    quoted = _QUOTED_MESSAGE.search(text)  # "... - {'error': {'message': '...'}}"
    if quoted is not None:
        text = quoted.group(2)
    text = _LITELLM_PREFIX.sub("", " ".join(text.split()))
    text = _STATUS_PREFIX.sub("", text)
    if text.startswith("<") or "<html" in text[:200].lower():
        return "the upstream answered with an HTML page (is api_base right?)"
    if "Original Response:" in text:  # a parser quoting what it could not read
        text = text.split("Original Response:", 1)[0].rstrip(" ,-")
    return redact(text)[:300].strip()


def _provider_message(exc: BaseException) -> str:
    """The provider's message from the answer a LiteLLM exception carries, when its
    own text has none: LiteLLM's OpenAI-compatible path says only ``Error code: 401``
    for a body it cannot read as OpenAI's (AI21's ``{"detail": "..."}``)."""
    response = getattr(exc, "response", None)
    try:
        content = response.content if response is not None else None  # read by the SDK on an error status
        ctype = str(response.headers.get("content-type", "")) if response is not None else ""
    except Exception:  # not an httpx.Response, or its body was not read
        return ""
    if not isinstance(content, (bytes, bytearray)) or not content:
        return ""
    return redact(error_message(bytes(content[:ERROR_BODY_BYTES]), ctype))[:300].strip()


def _litellm_error(exc: BaseException, deployment: Deployment) -> UpstreamError:
    """A LiteLLM exception as the gateway's error: the provider's status and a clean
    message; LiteLLM's internals (class names, tracebacks) only go to the log."""
    label = deployment.id
    status = getattr(exc, "status_code", None)
    log.info("%s: LiteLLM call failed: %s", label, describe_error(exc))
    name = type(exc).__name__
    if name in ("Timeout", "APITimeoutError") or status == 408:
        return UpstreamError(f"{label}: the provider did not answer in time", upstream_status=0, deployment=label,
                             kind="timeout")
    message = clean_error_text(exc)
    if name == "APIConnectionError" or not isinstance(status, int) or status < 400 or message.startswith(
            "Connection error"):
        return UpstreamError(f"{label}: cannot reach the provider, or the call failed before an answer "
                             "(details in the gateway log)", upstream_status=0, deployment=label, kind="connect")
    headers = getattr(exc, "litellm_response_headers", None) or getattr(getattr(exc, "response", None), "headers", None)
    if not message:
        message = _provider_message(exc)
    if not message:
        ctype = str((headers or {}).get("content-type", ""))
        message = "the upstream answered with an HTML page (is api_base right?)" if "html" in ctype else "(no message)"
    return UpstreamError(
        f"{label}: provider answered {status}: {message}", upstream_status=status, deployment=label,
        retry_after=parse_retry_after(headers or {}, status),
    )


class LiteLLMAdapter:
    """The catch-all: ``litellm.acompletion`` for providers without a direct path.

    LiteLLM is imported once, before the app serves, and only if a deployment needs
    it (``import litellm`` costs ~5 s of CPU here).

    ``acompletion`` takes a great many keyword arguments that decide where a call
    goes and what it carries; it gets only the canonical OpenAI parameters of the
    request (:mod:`clasp_gateway.wire.params`), the deployment's ``extra_body``, and
    then the gateway's own settings, which nothing before them can replace. LiteLLM
    retries nothing itself (``num_retries=0``, ``max_retries=0``): the fallback
    policy (``on_error``) is the only one, so one attempt is one upstream call.

    The headers a plugin set for this request's upstream calls
    (:func:`~clasp_gateway.set_upstream_headers`: clasp-otel's ``traceparent``) go in
    ``extra_headers``, under the deployment's own; a client can set neither (its body
    reaches LiteLLM only through the parameter allowlist, its headers not at all).
    """

    def __init__(self, credentials: Credentials | None = None) -> None:
        self._litellm: Any = None
        self.credentials = credentials or Credentials()
        self._openai_params: dict[str, frozenset[str] | None] = {}

    def ensure_loaded(self) -> Any:
        if self._litellm is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            # LiteLLM's own handler (removed just after, see adopt_litellm_logging) would
            # print what LiteLLM logs while it imports a second time, in its format.
            os.environ.setdefault("LITELLM_LOG", "CRITICAL")
            import litellm

            litellm.suppress_debug_info = True
            # Per call instead (call_params): set here, it would also make LiteLLM's
            # OpenAI-compatible path send a request again after a 422 (openai.py).
            litellm.drop_params = False
            adopt_litellm_logging()
            self._litellm = litellm
        return self._litellm

    @staticmethod
    def call_params(deployment: Deployment, body: CanonicalRequest, *, stream: bool) -> dict[str, Any]:
        """The keyword arguments of ``litellm.acompletion`` for ``body`` (without the
        key and Azure AD token, added per attempt)."""
        params: dict[str, Any] = {k: body[k] for k in MODEL_PARAMS if body.get(k) is not None}
        if deployment.extra_body:
            params.update(deployment.extra_body)  # the operator's, as before
        params["messages"] = body.get("messages") or []
        params["model"] = f"{deployment.provider}/{deployment.model}"
        if deployment.api_base:
            params["api_base"] = deployment.api_base
        if deployment.api_version:
            params["api_version"] = deployment.api_version
        extra_headers = dict(deployment.headers)
        for name, secret in credential_settings(deployment).secret_headers.items():
            if secret.value:
                extra_headers[name] = secret.value
        params["extra_headers"] = extra_headers
        params["timeout"] = deployment.timeouts.total
        params["stream"] = stream
        params["num_retries"] = 0  # LiteLLM's own retry loop
        params["max_retries"] = 0  # the provider SDK's (the openai client retries twice by default)
        params["drop_params"] = True  # parameters the provider does not take are left out
        return params

    def openai_params(self, deployment: Deployment) -> frozenset[str] | None:
        """The OpenAI parameters ``deployment``'s provider takes, when LiteLLM calls it
        through its OpenAI-compatible path (the openai SDK: AI21's ``ai21_chat``,
        Cerebras, NVIDIA NIM...), else ``None``. Resolved once per deployment."""
        if deployment.id not in self._openai_params:
            litellm = self.ensure_loaded()
            found: frozenset[str] | None = None
            try:
                provider = litellm.get_llm_provider(
                    f"{deployment.provider}/{deployment.model}", api_base=deployment.api_base or None)[1]
                if provider in litellm.openai_compatible_providers:
                    found = frozenset(litellm.get_supported_openai_params(
                        model=deployment.model, custom_llm_provider=provider) or ())
            except Exception:  # LiteLLM does not know it: acompletion will say so
                found = None
            self._openai_params[deployment.id] = found
        return self._openai_params[deployment.id]

    def narrowed(self, deployment: Deployment, params: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        """``params`` for LiteLLM's OpenAI-compatible path, where one attempt must stay
        one upstream call: the openai SDK retries twice on its own unless it is handed
        ``max_retries`` (which LiteLLM passes on only when allowed: most providers'
        configs do not list it), and with ``drop_params`` a 422 makes LiteLLM send the
        request again without the fields it names. So the request carries only
        parameters the provider takes, dropped here instead."""
        supported = self.openai_params(deployment)
        if supported is None:
            return params
        for key in MODEL_PARAMS:
            if key in params and key not in supported and key not in deployment.extra_body:
                del params[key]
        params["drop_params"] = False
        params["allowed_openai_params"] = ["max_retries"]  # to the SDK, never into the body
        if stream:
            # The provider's usage on its last chunk is dropped unless asked for; LiteLLM
            # sends stream_options upstream only to providers that take it.
            params["stream_options"] = {"include_usage": True}
        return params

    async def open(
        self, deployment: Deployment, body: CanonicalRequest, *, stream: bool
    ) -> AsyncIterator[Chunk]:
        litellm = self.ensure_loaded()
        params = self.narrowed(deployment, self.call_params(deployment, body, stream=stream), stream=stream)
        extra = upstream_headers()  # a plugin's per-request headers (traceparent), as on the direct wire
        if extra:
            params["extra_headers"] = {**extra, **params["extra_headers"]}  # the deployment's own win
        pool = self.credentials.pool(deployment)

        async def call(slot: KeySlot | None) -> Any:
            # A refused key: the same request on the next key (upstream.rotate_keys).
            if slot is not None:
                params["api_key"] = slot.value
            try:
                return await litellm.acompletion(**params)
            except Exception as exc:
                status = getattr(exc, "status_code", None)
                if slot is None or status not in KEY_FAILURES:
                    raise
                headers = getattr(exc, "litellm_response_headers", None) or getattr(
                    getattr(exc, "response", None), "headers", None)
                raise KeyRefused(_litellm_error(exc, deployment), int(status), parse_rate_limits(headers or {})) from None

        try:
            bearer = await self.credentials.bearer_token(deployment)
            if bearer is not None:
                params["azure_ad_token"] = bearer
            result = await rotate_keys(pool, deployment.id, call)
            if not stream:
                yield completion_to_chunk(_with_reported_cost(result, result.model_dump()))
                return
            finished = False
            async for chunk in result:
                data = chunk.model_dump(exclude_none=True)
                if data.get("usage"):
                    _with_reported_cost(chunk, data)
                for choice in data.get("choices") or ():
                    if choice.get("finish_reason"):
                        finished = True
                yield data
            if not finished:
                raise UpstreamError(
                    f"{deployment.id}: stream ended before the answer was complete",
                    upstream_status=0, deployment=deployment.id, kind="protocol",
                )
        except UpstreamError:
            raise
        except Exception as exc:  # LiteLLM maps provider errors to its own classes
            raise _litellm_error(exc, deployment) from None


def _with_reported_cost(response: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Put LiteLLM's ``response_cost`` (its hidden params) into ``data["usage"]["cost"]``,
    where :meth:`~clasp_gateway.types.Usage.from_openai` reads a provider-reported
    cost, unless the provider reported one itself."""
    hidden = getattr(response, "_hidden_params", None)
    cost = hidden.get("response_cost") if isinstance(hidden, dict) else None
    usage = data.get("usage")
    if isinstance(cost, (int, float)) and not isinstance(cost, bool) and isinstance(usage, dict):
        usage.setdefault("cost", float(cost))
    return data
