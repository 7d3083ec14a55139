"""The build context ``docker build`` sends for deploy/Dockerfile, computed here.

Docker filters the context with ``.dockerignore`` (moby's patternmatcher): patterns are
slash paths relative to the context, ``*`` and ``?`` stay within one path segment,
``**`` spans any number, a pattern that matches a directory excludes everything below
it, ``!`` re-includes, and the last matching pattern decides. The tests copy exactly
this set of files to build the image's environment the way the Dockerfile does, and
check that every ``COPY`` source survives the filter.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i:end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def patterns(root: Path = ROOT) -> list[tuple[bool, re.Pattern[str], str]]:
    """(is an exception, regex, the pattern) for each line of ``.dockerignore``."""
    found: list[tuple[bool, re.Pattern[str], str]] = []
    for line in (root / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        text = os.path.normpath(line[1:] if negated else line).lstrip("/")
        found.append((negated, _regex(text), text))
    return found


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str], str]]) -> bool:
    """Whether docker leaves ``path`` (relative, slash-separated) out of the context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for negated, regex, _text in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not negated
    return result


def context_files(root: Path = ROOT) -> list[str]:
    """Every file of the build context (relative paths), walking only what can be in it."""
    rules = patterns(root)
    reincluded = [text for negated, _regex, text in rules if negated]
    files: list[str] = []
    for directory, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(directory, root)
        rel = "" if rel == "." else rel + "/"
        keep = []
        for name in dirnames:
            path = rel + name
            if name == ".git":
                continue
            # Prune a directory that is excluded and holds no re-included path.
            if excluded(path, rules) and not any(text.startswith(path + "/") for text in reincluded):
                continue
            keep.append(name)
        dirnames[:] = keep
        files += [rel + name for name in filenames if not excluded(rel + name, rules)]
    return sorted(files)


def copy_context(destination: Path, root: Path = ROOT) -> list[str]:
    """Copy the build context to ``destination`` (as ``docker build`` would send it)."""
    files = context_files(root)
    for rel in files:
        target = destination / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    return files
