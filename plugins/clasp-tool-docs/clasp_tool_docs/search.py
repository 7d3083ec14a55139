"""Keyword search over a folder of markdown files: sections, BM25, snippets.

Small on purpose (no dependencies, no embeddings): each markdown section (the text
under a heading) is a document; words are lower-cased, split on anything that is not a
letter or digit, and lightly stemmed (plurals, -ing, -ed), so "rolling back deploys"
finds "Roll back a deploy". Headings and file names count extra. Ranking is Okapi BM25;
the snippet is the part of the section around the best-matching line.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

EXTENSIONS = (".md", ".markdown", ".mdx", ".txt")
MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_FILES = 20_000
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv"})
HEADING_WEIGHT = 3
"""A word in a section's heading counts as this many occurrences in its text."""

_K1 = 1.5
_B = 0.75
_WORD = re.compile(r"[a-z0-9]+")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_STOP = frozenset(
    "a an and are as at be but by can do does for from how i if in into is it its me my no not of on or "
    "our so that the their then there these this to was we what when where which who why will with you your".split()
)


def stem(word: str) -> str:
    """A crude English stemmer: enough for "deploys"/"deploying"/"deployed" -> "deploy"."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 4 and word.endswith("ed") and not word.endswith("eed"):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Search terms of ``text`` (lower-cased, stop words dropped, stemmed)."""
    return [stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP and (len(w) > 1 or w.isdigit())]


@dataclass(slots=True)
class Section:
    """The text under one heading of one file."""

    path: str
    """File path relative to the docs folder, with ``/`` separators."""
    title: str
    """The heading trail, e.g. ``Deploys › Rolling back``."""
    text: str
    tf: dict[str, int] = field(default_factory=dict)
    length: int = 0


@dataclass(slots=True)
class Hit:
    """One search result."""

    section: Section
    score: float
    snippet: str


def split_sections(path: str, markdown: str) -> list[Section]:
    """Cut a markdown file into sections at its headings (not inside code fences)."""
    sections: list[Section] = []
    trail: list[tuple[int, str]] = []
    lines: list[str] = []
    fence: str | None = None
    stem_name = Path(path).stem.replace("-", " ").replace("_", " ")

    def close() -> None:
        text = "\n".join(lines).strip()
        if text or trail:
            title = " › ".join(t for _, t in trail) or stem_name
            sections.append(Section(path, title, text))
        lines.clear()

    for line in markdown.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(("```", "~~~")):
            marker = stripped[:3]
            fence = None if fence == marker else (fence or marker)
        heading = _HEADING.match(line) if fence is None else None
        if heading:
            close()
            level = len(heading.group(1))
            while trail and trail[-1][0] >= level:
                trail.pop()
            trail.append((level, heading.group(2)))
            continue
        lines.append(line)
    close()
    return [s for s in sections if s.text or s.title]


class DocsIndex:
    """A BM25 index over every section of every markdown file under ``root``."""

    def __init__(self, root: Path, sections: list[Section], signature: tuple[int, float, int]) -> None:
        self.root = root
        self.sections = sections
        self.signature = signature
        self.checked = time.monotonic()
        self.df: dict[str, int] = {}
        for section in sections:
            for term in section.tf:
                self.df[term] = self.df.get(term, 0) + 1
        self.avg_length = (sum(s.length for s in sections) / len(sections)) if sections else 0.0

    @staticmethod
    def files(root: Path) -> list[Path]:
        """The documents under ``root``, sorted, hidden and vendored folders skipped."""
        found: list[Path] = []
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
            for name in sorted(names):
                if name.lower().endswith(EXTENSIONS) and not name.startswith("."):
                    found.append(Path(folder) / name)
                    if len(found) >= MAX_FILES:
                        return found
        return found

    @classmethod
    def signature_of(cls, files: list[Path]) -> tuple[int, float, int]:
        """(count, newest mtime, total size): changes when a file is added, edited or removed."""
        newest, total = 0.0, 0
        for path in files:
            try:
                st = path.stat()
            except OSError:
                continue
            newest = max(newest, st.st_mtime)
            total += st.st_size
        return (len(files), newest, total)

    @classmethod
    def build(cls, root: Path) -> DocsIndex:
        """Read and index ``root`` (blocking: call it from a worker thread)."""
        files = cls.files(root)
        sections: list[Section] = []
        for path in files:
            try:
                if path.stat().st_size > MAX_FILE_BYTES:
                    continue
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            rel = path.relative_to(root).as_posix()
            path_terms = tokenize(rel.rsplit(".", 1)[0])
            for section in split_sections(rel, text):
                tf: dict[str, int] = {}
                body = tokenize(section.text)
                for term in body + path_terms:
                    tf[term] = tf.get(term, 0) + 1
                heading = tokenize(section.title)
                for term in heading:
                    tf[term] = tf.get(term, 0) + HEADING_WEIGHT
                section.tf = tf
                section.length = len(body) + len(path_terms) + HEADING_WEIGHT * len(heading)
                sections.append(section)
        return cls(root, sections, cls.signature_of(files))

    def search(self, query: str, limit: int = 5, snippet_chars: int = 700) -> list[Hit]:
        """The best ``limit`` sections for ``query``, best first."""
        terms = list(dict.fromkeys(tokenize(query)))
        if not terms or not self.sections:
            return []
        n = len(self.sections)
        idf = {t: math.log(1 + (n - self.df.get(t, 0) + 0.5) / (self.df.get(t, 0) + 0.5)) for t in terms}
        scored: list[tuple[float, int]] = []
        avg = self.avg_length or 1.0
        for i, section in enumerate(self.sections):
            score = 0.0
            for term in terms:
                f = section.tf.get(term)
                if f:
                    score += idf[term] * f * (_K1 + 1) / (f + _K1 * (1 - _B + _B * section.length / avg))
            if score > 0:
                scored.append((score, i))
        scored.sort(key=lambda item: (-item[0], item[1]))
        return [
            Hit(self.sections[i], score, snippet(self.sections[i].text, terms, snippet_chars))
            for score, i in scored[:limit]
        ]


def snippet(text: str, terms: list[str], limit: int) -> str:
    """The part of ``text`` around its line matching most of ``terms``, at most ``limit`` chars."""
    if len(text) <= limit:
        return text
    lines = text.splitlines()
    wanted = set(terms)
    best, best_score = 0, 0
    for i, line in enumerate(lines):
        score = len(wanted.intersection(tokenize(line)))
        if score > best_score:
            best, best_score = i, score
    start = best
    if start > 0 and lines[start - 1].strip():  # keep the line that introduces the match
        start -= 1
    out: list[str] = []
    size = 0
    for line in lines[start:]:
        if size + len(line) + 1 > limit:
            room = limit - size
            if room > 40:
                out.append(line[:room].rsplit(" ", 1)[0] + " …")
            break
        out.append(line)
        size += len(line) + 1
    body = "\n".join(out).strip()
    prefix = "… " if start > 0 else ""
    suffix = "" if body.endswith("…") or start + len(out) >= len(lines) else "\n…"
    return prefix + body + suffix


def format_hits(query: str, hits: list[Hit]) -> str:
    """The tool result the model reads."""
    if not hits:
        return f"No document matched {query!r}. Try other or fewer keywords."
    parts = [f"{len(hits)} result(s) for {query!r} in the company docs:"]
    for n, hit in enumerate(hits, 1):
        parts.append(f"[{n}] {hit.section.path} — {hit.section.title}\n{hit.snippet}")
    return "\n\n".join(parts)
