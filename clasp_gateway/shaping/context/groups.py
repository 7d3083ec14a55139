"""Choosing what to drop from a conversation that does not fit (the trimming rules
of the package docstring): whole units, oldest first, never the system prompt, the
last user message or the latest unit; and the trim remembered for the next turn."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

INSTRUCTION_ROLES = frozenset({"system", "developer"})  # OpenAI's newer name for system


def role(message: Any) -> str:
    return message.get("role", "") if isinstance(message, dict) else ""


def drop_groups(messages: Sequence[dict[str, Any]]) -> list[list[int]]:
    """Groups of message indexes that may be dropped, in the order to drop them.

    Each group goes as a whole. Never in any group: the leading system messages, the
    last user message and the most recent unit (see the module docstring).
    """
    n = len(messages)
    head = 0
    while head < n and role(messages[head]) in INSTRUCTION_ROLES:
        head += 1
    units: list[list[int]] = []
    i = head
    while i < n:
        message = messages[i]
        if role(message) == "assistant" and message.get("tool_calls"):
            j = i + 1
            while j < n and role(messages[j]) == "tool":
                j += 1
            units.append(list(range(i, j)))
            i = j
        else:
            units.append([i])
            i += 1
    turns: list[list[list[int]]] = []
    for unit in units:
        if not turns or role(messages[unit[0]]) == "user":
            turns.append([unit])
        else:
            turns[-1].append(unit)
    groups: list[list[int]] = []
    for number, turn in enumerate(turns):
        last_turn = number == len(turns) - 1
        anchored = role(messages[turn[0][0]]) == "user"
        rest = turn[1:] if anchored else turn
        if last_turn:
            groups.extend(rest[:-1])  # the final unit stays, and so does the user message
            break
        if not anchored:
            groups.extend(rest)
        elif not rest:
            groups.append(turn[0])
        else:
            # The user message leaves with its turn's last unit: never two user
            # messages side by side (strict chat templates refuse that).
            groups.extend(rest[:-1])
            groups.append(turn[0] + rest[-1])
    return groups


def choose_drops(groups: list[list[int]], counts: Sequence[int], total: int, target: int) -> tuple[list[int], int]:
    """Drop groups, oldest first, until ``total`` is at most ``target`` (or none is
    left). Returns the sorted dropped indexes and the new total."""
    dropped: list[int] = []
    for group in groups:
        if total <= target:
            break
        total -= sum(counts[i] for i in group)
        dropped.extend(group)
    return sorted(dropped), total


@dataclass(slots=True)
class Boundary:
    """A trim chosen for a conversation prefix, kept so the next turn can reuse it.

    The dropped messages are kept as ``(start, stop)`` runs: a trim drops whole turns
    from the oldest, so a few runs describe it, where a tuple of indexes could hold
    thousands of integers per remembered conversation."""

    runs: tuple[tuple[int, int], ...]
    summary: str | None
    summarizer: str | None

    @classmethod
    def of(cls, dropped: Sequence[int], summary: str | None, summarizer: str | None) -> Boundary:
        """The boundary for sorted indexes ``dropped``."""
        runs: list[tuple[int, int]] = []
        for i in dropped:
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
        return cls(tuple(runs), summary, summarizer)

    @property
    def dropped(self) -> list[int]:
        """The dropped indexes, sorted."""
        return [i for start, stop in self.runs for i in range(start, stop)]


MAX_RUNS = 64
"""A trim with more runs than this (never seen: trims drop whole turns) is not remembered."""


def plan_trim(
    messages: Sequence[dict[str, Any]], counts: Sequence[int], total: int, target: int, floor: int
) -> tuple[list[int], int]:
    """The messages to drop (sorted) to bring ``total`` to ``target``, or, when that
    is out of reach, to ``floor``; and the total after. The CPU part of a trim (run
    in a worker thread for long requests)."""
    groups = drop_groups(messages)
    dropped, after = choose_drops(groups, counts, total, target)
    if after > target:
        # The target is out of reach: keep as much as the budget allows.
        dropped, after = choose_drops(groups, counts, total, floor)
    return dropped, after


def keep_messages(
    messages: Sequence[dict[str, Any]], dropped: Sequence[int], counts: Sequence[int], total: int
) -> tuple[list[dict[str, Any]], int]:
    """The messages left after dropping ``dropped``, and their tokens."""
    drop = set(dropped)
    kept = [msg for i, msg in enumerate(messages) if i not in drop]
    return kept, total - sum(counts[i] for i in drop)
