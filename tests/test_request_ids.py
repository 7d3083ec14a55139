"""Request ids: ``req_`` + milliseconds (12 hex digits) + 64 random bits (16 hex
digits). Ordered by time, so the ledger's and analytics' tables, keyed by request id,
are appended to rather than written all over (``new_request_id``'s docstring)."""

from __future__ import annotations

import re

import pytest

from clasp_gateway import pipeline
from clasp_gateway.pipeline import new_request_id

ID = re.compile(r"req_[0-9a-f]{28}")


def test_an_id_is_req_then_the_millisecond_then_random_hex(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline.time, "time_ns", lambda: 1_790_000_000_123_456_789)
    made = new_request_id()
    assert ID.fullmatch(made), made
    assert made.startswith(f"req_{1_790_000_000_123:012x}")
    assert int(made[4:16], 16) == 1_790_000_000_123


def test_ids_made_later_sort_after_earlier_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_790_000_000_000_000_000]
    monkeypatch.setattr(pipeline.time, "time_ns", lambda: now[0])
    made = []
    for _ in range(200):
        made.append(new_request_id())
        now[0] += 1_000_000  # one millisecond
    assert made == sorted(made)
    # Within one millisecond the random part decides: still all distinct.
    same_ms = {new_request_id() for _ in range(10_000)}
    assert len(same_ms) == 10_000
    assert {i[:16] for i in same_ms} == {f"req_{now[0] // 1_000_000:012x}"}


def test_ids_never_repeat_in_a_real_clock_burst() -> None:
    made = [new_request_id() for _ in range(50_000)]
    assert len(set(made)) == len(made)
    assert all(ID.fullmatch(i) for i in made[:100])
    assert made[0][:16] <= made[-1][:16]
