"""``cache.semantic`` in clasp.yaml: on/off, the matcher's thresholds, the embedder's limits.

Off by default: the layer imports torch and loads a 90 MB model, which a gateway that does
not want it must never pay for. The thresholds' defaults are the ones tuned on the tune
split of ``tests/data/semantic_pairs.jsonl`` (``bench/semantic_eval.py --tune``); every
limit is finite.
"""

from __future__ import annotations

from clasp_gateway import Boolean, Duration, Field, Integer, Number, Section

from .matcher import MatcherSettings

_DEFAULT = MatcherSettings()

SETTINGS = Section({
    "enabled": Field(Boolean(), False),
    "threshold": Field(Number(minimum=0.0, maximum=1.0), _DEFAULT.threshold),
    "threshold_reworded": Field(Number(minimum=0.0, maximum=1.0), _DEFAULT.threshold_reworded),
    "min_overlap": Field(Number(minimum=0.0, maximum=1.0), _DEFAULT.min_overlap),
    "top_k": Field(Integer(minimum=1, maximum=32), 4),
    "max_chars": Field(Integer(minimum=16, maximum=4000), 1000),
    "batch_window": Field(Duration(minimum=0.0), 0.003),
    "max_batch": Field(Integer(minimum=1, maximum=256), 32),
    "queue_size": Field(Integer(minimum=1, maximum=100_000), 256),
    "threads": Field(Integer(minimum=1, maximum=64), 1),
    "preload": Field(Boolean(), False),
    "max_scopes": Field(Integer(minimum=1, maximum=1_000_000), 1024),
    "max_vectors": Field(Integer(minimum=1, maximum=10_000_000), 100_000),
}, expected="a mapping of semantic cache settings")
"""The ``cache.semantic`` section (``enabled: true`` turns the layer on)."""
