"""Fixtures for the Claude Code end-to-end tests: one gateway + fake upstream per module
(the CLI is the slow part), a fresh home and work directory per test (``tmp_path``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .stack import Stack, open_stack


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """An OpenAI-flavored fake upstream (gpt-4o) behind a gateway, per module."""
    yield from open_stack("openai")
