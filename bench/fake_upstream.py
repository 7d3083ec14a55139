"""A deliberately cheap OpenAI-compatible upstream for the benchmark.

Runs as its own process (so its CPU is never counted as the gateway's) on
127.0.0.1, with a bare ``asyncio.Protocol`` HTTP/1.1 parser and answers rendered
once at start-up: per request it finds the model name in the body and writes
pre-built bytes. It does not parse JSON and records nothing.

Answers (``POST .../chat/completions``), chosen by the upstream model name:

- ``bench-short-model``: a short streamed turn shaped like OpenAI's (role delta,
  5 text deltas, one tool call in 1 + 5 argument deltas, finish ``tool_calls``, a
  usage chunk, ``[DONE]``): 15 events, written back to back.
- ``bench-long-model``: a 200-chunk text stream (role delta, 198 text deltas, finish
  ``stop``; then usage and ``[DONE]``), written back to back.
- ``bench-paced-model``: the same 200 chunks, one every ``--gap-ms`` milliseconds. The
  pause makes every chunk a separate network read for the gateway, as with a real
  model producing tokens.

Non-streaming requests get the equivalent ``chat.completion`` JSON. Each event is a
separate chunk of a ``Transfer-Encoding: chunked`` response, as OpenAI sends it.

Usage: ``python fake_upstream.py --port 0 [--gap-ms 1]``; prints ``PORT <n>`` once
listening; stops on SIGTERM/SIGINT or when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

_ID = "chatcmpl-BENCHabcdefghijklmnopqrstuvwxy"
_FP = "fp_0123456789"


def _chunk(model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": _ID, "object": "chat.completion.chunk", "created": 1760000000, "model": model,
        "service_tier": "default", "system_fingerprint": _FP,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def short_turn(model: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Events and the equivalent completion for the short answer (text + one tool call)."""
    text = ["I'll fix", " the tokenizer", " so it keeps", " the last", " piece."]
    args = ['{"file_path": "/home', '/dev/project/src/parser.py", ', '"old_string": "if piece', ' and not last:", ',
            '"new_string": "if piece:"}']
    call_id = "call_BENCH0123456789abcdefgh"
    events = [_chunk(model, {"role": "assistant", "content": "", "refusal": None}, None)]
    events += [_chunk(model, {"content": t}, None) for t in text]
    events.append(_chunk(model, {"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                                  "function": {"name": "Edit", "arguments": ""}}]}, None))
    events += [_chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": a}}]}, None) for a in args]
    events.append(_chunk(model, {}, "tool_calls"))
    usage = _usage(6500, 42)
    events.append({**_chunk(model, {}, None), "choices": [], "usage": usage})
    message = {"role": "assistant", "content": "".join(text), "refusal": None, "annotations": [],
               "tool_calls": [{"id": call_id, "type": "function",
                               "function": {"name": "Edit", "arguments": "".join(args)}}]}
    return events, _completion(model, message, "tool_calls", usage)


def long_turn(model: str, n: int = 200) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Events and completion for an ``n``-chunk text answer."""
    words = [f" word{i % 50}" for i in range(n - 2)]
    events = [_chunk(model, {"role": "assistant", "content": "", "refusal": None}, None)]
    events += [_chunk(model, {"content": w}, None) for w in words]
    events.append(_chunk(model, {}, "stop"))
    usage = _usage(6500, n - 2)
    events.append({**_chunk(model, {}, None), "choices": [], "usage": usage})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(words), "refusal": None, "annotations": []}
    return events, _completion(model, message, "stop", usage)


def _completion(model: str, message: dict[str, Any], finish: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": _ID, "object": "chat.completion", "created": 1760000000, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage, "service_tier": "default", "system_fingerprint": _FP}


def _frame(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Answer:
    """Pre-rendered bytes of one answer, stream and JSON."""

    def __init__(self, events: list[dict[str, Any]], completion: dict[str, Any], gap: float) -> None:
        sse = [b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events]
        sse.append(b"data: [DONE]\n\n")
        self.stream_head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"transfer-encoding: chunked\r\ncache-control: no-cache\r\nx-request-id: req_bench\r\n\r\n"
        )
        self.stream_frames = [_frame(s) for s in sse] + [b"0\r\n\r\n"]
        self.stream_burst = self.stream_head + b"".join(self.stream_frames)
        body = json.dumps(completion, separators=(",", ":")).encode()
        self.json = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"x-request-id: req_bench\r\n\r\n%s" % (len(body), body)
        )
        self.gap = gap


_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class FakeUpstream(asyncio.Protocol):
    """One client connection: parse requests, answer from pre-rendered bytes."""

    answers: dict[bytes, Answer] = {}
    default: Answer | None = None
    served = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = bytearray()
        self.need = -1  # total bytes of the current request once its head is parsed
        self.busy = False  # a paced answer is still being written
        self.closed = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._process()

    def _process(self) -> None:
        while not self.busy:
            if self.need < 0:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buf[:end]).lower()
                length = 0
                pos = head.find(b"\r\ncontent-length:")
                if pos >= 0:
                    stop = head.find(b"\r\n", pos + 2)
                    length = int(head[pos + 17: stop if stop >= 0 else None])
                self.head_len = end + 4
                self.need = end + 4 + length
                self.request_line = head[: head.find(b"\r\n")]
            if len(self.buf) < self.need:
                return
            body = bytes(self.buf[self.head_len: self.need])
            del self.buf[: self.need]
            self.need = -1
            self._answer(self.request_line, body)

    def _answer(self, request_line: bytes, body: bytes) -> None:
        FakeUpstream.served += 1
        if not request_line.startswith(b"post ") or b"/chat/completions" not in request_line:
            self.transport.write(_NOT_FOUND)
            return
        answer = self.default
        for name, candidate in self.answers.items():
            if name in body:
                answer = candidate
                break
        assert answer is not None
        stream = b'"stream":true' in body or b'"stream": true' in body
        if not stream:
            self.transport.write(answer.json)
        elif answer.gap <= 0:
            self.transport.write(answer.stream_burst)
        else:
            self.busy = True
            asyncio.get_running_loop().create_task(self._paced(answer))

    async def _paced(self, answer: Answer) -> None:
        write = self.transport.write
        write(answer.stream_head)
        for frame in answer.stream_frames:
            if self.closed:
                return
            write(frame)
            await asyncio.sleep(answer.gap)
        self.busy = False
        self._process()


async def main_async(port: int, gap_ms: float) -> None:
    gap = gap_ms / 1000
    for name, (events, completion), g in (
        ("bench-short-model", short_turn("bench-short-model"), 0.0),
        ("bench-long-model", long_turn("bench-long-model"), 0.0),
        ("bench-paced-model", long_turn("bench-paced-model"), gap),
    ):
        FakeUpstream.answers[name.encode()] = Answer(events, completion, g)
    FakeUpstream.default = FakeUpstream.answers[b"bench-short-model"]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakeUpstream, "127.0.0.1", port, backlog=1024)
    actual = server.sockets[0].getsockname()[1]
    print(f"PORT {actual}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Stop when the parent goes away (stdin closes), so no fake outlives a bench run.
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch_stdin() -> None:
        while await reader.read(1024):
            pass
        stop.set()

    watcher = loop.create_task(watch_stdin())
    await stop.wait()
    watcher.cancel()
    server.close()
    print(f"SERVED {FakeUpstream.served}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--gap-ms", type=float, default=1.0, help="pause between chunks of the paced stream")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_async(args.port, args.gap_ms))
    else:
        uvloop.run(main_async(args.port, args.gap_ms))


if __name__ == "__main__":
    main()
