"""One way to serve an upstream stream to a client and close the request's books.

Every streaming answer (OpenAI chat completions, Anthropic Messages, the Anthropic
pass-through, a plugin's own API) goes through :func:`serve_stream`; only the bytes
differ, and those come from a :class:`StreamEncoder` the route passes in. So each
of these holds on every API, written once:

- **Keep-alives**: while the upstream is silent but alive (a model thinking), the
  client gets the encoder's keep-alive (a comment or a ``ping`` event), so proxies
  do not cut the connection.
- **One write per upstream read**: output is held while the provider has decoded
  chunks still waiting (:class:`~clasp_gateway.types.ReadAhead`) and written in one
  piece when none are, never held while the gateway waits on the network.
- **A cut stream says so**: a failure after the first byte ends the stream with the
  encoder's error event (a :class:`~clasp_gateway.errors.GatewayError` as it is, a
  gateway bug as a shaped ``api_error`` naming the request id, its traceback only
  in the log), never with a clean end.
- **The client leaving** (or the server dropping a client that stopped reading)
  stops the upstream call at once and is recorded as status 499
  (:class:`~clasp_gateway.shell.http.EventStreamResponse` cancels the task).
- **The books close exactly once**: :meth:`Gateway.finish
  <clasp_gateway.pipeline.Gateway.finish>` with the usage the encoder read, the
  status, the error and whether the stream was cut; ``on_stream_chunk`` sees every
  canonical chunk (isolated: a failing plugin never cuts the stream).
- The ``x-clasp-*`` response headers the pipeline set (``ctx.response_headers``)
  go out with the answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..errors import ApiError, GatewayError
from ..plugins import is_text_delta
from ..types import KEEPALIVE, Chunk, RequestContext, UpstreamStream, Usage
from .http import EventStreamResponse

if TYPE_CHECKING:
    from ..pipeline import Gateway

log = logging.getLogger("clasp.stream")

__all__ = ["StreamEncoder", "serve_stream", "stream_body"]


class StreamEncoder:
    """How one client API writes a canonical stream: subclass it per API (one
    instance per response) and hand it to :func:`serve_stream`.

    The defaults suit an OpenAI-style stream; override what your API needs. Keep
    :meth:`encode` cheap: it runs for every chunk."""

    keepalive: bytes = b": keep-alive\n\n"
    """Written while the upstream is silent (every ~10 s)."""

    done: bool = False
    """Set it (in :meth:`encode`) when the answer is complete before the upstream ended
    (a stop sequence matched): the upstream is not read any further."""

    @property
    def usage(self) -> Usage | None:
        """The usage the stream reported, for the ``record`` event."""
        return None

    def start(self) -> bytes:
        """The bytes written before the first chunk (``b""``: none)."""
        return b""

    def prepare(self, chunk: Chunk) -> Chunk | None:
        """The chunk as this API sends it (``None``: nothing to send). The default
        sends every chunk as it came."""
        return chunk

    def report_text_deltas(self) -> Any:
        """Asked once per stream, before the first chunk, when every ``on_stream_chunk``
        implementation skips plain text deltas (``@skips_text_deltas``). An encoder that
        reads every field of a chunk anyway (a translator) knows for free what
        :func:`~clasp_gateway.is_text_delta` would work out again: it may answer an
        object whose boolean ``text_delta`` attribute :meth:`encode` keeps, for every
        chunk, equal to ``is_text_delta`` of that chunk (or stricter: a chunk called a
        text delta wrongly would be hidden from the plugins). The hook is then called
        right after :meth:`encode`, on that verdict, with no second test per chunk. The
        default answers ``None``: the core tests each chunk itself. Asked only then, so
        the verdict costs nothing to a stream no plugin watches this way."""
        return None

    def canonical(self, chunk: Chunk) -> Chunk | None:
        """The canonical chunk ``on_stream_chunk`` receives for a prepared ``chunk``
        (``None``: none). Called only when a plugin implements the hook; override it
        when the stream carries an adapter's own events (the Anthropic pass-through)."""
        return chunk

    def encode(self, chunk: Chunk) -> bytes:
        """The bytes for one prepared chunk (``b""``: none yet)."""
        raise NotImplementedError

    def finish(self) -> bytes:
        """The bytes that end a complete answer (``data: [DONE]``, ``message_stop``...)."""
        return b""

    def error(self, error: GatewayError) -> bytes:
        """The in-stream error event for a failure after the answer started."""
        raise NotImplementedError


def serve_stream(
    gateway: Gateway, ctx: RequestContext, upstream: UpstreamStream, encoder: StreamEncoder
) -> EventStreamResponse:
    """The client's ``text/event-stream`` response for ``upstream`` (a stream the
    pipeline opened: its first chunk is in hand), written by ``encoder``, with the
    request's ``x-clasp-*`` headers; :meth:`Gateway.finish` is called when it ends,
    however it ends."""
    return EventStreamResponse(stream_body(gateway, ctx, upstream, encoder), headers=ctx.response_headers)


async def stream_body(
    gateway: Gateway, ctx: RequestContext, upstream: UpstreamStream, encoder: StreamEncoder
) -> AsyncIterator[bytes]:
    """The body of :func:`serve_stream` (an async generator of writes)."""
    status, cut = 200, True
    error: Exception | None = None
    chunk_hook = gateway.chunk_notifier(ctx) if gateway.chunk_hook else None
    # Plugins that all skip plain text deltas (skips_text_deltas) are not called for them;
    # only where the chunk sent is the canonical one (not a pass-through's own events).
    skip_text = chunk_hook is not None and getattr(chunk_hook, "skips_text_deltas", False) \
        and type(encoder).canonical is StreamEncoder.canonical
    # The encoder's own verdict (report_text_deltas): the hook is called after encode.
    verdict: Any = encoder.report_text_deltas() if skip_text else None
    late = chunk_hook if verdict is not None else None
    prepare = None if type(encoder).prepare is StreamEncoder.prepare else encoder.prepare
    encode = encoder.encode
    keepalive = encoder.keepalive
    read_ahead = ctx.read_ahead
    out: list[bytes] = []
    try:
        head = encoder.start()
        if head:
            yield head
        async for chunk in upstream:
            if chunk is KEEPALIVE:
                out.append(keepalive)
            else:
                sent = chunk if prepare is None else prepare(chunk)
                if sent is not None:
                    if chunk_hook is not None and late is None and not (skip_text and is_text_delta(sent)):
                        seen = encoder.canonical(sent)
                        if seen is not None:
                            chunk_hook(ctx, seen)  # isolated: a failing plugin never cuts the stream
                    data = encode(sent)
                    if late is not None and not verdict.text_delta:
                        late(ctx, sent)  # (canonical is the default there: the chunk itself)
                    if data:
                        out.append(data)
                if encoder.done:
                    break
            # One write per upstream read: hold output while more decoded chunks wait.
            if out and not read_ahead.pending:
                yield b"".join(out)
                out = []
        out.append(encoder.finish())
        cut = False
        yield b"".join(out)
    except GatewayError as exc:
        # The answer already started: say so in-stream; never a clean end.
        status, error = exc.status, exc
        yield b"".join(out) + encoder.error(exc)
    except (asyncio.CancelledError, GeneratorExit):
        status = 499  # the client went away
        raise
    except Exception as exc:  # a gateway bug: still an error event, never a silent cut
        log.error("%s unexpected error while streaming", ctx.request_id, exc_info=exc)
        status, error = 500, exc
        shaped = ApiError("internal gateway error; see the gateway log for request " + ctx.request_id)
        yield b"".join(out) + encoder.error(shaped)
    finally:
        await upstream.aclose()
        await gateway.finish(ctx, upstream, usage=encoder.usage, status=status, error=error, cut=cut)
