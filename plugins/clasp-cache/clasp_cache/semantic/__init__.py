"""The semantic layer of clasp-cache: a hit for a reworded question, never a wrong one.

``clasp_cache.plugin`` imports this package to check ``cache.semantic`` (``SETTINGS``)
and, only when ``enabled: true``, calls :func:`build`. Importing the package is cheap:
torch, sentence-transformers and the model load in the embedding worker thread, on the
first question (or at start-up with ``preload: true``), never on the event loop.

How a hit is decided (see the modules): the exact scope (tenant, route, parameters,
system prompt, tools, the conversation before the last user turn) must be equal
(``request``); the last user turn is embedded with all-MiniLM-L6-v2 (``embedder``);
the scope's vectors are searched in a per-process mirror (``index``); and the best
candidates must pass the matcher (``matcher``: cosine thresholds, the token guard of
``guard``/``tokens``, content-word overlap). Measured on ``tests/data/semantic_pairs.jsonl``
by ``bench/semantic_eval.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import SETTINGS

if TYPE_CHECKING:
    from ..backends.base import CacheBackend
    from .layer import SemanticCache

__all__ = ["SETTINGS", "build"]


def build(settings: dict[str, Any], backend: CacheBackend) -> SemanticCache:
    """The semantic layer over ``backend`` for the parsed ``cache.semantic`` settings."""
    from .layer import build_layer  # numpy and the layer only when the layer is on

    return build_layer(settings, backend)
