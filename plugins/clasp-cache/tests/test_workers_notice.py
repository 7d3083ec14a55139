"""``clasp serve`` with several workers and the ``memory`` backend: each worker keeps its
own answers, which the supervisor says once at start-up (``prepare_workers``)."""

from __future__ import annotations

import logging

import pytest
from clasp_cache.plugin import prepare_workers

from clasp_gateway.testing import config_from


def test_memory_with_several_workers_is_announced(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="clasp.cache")
    assert prepare_workers(config=config_from({"cache": {}}), workers=2) is None
    assert "cache.backend memory with 2 workers" in caplog.text
    caplog.clear()
    prepare_workers(config=config_from({"cache": {"backend": "redis", "backend_options": {"url": "redis://x"}}}),
                    workers=2)
    assert caplog.text == ""
    prepare_workers(config=config_from({"cache": {"enabled": False}}), workers=2)
    assert caplog.text == ""
