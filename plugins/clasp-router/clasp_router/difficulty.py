"""A request's difficulty bucket, from cheap features (no embeddings, no model call).

The learned strategy keeps success estimates per (deployment, request class,
difficulty bucket): the class says what kind of work it is, the bucket how much of
it. A coding turn with a short conversation and three tools is not the same task as
one forty turns into an agent loop with a hundred thousand tokens of context; a
model that handles the first may fail the second, and averaging the two would send
both to the wrong place.

The features are the core's :class:`~clasp_gateway.RequestFeatures` (one pass over
the request, shared with the request classifier), so bucketing costs a handful of
comparisons. Points, then buckets:

- input size: under 2k tokens 0, under 16k 1, under 64k 2, else 3 points;
- tools offered: any 1 point, more than 20 one more;
- history: more than 8 messages 1 point, more than 40 one more; more than 10 tool
  results already in the conversation (a long agent loop) one more;
- reasoning asked: 1 point; images or documents: 1 point.

Buckets: 0-1 points ``0`` (easy), 2-3 ``1``, 4-5 ``2``, 6 and over ``3`` (hard).
"""

from __future__ import annotations

from clasp_gateway import RequestFeatures

BUCKETS = 4
"""Difficulty buckets, ``0`` (easy) to ``BUCKETS - 1`` (hard)."""


def difficulty_points(f: RequestFeatures) -> int:
    """The request's difficulty points (see the module docstring)."""
    size = f.input_tokens
    points = 0 if size < 2_000 else 1 if size < 16_000 else 2 if size < 64_000 else 3
    if f.tools:
        points += 1 + (f.tools > 20)
    if f.messages > 8:
        points += 1 + (f.messages > 40)
    if f.tool_results > 10:
        points += 1
    if f.thinking:
        points += 1
    if f.images:
        points += 1
    return points


def bucket_of(f: RequestFeatures) -> int:
    """The difficulty bucket, ``0`` to ``BUCKETS - 1``."""
    return min(BUCKETS - 1, difficulty_points(f) // 2)
