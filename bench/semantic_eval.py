"""Measure the semantic cache's matcher on the labelled pairs: recall and wrong-hit rate.

    .venv/bin/python bench/semantic_eval.py                  # the shipped default, both splits
    .venv/bin/python bench/semantic_eval.py --split tune --show   # misjudged tune pairs
    .venv/bin/python bench/semantic_eval.py --tune           # grid search, on the tune split only
    .venv/bin/python bench/semantic_eval.py --cosine 0.95    # a plain cosine threshold, for reference

Each row of ``tests/data/semantic_pairs.jsonl`` stores request ``a`` and looks up request
``b``. A hit needs the same scope (tenant, route and everything but the last user turn's
words: ``clasp_cache.semantic.request``) and the matcher's yes. Recall is the share of
``hit`` rows that hit; the wrong-hit rate the share of ``miss`` rows that hit, over all
miss rows and over the "content" ones alone (those whose contexts are equal, so the scope
cannot refuse them). ``--tune`` never reads the held-out rows.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins" / "clasp-cache"))

from clasp_cache.semantic.matcher import Matcher, MatcherSettings, features  # noqa: E402
from clasp_cache.semantic.request import split_request  # noqa: E402
from clasp_cache.semantic.tokens import for_embedding  # noqa: E402

PAIRS = ROOT / "tests" / "data" / "semantic_pairs.jsonl"
ROUTE = "/v1/messages"
CONTEXT_CATEGORIES = frozenset({"context_system", "context_tools", "context_conversation", "context_tool_result", "tenant"})


@dataclass(slots=True)
class Pair:
    row: dict[str, Any]
    same_scope: bool
    text_a: str
    text_b: str
    cosine: float
    exact: bool
    refused: str | None
    share: float


def load_pairs(path: Path = PAIRS) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def prepare(rows: list[dict[str, Any]], embed: Any) -> list[Pair]:
    """Scope each pair and compute its cosine (``embed``: list[str] -> unit vectors)."""
    keyed = []
    for row in rows:
        ka = split_request(row["a"], tenant=row["tenant_a"], route=ROUTE)
        kb = split_request(row["b"], tenant=row["tenant_b"], route=ROUTE)
        assert ka is not None and kb is not None, row["id"]
        keyed.append((row, ka, kb))
    texts = sorted({for_embedding(k.text) for _, ka, kb in keyed for k in (ka, kb)})
    vectors = embed(texts)
    index = {t: vectors[i] for i, t in enumerate(texts)}
    pairs = []
    for row, ka, kb in keyed:
        cosine = float(np.dot(index[for_embedding(ka.text)], index[for_embedding(kb.text)]))
        pairs.append(Pair(row, ka.scope == kb.scope, ka.text, kb.text, cosine, ka.text.strip() == kb.text.strip(),
                          *features(kb.text, ka.text)))
    return pairs


def judge(pair: Pair, matcher: Matcher | None, cosine: float | None = None) -> tuple[bool, str]:
    if not pair.same_scope:
        return False, "scope"
    if matcher is None:
        assert cosine is not None
        return pair.cosine >= cosine, "cosine"
    if pair.exact:
        return True, "exact"
    verdict = matcher.decide(pair.cosine, pair.refused, pair.share)
    return verdict.hit, verdict.reason


@dataclass(slots=True)
class Score:
    hits: int = 0
    hit_rows: int = 0
    wrong: int = 0
    miss_rows: int = 0
    wrong_content: int = 0
    content_rows: int = 0
    exact_missed: int = 0

    @property
    def recall(self) -> float:
        return self.hits / self.hit_rows if self.hit_rows else float("nan")

    @property
    def wrong_rate(self) -> float:
        return self.wrong / self.miss_rows if self.miss_rows else float("nan")

    @property
    def wrong_content_rate(self) -> float:
        return self.wrong_content / self.content_rows if self.content_rows else float("nan")


def score(pairs: Iterable[Pair], matcher: Matcher | None, cosine: float | None = None) -> Score:
    s = Score()
    for pair in pairs:
        hit, _ = judge(pair, matcher, cosine)
        if pair.row["label"] == "hit":
            s.hit_rows += 1
            s.hits += hit
            if pair.row["category"] == "exact" and not hit:
                s.exact_missed += 1
        else:
            s.miss_rows += 1
            s.wrong += hit
            if pair.row["category"] not in CONTEXT_CATEGORIES:
                s.content_rows += 1
                s.wrong_content += hit
    return s


def report(pairs: list[Pair], matcher: Matcher | None, cosine: float | None, splits: list[str], show: bool) -> None:
    for split in splits:
        part = [p for p in pairs if p.row["split"] == split]
        total = score(part, matcher, cosine)
        print(f"\n== {split}: {len(part)} pairs | recall {total.recall:.1%} ({total.hits}/{total.hit_rows}) | "
              f"wrong hits {total.wrong_rate:.2%} ({total.wrong}/{total.miss_rows}); content near-misses only "
              f"{total.wrong_content_rate:.2%} ({total.wrong_content}/{total.content_rows}) | exact repeats missed "
              f"{total.exact_missed}")
        by_cat: dict[tuple[str, str], list[Pair]] = defaultdict(list)
        for p in part:
            by_cat[(p.row["label"], p.row["category"])].append(p)
        for (label, category), ps in sorted(by_cat.items()):
            n_hit = sum(judge(p, matcher, cosine)[0] for p in ps)
            what = "recall" if label == "hit" else "wrong hits"
            print(f"   {label:4} {category:22} {len(ps):4} pairs  {what} {n_hit / len(ps):6.1%}  ({n_hit})")
        if show:
            for p in part:
                hit, reason = judge(p, matcher, cosine)
                if hit != (p.row["label"] == "hit"):
                    print(f"  X {p.row['id']} [{p.row['category']}] cos={p.cosine:.3f} {reason}: "
                          f"{p.text_a!r} -> {p.text_b!r}")


MARGIN = (0.10, 0.04, 0.10)
"""How far below a setting (threshold, threshold_reworded, min_overlap) must also stay under
the wrong-hit bound for it to count: the shipped default is never on the edge of the tune data."""


def tune(pairs: list[Pair]) -> MatcherSettings:
    """Grid search on the tune split only: most recall with content wrong hits at most 0.5%
    (a margin under the 1% bar) at the setting and at the setting lowered by ``MARGIN``."""
    part = [p for p in pairs if p.row["split"] == "tune"]
    cache: dict[tuple[float, float, float], Score] = {}

    def at(t: float, tr: float, mo: float) -> Score:
        key = (round(float(t), 2), round(float(tr), 2), round(float(mo), 2))
        if key not in cache:
            cache[key] = score(part, Matcher(MatcherSettings(*key)))
        return cache[key]

    best: tuple[float, MatcherSettings] | None = None
    # threshold starts at 0.6: below it the cosine says little and the guard alone would decide
    grid = itertools.product(np.arange(0.60, 0.91, 0.05), np.arange(0.74, 0.99, 0.02), np.arange(0.3, 0.91, 0.1))
    for t, tr, mo in grid:
        s = at(t, tr, mo)
        lower = at(t - MARGIN[0], tr - MARGIN[1], mo - MARGIN[2])
        if max(s.wrong_content_rate, lower.wrong_content_rate) <= 0.005 and (best is None or s.recall > best[0]):
            best = (s.recall, MatcherSettings(*(round(float(v), 2) for v in (t, tr, mo))))
    assert best is not None
    print(f"best on tune (with margin {MARGIN}): recall {best[0]:.1%}: {best[1]}")
    return best[1]


def embedder() -> Any:
    """The real model's ``embed_sync``; with ``SEMANTIC_EVAL_CACHE=file.npz`` its vectors are kept there."""
    import os

    from clasp_cache.semantic.embedder import Embedder

    e = Embedder()
    path = os.environ.get("SEMANTIC_EVAL_CACHE")
    if not path:
        return e.embed_sync

    def cached(texts: list[str]) -> Any:
        known: dict[str, Any] = {}
        if os.path.exists(path):
            with np.load(path, allow_pickle=False) as f:
                known = dict(zip(f["texts"].tolist(), f["vectors"], strict=True))
        missing = [t for t in texts if t not in known]
        if missing:
            known.update(zip(missing, e.embed_sync(missing), strict=True))
            np.savez(path, texts=np.array(list(known)), vectors=np.stack(list(known.values())))
        return np.stack([known[t] for t in texts])

    return cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=["tune", "heldout", "both"], default="both")
    parser.add_argument("--show", action="store_true", help="print the misjudged pairs")
    parser.add_argument("--tune", action="store_true", help="grid-search the thresholds on the tune split")
    parser.add_argument("--cosine", type=float, help="judge by a plain cosine threshold instead of the matcher")
    args = parser.parse_args()
    started = time.perf_counter()
    pairs = prepare(load_pairs(), embedder())
    print(f"{len(pairs)} pairs embedded and scoped in {time.perf_counter() - started:.1f}s")
    if args.tune:
        tune(pairs)
        return
    splits = ["tune", "heldout"] if args.split == "both" else [args.split]
    matcher = None if args.cosine is not None else Matcher()
    if matcher is not None:
        print(f"matcher: {matcher.settings}")
    report(pairs, matcher, args.cosine, splits, args.show)


if __name__ == "__main__":
    main()
