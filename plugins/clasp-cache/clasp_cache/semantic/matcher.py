"""The matcher: whether a stored question's answer may serve a new one, from cosine + guard.

Three features decide, each cheap once the embedding is known: the cosine of the two
embeddings, the guard's token-level :func:`~.guard.refusal`, and the content-word
:func:`~.guard.overlap`. When every content word of each text is found in the other
(reworded only by stop words, politeness, case, punctuation, typos or order), a lower
cosine suffices (``threshold``); when some differ, the cosine must be higher
(``threshold_reworded``) and the overlap at least ``min_overlap``. An exact repeat of the
text always matches. The defaults were tuned on the ``tune`` split of
``tests/data/semantic_pairs.jsonl`` only (``bench/semantic_eval.py --tune``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .guard import overlap, refusal
from .tokens import Reading, read


@dataclass(frozen=True, slots=True)
class MatcherSettings:
    """The matcher's thresholds (``cache.semantic`` in clasp.yaml overrides them)."""

    threshold: float = 0.60
    """Least cosine when all content words match."""
    threshold_reworded: float = 0.86
    """Least cosine when some content words differ."""
    min_overlap: float = 0.6
    """Least share of content words found in the other text (lower of both directions)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A matcher's answer, with the reason (``exact``, ``cosine``, or why it was refused)."""

    hit: bool
    reason: str


@lru_cache(maxsize=4096)
def reading(text: str) -> Reading:
    """The guard's reading of ``text``, cached (stored questions are read again and again)."""
    return read(text)


class Matcher:
    """Judges a candidate found by cosine; pure and cheap (tens of microseconds)."""

    def __init__(self, settings: MatcherSettings | None = None) -> None:
        self.settings = settings or MatcherSettings()

    def judge(self, query: str, stored: str, cosine: float) -> Verdict:
        """Whether ``stored``'s answer may serve ``query``, given their embeddings' cosine."""
        if query.strip() == stored.strip():
            return Verdict(True, "exact")
        if cosine < min(self.settings.threshold, self.settings.threshold_reworded):
            return Verdict(False, "cosine")
        return self.decide(cosine, *features(query, stored))

    def decide(self, cosine: float, refused: str | None, share: float) -> Verdict:
        """The verdict from the three features (split out so a grid search computes them once)."""
        s = self.settings
        if refused is not None:
            return Verdict(False, refused)
        if share >= 1.0:
            return Verdict(cosine >= s.threshold, "cosine")
        if share < s.min_overlap:
            return Verdict(False, "overlap")
        return Verdict(cosine >= s.threshold_reworded, "cosine")


def features(query: str, stored: str) -> tuple[str | None, float]:
    """The guard's refusal (or ``None``) and the content-word overlap of two texts."""
    a, b = reading(stored), reading(query)
    return refusal(a, b), overlap(a, b)
