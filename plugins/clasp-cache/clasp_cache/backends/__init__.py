"""Cache backends: the interface (:mod:`.base`), in memory (:mod:`.memory`, the default)
and Redis (:mod:`.redis`, shared by replicas). Other backends come from plugins through
``register_cache_backends``."""

from .base import (
    BackendLimits,
    BackendStats,
    CacheBackend,
    CacheEntry,
    CacheUnavailable,
    EntryMeta,
    Selector,
    SemanticLayer,
    VectorBatch,
)

__all__ = [
    "BackendLimits",
    "BackendStats",
    "CacheBackend",
    "CacheEntry",
    "CacheUnavailable",
    "EntryMeta",
    "Selector",
    "SemanticLayer",
    "VectorBatch",
]
