"""Generate ``semantic_pairs.jsonl``, the semantic cache's labelled set, from ``semantic_bases.py``.

    python tests/data/make_semantic_pairs.py      (rewrites tests/data/semantic_pairs.jsonl)

Every row is one pair: request ``a`` is stored, request ``b`` is looked up, and ``label``
says whether ``b`` deserves ``a``'s answer (``hit``) or must not get it (``miss``). Rows
come from the hand-written rephrasings and near-misses, plus mechanical variants of each
question (typos, politeness, case and punctuation, reordered clauses, exact repeats), plus
the same last message in another context (conversation, tool result, system prompt, tool
list, tenant). ``shape`` is ``single`` (a one-message request) or ``claude_code`` (system
prompt, eight tools, a history with a tool call and its result, a ``<system-reminder>``
beside the last user turn).

``split`` is ``tune`` or ``heldout``, fixed by a seeded hash of the question's group (not
of the row), so that every wording of a held-out question is held out. It was assigned
before anything was tuned; the generator is deterministic (no RNG state, only hashes).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from semantic_bases import BASES, HISTORY_TURNS, REPOS, SYSTEM_PROMPTS, TOOLS, Base  # noqa: E402

SEED = "clasp-semantic-v1"
HELDOUT_SHARE = 0.4
OUT = Path(__file__).parent / "semantic_pairs.jsonl"
MODEL = "claude-sonnet-4-5"


def unit(*parts: str) -> float:
    """A number in [0, 1) fixed by the parts (the generator's only source of 'chance')."""
    digest = hashlib.sha256("\x1f".join((SEED, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(group: str) -> str:
    return "heldout" if unit("split", group) < HELDOUT_SHARE else "tune"


# --- mechanical variants -------------------------------------------------------------

_KEYBOARD = {"a": "s", "e": "r", "i": "o", "o": "p", "u": "y", "t": "r", "n": "m", "s": "d", "r": "t", "l": "k"}


def typo(text: str, key: str, count: int = 1) -> str:
    """Misspell ``count`` plain words (letters only, 5+ long; never code or identifiers)."""
    if "```" in text:
        head, sep, rest = text.partition("\n")
        return typo(head, key, count) + sep + rest
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if re.fullmatch(r"[A-Za-z]{5,}[,.?!]?", w) and not w[0].isupper()]
    for n in range(min(count, len(candidates))):
        i = candidates[int(unit("typo-word", key, str(n)) * len(candidates))]
        w = words[i]
        tail = w[-1] if not w[-1].isalpha() else ""
        core = w[: len(w) - len(tail)]
        kind = int(unit("typo-kind", key, str(n)) * 4)
        j = 1 + int(unit("typo-pos", key, str(n)) * (len(core) - 2))
        if kind == 0:  # swap two neighbours
            core = core[:j] + core[j + 1] + core[j] + core[j + 2 :]
        elif kind == 1:  # drop one
            core = core[:j] + core[j + 1 :]
        elif kind == 2:  # double one
            core = core[:j] + core[j] + core[j:]
        else:  # neighbouring key
            core = core[:j] + _KEYBOARD.get(core[j], core[j]) + core[j + 1 :]
        words[i] = core + tail
    return " ".join(words)


_PREFIXES = ["Please ", "Hi! ", "Could you please ", "Hey, quick question: ", "Hello, ", "Kindly "]
_SUFFIXES = [" Thanks!", " Thank you.", " Thanks in advance!", " Cheers.", "", ""]


def polite(text: str, key: str) -> str:
    prefix = _PREFIXES[int(unit("prefix", key) * len(_PREFIXES))]
    suffix = _SUFFIXES[int(unit("suffix", key) * len(_SUFFIXES))]
    first = text[0].lower() + text[1:] if prefix[-1] == " " and prefix.strip()[-1] not in "!:," else text
    if prefix.strip()[-1] in ":,":
        first = text
    body = first if "```" in text else first
    return prefix + body + suffix


def case_punct(text: str) -> str:
    if "```" in text or "`" in text:
        return text.rstrip(".?!") if not text.endswith("```") else text
    return text.lower().rstrip(".?!")


_TAIL = re.compile(r"^(?P<head>[A-Z][^`\n]*?) (?P<prep>in|for|with|from|on) (?P<tail>[^`\n]*?[^.?!`\n])(?P<punct>[.?!]?)$")


def reorder(text: str) -> str | None:
    """Move a trailing "in X" / "for X" clause to the front: "In X, do Y." (None if none)."""
    m = _TAIL.match(text)
    if not m or len(m["head"].split()) < 3 or len(m["tail"].split()) > 4 or {"do", "does", "is"} & set(m["tail"].split()):
        return None
    head = m["head"][0].lower() + m["head"][1:]
    return f"{m['prep'].capitalize()} {m['tail']}, {head}{m['punct']}"


# --- request shapes ------------------------------------------------------------------


def tool_schema(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": f"The {name} tool of a coding agent.",
        "parameters": {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}}}


def single(text: str, system: str | None = None) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": text})
    return {"model": MODEL, "messages": messages}


def claude_code(text: str, *, repo: str = "shop-api", day: int = 6, history: int = 1, tools: list[str] | None = None,
                result: str | None = None) -> dict[str, Any]:
    user, tool, args, output = HISTORY_TURNS[history]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM_PROMPTS[0].format(repo=repo, day=day)},
        {"role": "user", "content": user},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_01", "type": "function", "function": {"name": tool, "arguments": json.dumps(args)}}]},
        {"role": "tool", "tool_call_id": "toolu_01", "content": result if result is not None else output},
        {"role": "assistant", "content": "Done. What would you like next?"},
        {"role": "user", "content": "<system-reminder>\nThe TodoWrite list is empty.\n</system-reminder>\n\n" + text},
    ]
    return {"model": MODEL, "max_tokens": 32000, "messages": messages,
            "tools": [tool_schema(t) for t in (tools if tools is not None else TOOLS)]}


# --- rows ----------------------------------------------------------------------------


class Rows:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, base: Base, category: str, label: str, shape: str, a: dict[str, Any], b: dict[str, Any],
            tenant_a: str = "team-a", tenant_b: str = "team-a") -> None:
        n = sum(1 for r in self.rows if r["group"] == base.group)
        self.rows.append({"id": f"{base.group}-{n:02d}", "group": base.group, "category": category, "label": label,
                          "shape": shape, "split": split_of(base.group), "tenant_a": tenant_a, "tenant_b": tenant_b,
                          "a": a, "b": b})


def build() -> list[dict[str, Any]]:
    rows = Rows()
    for index, base in enumerate(BASES):
        g, t = base.group, base.text
        # Which side is stored alternates, so both directions are measured.
        for i, hit in enumerate(base.hits):
            a, b = (t, hit) if unit("dir", g, str(i)) < 0.5 else (hit, t)
            rows.add(base, "rephrase", "hit", "single", single(a), single(b))
        rows.add(base, "typo", "hit", "single", single(t), single(typo(t, g, 1 + (len(t.split()) > 8))))
        rows.add(base, "typo", "hit", "single", single(typo(base.hits[0], g + "h")), single(t))
        rows.add(base, "politeness", "hit", "single", single(t), single(polite(t, g)))
        if index % 2 == 0:
            rows.add(base, "case_punct", "hit", "single", single(t), single(case_punct(t)))
        if index % 3 == 0:
            rows.add(base, "exact", "hit", "single", single(t), single(t))
        moved = reorder(t)
        if moved:
            rows.add(base, "reorder", "hit", "single", single(t), single(moved))
        for i, (category, miss) in enumerate(base.misses):
            a, b = (t, miss) if unit("mdir", g, str(i)) < 0.5 else (miss, t)
            rows.add(base, category, "miss", "single", single(a), single(b))
        if index % 2 == 1:
            rows.add(base, "context_system", "miss", "single", single(t, "You are a helpful assistant."),
                     single(t, "You are a helpful assistant. Answer like a pirate."))
            rows.add(base, "tenant", "miss", "single", single(t), single(t), tenant_b="team-b")
        if not base.cc:
            continue
        repo = REPOS[index % len(REPOS)]
        h = index % len(HISTORY_TURNS)
        cc = {"repo": repo, "history": h}
        rows.add(base, "exact", "hit", "claude_code", claude_code(t, **cc), claude_code(t, **cc))  # type: ignore[arg-type]
        rows.add(base, "rephrase", "hit", "claude_code", claude_code(t, **cc), claude_code(base.hits[0], **cc))  # type: ignore[arg-type]
        rows.add(base, "rephrase", "hit", "claude_code", claude_code(base.hits[1], **cc), claude_code(t, **cc))  # type: ignore[arg-type]
        rows.add(base, "typo", "hit", "claude_code", claude_code(t, **cc), claude_code(typo(t, g + "cc"), **cc))  # type: ignore[arg-type]
        rows.add(base, "politeness", "hit", "claude_code", claude_code(t, **cc), claude_code(polite(t, g + "cc"), **cc))  # type: ignore[arg-type]
        for category, miss in base.misses[:2]:
            rows.add(base, category, "miss", "claude_code", claude_code(t, **cc), claude_code(miss, **cc))  # type: ignore[arg-type]
        output = HISTORY_TURNS[h][3]
        rows.add(base, "context_tool_result", "miss", "claude_code", claude_code(t, **cc),  # type: ignore[arg-type]
                 claude_code(t, repo=repo, history=h, result=output.replace("\n", "\n# edited\n", 1)))
        rows.add(base, "context_conversation", "miss", "claude_code", claude_code(t, **cc),  # type: ignore[arg-type]
                 claude_code(t, repo=repo, history=(h + 1) % len(HISTORY_TURNS)))
        rows.add(base, "context_system", "miss", "claude_code", claude_code(t, **cc),  # type: ignore[arg-type]
                 claude_code(t, repo=REPOS[(index + 1) % len(REPOS)], history=h))
        rows.add(base, "context_tools", "miss", "claude_code", claude_code(t, **cc),  # type: ignore[arg-type]
                 claude_code(t, repo=repo, history=h, tools=TOOLS[:-1]))
        rows.add(base, "tenant", "miss", "claude_code", claude_code(t, **cc), claude_code(t, **cc),  # type: ignore[arg-type]
                 tenant_b="team-b")
    return rows.rows


def main() -> None:
    rows = build()
    with OUT.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    hits = sum(r["label"] == "hit" for r in rows)
    held = sum(r["split"] == "heldout" for r in rows)
    print(f"{len(rows)} pairs ({hits} hit, {len(rows) - hits} miss; {held} held out) -> {OUT}")


if __name__ == "__main__":
    main()
