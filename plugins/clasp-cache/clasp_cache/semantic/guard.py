"""The guard: refuse a semantic hit when two questions differ in a detail that changes the answer.

A cosine threshold alone cannot reach 1% wrong hits with all-MiniLM-L6-v2 (swapped order,
negations and changed numbers score as near-identical), so a candidate found by cosine
must also pass :func:`refusal` (token-level checks on :mod:`.tokens` readings, each with a
reason that the evaluation reports) and have enough content words in common
(:func:`overlap`, the second, cheap feature the matcher combines with the cosine).

The checks, in order: code, quoted strings, paths and file names, identifiers must be
equal and in the same order; numbers equal (as a multiset, each with the same unit when
both texts give one); languages equal and in the same order; names (words written
capitalised or in CONSTANT/CamelCase in either text) present in both or in neither;
negations as many; contrast words (add/remove, max/min...) the same when both texts use
the group; nothing swapped around a directional word ("X to Y" against "Y to X"); no
two things of one kind (names, paths...) swapped; and not one content word replaced
in place by an unrelated one ("which port" against "which host").
"""

from __future__ import annotations

from collections import Counter

from .tokens import STOPWORDS, Reading, stem


def refusal(a: Reading, b: Reading) -> str | None:
    """Why ``b`` must not be answered with ``a``'s answer, or ``None`` when no detail differs."""
    if a.code != b.code:
        return "code"
    if a.quoted != b.quoted:
        return "quoted"
    if sorted(a.paths) != sorted(b.paths):
        return "path"
    if sorted(a.idents) != sorted(b.idents):
        return "identifier"
    if not _same_numbers(a, b):
        return "number"
    if _distinct(a.languages) != _distinct(b.languages) and _distinct(_loose_languages(a)) != _distinct(
        _loose_languages(b)
    ):
        return "language"
    names = a.cased | b.cased
    for name in names:
        if _present(a, name) != _present(b, name):
            return "name"
    if a.negations != b.negations:
        return "negation"
    for group in a.contrasts.keys() & b.contrasts.keys():
        if a.contrasts[group] - b.contrasts[group] and b.contrasts[group] - a.contrasts[group]:
            return "contrast"  # each says something the other does not: add vs remove
    if _swapped_around_connector(a, b):
        return "swap"
    if _swapped_entities(a, b, names):
        return "order"
    if _one_word_replaced(a, b):
        return "substitution"
    if _one_word_added(a, b) or _one_word_added(b, a):
        return "addition"
    return None


def overlap(a: Reading, b: Reading) -> float:
    """The share of content words matched in the other text, the lower of both directions.

    Words match when equal after stemming and synonyms, or one typo apart as stemmed or
    as written. 1.0 when neither text has content words (the other checks then decide).
    """
    if not a.content and not b.content:
        return 1.0
    if not a.content or not b.content:
        return 0.0
    matched_a = sum(1 for i in range(len(a.content)) if any(_match(a, i, b, j) for j in range(len(b.content))))
    matched_b = sum(1 for j in range(len(b.content)) if any(_match(a, i, b, j) for i in range(len(a.content))))
    return min(matched_a / len(a.content), matched_b / len(b.content))


def similar(x: str, y: str) -> bool:
    """Equal, or one typo apart: a letter dropped or added (4+ letters), changed or two swapped (5+)."""
    if x == y:
        return True
    shortest = min(len(x), len(y))
    if shortest < 4 or (shortest < 5 and len(x) == len(y)) or abs(len(x) - len(y)) > 1:
        return False
    if not (x.isalpha() and y.isalpha()):
        return False
    return _one_edit(x, y)


def _match(a: Reading, i: int, b: Reading, j: int) -> bool:
    return similar(a.content[i], b.content[j]) or similar(a.content_raw[i], b.content_raw[j])


def _one_edit(x: str, y: str) -> bool:
    if len(x) == len(y):
        diffs = [i for i, (p, q) in enumerate(zip(x, y, strict=True)) if p != q]
        if len(diffs) == 1:
            return True
        return len(diffs) == 2 and diffs[1] == diffs[0] + 1 and x[diffs[0]] == y[diffs[1]] and x[diffs[1]] == y[diffs[0]]
    short, long = (x, y) if len(x) < len(y) else (y, x)
    i = 0
    while i < len(short) and short[i] == long[i]:
        i += 1
    return short[i:] == long[i + 1 :]


def _same_numbers(a: Reading, b: Reading) -> bool:
    if Counter(v for v, _ in a.numbers) != Counter(v for v, _ in b.numbers):
        return False
    units_a: dict[str, list[str]] = {}
    units_b: dict[str, list[str]] = {}
    for value, unit in a.numbers:
        units_a.setdefault(value, []).append(unit)
    for value, unit in b.numbers:
        units_b.setdefault(value, []).append(unit)
    # A unit that moved to another number is a swap ("70 kg, 1.75 m" vs "1.75 kg, 70 m").
    for value, us in units_a.items():
        for unit in us:
            if not unit or not any(units_b[value]) or any(similar(unit, u) for u in units_b[value]):
                continue
            if any(any(similar(unit, u) for u in vs) for other, vs in units_b.items() if other != value):
                return False
    return True


_AMBIGUOUS = {"go": "go", "c": "c", "r": "r", "node": "javascript", "shell": "bash", "ts": "typescript", "js": "javascript"}


def _loose_languages(r: Reading) -> list[str]:
    """Languages, counting the short names (go, c, r...) also when written in lower case."""
    return [_AMBIGUOUS.get(w, w) for w in r.words if w in _AMBIGUOUS or w in r.languages]


def _distinct(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _present(r: Reading, name: str) -> bool:
    return name in r.lowered or stem(name) in r.words or name in r.idents


def _is_content(w: str) -> bool:
    return not w.startswith("\x01") and not w.startswith("<") and w not in STOPWORDS


WINDOW = 3
"""Content words read on each side of a directional word."""


def _sides(r: Reading) -> dict[str, tuple[set[str], set[str]]]:
    """For each directional word: the content words just before it and just after it."""
    out: dict[str, tuple[set[str], set[str]]] = {}
    words = r.words
    for i, w in enumerate(words):
        if not w.startswith("\x01"):
            continue
        left: list[str] = []
        for x in reversed(words[:i]):
            if x.startswith("\x01") or len(left) == WINDOW:
                break
            if _is_content(x):
                left.append(x)
        right: list[str] = []
        for x in words[i + 1 :]:
            if x.startswith("\x01") or len(right) == WINDOW:
                break
            if _is_content(x):
                right.append(x)
        before, after = out.setdefault(w, (set(), set()))
        before.update(left)
        after.update(right)
    return out


def _swapped_around_connector(a: Reading, b: Reading) -> bool:
    """Something before "to"/"than"/"from"... in one text is after it in the other, and back."""
    sa, sb = _sides(a), _sides(b)
    for connector in sa.keys() & sb.keys():
        (la, ra), (lb, rb) = sa[connector], sb[connector]
        if (la & rb) - lb and (ra & lb) - rb:
            return True
    return False


def _kind(r: Reading, word: str, names: set[str]) -> str:
    kind = r.kinds.get(word, "word")
    if kind == "word" and (word in names or any(stem(n) == word for n in names)):
        return "name"
    return kind


def _swapped_entities(a: Reading, b: Reading, names: set[str]) -> bool:
    """Two things of one kind (names, languages, paths, identifiers) changed places.

    "Tokyo ... London" against "London ... Tokyo" is another question; a clause moved to
    the front ("In Python, how..." / "How ... in Python?") is not, so only two things of
    the same kind that trade places count.
    """
    once_b = {w for w, n in Counter(b.content).items() if n == 1}
    shared = [w for w, n in Counter(a.content).items() if n == 1 and w in once_b]
    if len(shared) < 2:
        return False
    seq_a = [w for w in a.content if w in shared]
    seq_b = [w for w in b.content if w in shared]
    if seq_a == seq_b:
        return False
    # numbers have their own swap check (a unit that moved to another number)
    entities = [w for w in seq_a if _kind(a, w, names) not in ("word", "number")]
    for i, x in enumerate(entities):
        for y in entities[i + 1 :]:
            if _kind(a, x, names) == _kind(a, y, names) and seq_b.index(x) > seq_b.index(y):
                return True
    return False


def _one_word_replaced(a: Reading, b: Reading) -> bool:
    """The same content words in the same order but one, replaced by an unrelated word.

    "which port the server listens on" / "which host ...", "capital of France" /
    "... of Germany": a rewording rarely changes exactly one word in place.
    """
    if len(a.content) != len(b.content) or len(a.content) < 2:
        return False
    return sum(1 for i in range(len(a.content)) if not _match(a, i, b, i)) == 1


def _one_word_added(a: Reading, b: Reading) -> bool:
    """``b`` is ``a`` plus one word heading an "of" ("the maximum" / "the index of the maximum").

    "The N of X" asks for something else than X; other added words are mostly framing
    ("which city is the capital", "the current branch") and are left to the cosine.
    """
    if len(b.content) != len(a.content) + 1 or not a.content:
        return False
    for extra in range(len(b.content)):
        rest = [j for j in range(len(b.content)) if j != extra]
        if all(_match(a, i, b, j) for i, j in enumerate(rest)) and _heads_of(b, b.content[extra]):
            return True
    return False


def _heads_of(r: Reading, word: str) -> bool:
    words = r.words
    return any(w == word and words[i + 1 : i + 2] == ["of"] for i, w in enumerate(words[:-1]))


def describe(a: Reading, b: Reading) -> dict[str, object]:
    """The guard's view of a pair (the evaluation prints it for misjudged pairs)."""
    return {"refusal": refusal(a, b), "overlap": round(overlap(a, b), 3), "content_a": a.content, "content_b": b.content}
