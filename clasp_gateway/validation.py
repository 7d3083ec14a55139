"""Declarative validation of clasp.yaml: sections of typed fields, every mistake at once.

A :class:`Section` maps key names to :class:`Field` s (or directly to a kind); a
kind says what a value must be: :class:`Boolean`, :class:`Integer`,
:class:`Number`, :class:`Duration`, :class:`String`, :class:`Choice`,
:class:`Reference` (a secret), :class:`ListOf`, :class:`MapOf`, :class:`Anything`,
:class:`Custom`, or a nested :class:`Section`. ``section.parse(raw, "path",
problems)`` returns the values, defaults filled in (or the dataclass given as
``into``), and appends one ``"key.path: what was expected, got what"`` line to
``problems`` per mistake, unknown keys included (with a "did you mean"), so a file
shows all its mistakes in one run. The core declares its sections with these
(``config.py``, ``context.py``, ``server_tools.py``); a plugin declares its own the
same way and checks it in its ``validate_config`` hook::

    from clasp_gateway import Boolean, Duration, Field, Integer, Section, hookimpl

    CACHE = Section({
        "ttl": Field(Duration(minimum=1), 3600.0),
        "max_entries": Field(Integer(minimum=1), 10_000),
        "shared": Field(Boolean(), False),
    })

    @hookimpl
    def register_config_sections(register):
        register("cache")

    @hookimpl
    def validate_config(config):
        problems: list[str] = []
        CACHE.parse(config.raw.get("cache"), "cache", problems)
        return problems

Why numbers may be written as strings: YAML 1.1 (PyYAML) reads ``1e-05`` (no dot)
as a string, so a numeric field takes a string that parses cleanly as a number (the
number the user meant). Anything else (``"8k"`` where an integer is expected,
``"no"`` where true or false is) is an error naming what was expected: found when
the file is loaded, never as a failure at request time.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "INVALID", "Anything", "Boolean", "Choice", "Custom", "Duration", "Field", "Integer", "Invalid", "Kind",
    "ListOf", "MapOf", "Number", "Reference", "Section", "String", "did_you_mean", "unknown_key",
]


class _Invalid:
    """The result of a value that did not validate (its problem is already recorded)."""

    _instance: _Invalid | None = None

    def __new__(cls) -> _Invalid:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()
"""What :meth:`Kind.parse` returns for a value that did not validate."""

_MISSING: Any = object()


class Invalid(ValueError):
    """Raised by a :class:`Custom` check (or a kind's ``convert``): the message is the
    problem as a person reads it, after ``key.path: ``."""


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The known name closest to ``word`` (case differences first), or ``None``."""
    options = [str(c) for c in choices]
    lowered = {o.lower(): o for o in options}
    if word.lower() in lowered:
        return lowered[word.lower()]
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_key(key: Any, known: Iterable[str], what: str = "key") -> str:
    """``unknown key; did you mean 'api_base'?`` (or the list of known keys)."""
    names = sorted(str(k) for k in known)
    guess = did_you_mean(str(key), names)
    if guess is not None:
        return f"unknown {what}; did you mean {guess!r}?"
    return f"unknown {what} (expected one of: {', '.join(names) or 'none'})"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _show(value: Any) -> str:
    if isinstance(value, (dict, list, tuple, set)):
        return type(value).__name__
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _num(value: float) -> str:
    return f"{value:g}"


class Kind:
    """What one value must be. Subclasses implement :meth:`convert`; containers
    override :meth:`parse` to report problems of their items under their own paths."""

    expected = "a value"
    secret = False
    """Never show the value in a problem (credentials)."""

    def parse(self, value: Any, path: str, problems: list[str]) -> Any:
        """The value to use, or :data:`INVALID` after appending a problem."""
        try:
            return self.convert(value)
        except Invalid as exc:
            message = str(exc) or f"expected {self.expected}"
            if not str(exc):
                message += ", got " + (type(value).__name__ if self.secret else _show(value))
            problems.append(f"{path}: {message}")
            return INVALID

    def convert(self, value: Any) -> Any:
        """Return the value (converted), or raise ``Invalid()`` (empty: "expected ...,
        got ...") or ``Invalid("message")`` (the message as is)."""
        return value


class Anything(Kind):
    """Any value, unchecked (free-form data such as ``extra_body``)."""

    def __init__(self, expected: str = "a value") -> None:
        self.expected = expected


class Boolean(Kind):
    """``true`` or ``false``. Strings are refused: ``"no"`` would otherwise be true."""

    expected = "true or false"

    def convert(self, value: Any) -> Any:
        if isinstance(value, bool):
            return value
        raise Invalid()


def _range_text(noun: str, minimum: float | None, maximum: float | None, above: float | None) -> str:
    low = f"({_num(above)}" if above is not None else f"[{_num(minimum)}" if minimum is not None else None
    if low is not None and maximum is not None:
        return f"{noun} in {low}, {_num(maximum)}]"
    if above is not None:
        return f"{noun} > {_num(above)}"
    if minimum is not None:
        return f"a non-negative {noun.removeprefix('a ').removeprefix('an ')}" if minimum == 0 and noun == "a number" \
            else f"{noun} >= {_num(minimum)}"
    if maximum is not None:
        return f"{noun} <= {_num(maximum)}"
    return noun


def _as_float(value: Any) -> float | None:
    """A finite number from a number or a string that is one (``"1e-05"``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


class Integer(Kind):
    """A whole number, within ``[minimum, maximum]`` when given. ``"8192"`` and ``8192.0``
    are read as 8192; ``"8k"`` is an error (write the number)."""

    def __init__(self, minimum: int | None = None, maximum: int | None = None, *,
                 example: int | None = None, expected: str | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        if expected is None:
            expected = _range_text("an integer", minimum, maximum, None)
            if minimum is not None and maximum is not None:
                expected = f"an integer between {minimum} and {maximum}"
            if example is not None:
                expected += f" (e.g. {example})"
        self.expected = expected

    def convert(self, value: Any) -> Any:
        if isinstance(value, bool):
            raise Invalid()
        if isinstance(value, int):
            number = value
        else:
            as_float = _as_float(value)
            if isinstance(value, str):
                try:
                    number = int(value.strip())
                except ValueError:
                    if as_float is None or not as_float.is_integer():
                        raise Invalid() from None
                    number = int(as_float)
            elif as_float is not None and as_float.is_integer():
                number = int(as_float)
            else:
                raise Invalid()
        if (self.minimum is not None and number < self.minimum) or (self.maximum is not None and number > self.maximum):
            raise Invalid()
        return number


class Number(Kind):
    """A real number: ``minimum``/``maximum`` inclusive, ``above`` exclusive. Returns a float."""

    def __init__(self, minimum: float | None = None, maximum: float | None = None, *,
                 above: float | None = None, expected: str | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.above = above
        self.expected = expected or _range_text("a number", minimum, maximum, above)

    def convert(self, value: Any) -> Any:
        number = _as_float(value)
        if number is None or not self._in_range(number):
            raise Invalid()
        return number

    def _in_range(self, number: float) -> bool:
        if self.minimum is not None and number < self.minimum:
            return False
        if self.above is not None and number <= self.above:
            return False
        return self.maximum is None or number <= self.maximum


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class Duration(Number):
    """Seconds, as a number or with a unit: ``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"90d"``."""

    def __init__(self, minimum: float = 0.0, maximum: float | None = None, *, expected: str | None = None) -> None:
        super().__init__(minimum, maximum, expected=expected or (
            f"a duration >= {_num(minimum)}s (a number of seconds, or e.g. '500ms', '30s', '5m')"))

    def convert(self, value: Any) -> Any:
        if isinstance(value, str):
            match = _DURATION.match(value)
            if match is None:
                raise Invalid()
            seconds = float(match.group(1)) * _UNITS[match.group(2)]
            if not self._in_range(seconds):
                raise Invalid()
            return seconds
        return super().convert(value)


class String(Kind):
    """Text. Numbers and dates are taken as their text (``api_version: 2024-10-21``
    is a date to YAML); ``non_empty`` refuses blank text; ``pattern`` must match it all."""

    def __init__(self, *, non_empty: bool = False, pattern: str | None = None, expected: str | None = None) -> None:
        self.non_empty = non_empty
        self.pattern = re.compile(pattern) if pattern else None
        self.expected = expected or ("a non-empty string" if non_empty else "a string")

    def convert(self, value: Any) -> Any:
        if isinstance(value, bool):
            raise Invalid()
        if isinstance(value, (datetime.date, datetime.time)):
            value = value.isoformat()
        elif isinstance(value, (int, float)):
            value = str(value)
        if not isinstance(value, str):
            raise Invalid()
        if self.non_empty and not value.strip():
            raise Invalid()
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise Invalid()
        return value


class Reference(String):
    """A secret: ``${ENV_VAR}``, ``file:/run/secrets/name`` or a literal. Problems never
    show the value."""

    secret = True

    def __init__(self) -> None:
        super().__init__(expected="a secret reference such as ${ENV_VAR} or file:/run/secrets/name")


class Choice(Kind):
    """One of ``options`` (compared by type too, so ``1`` is not ``true``);
    ``fold_case`` accepts ``INFO`` for ``info``."""

    def __init__(self, *options: Any, fold_case: bool = False, expected: str | None = None) -> None:
        self.options = options
        self.fold_case = fold_case
        shown = [("true" if o else "false") if isinstance(o, bool) else str(o) for o in options]
        self.expected = expected or f"one of {', '.join(shown)}"

    def convert(self, value: Any) -> Any:
        for option in self.options:
            if type(option) is type(value) and option == value:
                return option
            if self.fold_case and isinstance(value, str) and isinstance(option, str) and option.lower() == value.lower():
                return option
        raise Invalid()


class Custom(Kind):
    """A check written as a function: ``check(value)`` returns the value to use, or
    raises :class:`Invalid` (with a message, or empty for "expected ..., got ...")."""

    def __init__(self, check: Callable[[Any], Any], expected: str) -> None:
        self.check = check
        self.expected = expected

    def convert(self, value: Any) -> Any:
        return self.check(value)


class ListOf(Kind):
    """A list whose items are ``item``. ``single``: one bare item is a one-item list."""

    def __init__(self, item: Kind, *, non_empty: bool = False, single: bool = False, expected: str | None = None) -> None:
        self.item = item
        self.non_empty = non_empty
        self.single = single
        self.expected = expected or f"a {'non-empty ' if non_empty else ''}list of {item.expected.removeprefix('a ').removeprefix('an ')}"

    def parse(self, value: Any, path: str, problems: list[str]) -> Any:
        if self.single and not isinstance(value, list):
            value = [value]
        if not isinstance(value, list) or (self.non_empty and not value):
            problems.append(f"{path}: expected {self.expected}, got {_show(value)}")
            return INVALID
        out = [self.item.parse(v, _join(path, i), problems) for i, v in enumerate(value)]
        return [v for v in out if v is not INVALID]


class MapOf(Kind):
    """A mapping with free keys (header names, team names) whose values are ``value``."""

    def __init__(self, value: Kind, *, expected: str | None = None) -> None:
        self.value = value
        self.expected = expected or "a mapping"

    def parse(self, value: Any, path: str, problems: list[str]) -> Any:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected {self.expected}, got {_show(value)}")
            return INVALID
        out = {k: self.value.parse(v, _join(path, k), problems) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not INVALID}


@dataclasses.dataclass(slots=True, frozen=True)
class Field:
    """One key of a :class:`Section`.

    ``default``: the value when the key is absent or ``null`` (without one, a
    section with ``into`` leaves the dataclass default, a nested section parses as
    empty, anything else is ``None``). ``factory`` makes a fresh default (``list``).
    ``required``: absence is a problem (a string is added as a hint). ``nullable``:
    an explicit ``null`` is kept as ``None`` (``error_rate: null`` turns a check off).
    """

    kind: Kind
    default: Any = _MISSING
    required: bool | str = False
    nullable: bool = False
    factory: Callable[[], Any] | None = None


class Section(Kind):
    """A mapping with known keys. Unknown keys are problems (with a "did you mean");
    ``into`` (a dataclass) receives the parsed values as keyword arguments."""

    def __init__(self, fields: Mapping[str, Field | Kind], *, into: Callable[..., Any] | None = None,
                 expected: str = "a mapping") -> None:
        self.fields: dict[str, Field] = {
            name: spec if isinstance(spec, Field) else Field(spec) for name, spec in fields.items()
        }
        self.into = into
        self.expected = expected

    def parse(self, value: Any, path: str, problems: list[str], *, defaults: bool = True) -> Any:
        """The section's values. ``defaults=False``: only the keys present (and valid),
        as a dict, for settings that override others key by key."""
        if value is None:
            value = {}
        if not isinstance(value, dict):
            problems.append(f"{path}: expected {self.expected}, got {_show(value)}")
            value = {}
        for key in value:
            if key not in self.fields:
                problems.append(f"{_join(path, key)}: {unknown_key(key, self.fields)}")
        out: dict[str, Any] = {}
        for name, spec in self.fields.items():
            where = _join(path, name)
            raw = value.get(name)
            parsed = INVALID
            if raw is None and name in value and spec.nullable:
                parsed = None
            elif raw is not None:
                parsed = spec.kind.parse(raw, where, problems)
            elif spec.required:
                hint = f" ({spec.required})" if isinstance(spec.required, str) else ""
                problems.append(f"{where}: required{hint}")
            if parsed is not INVALID:
                out[name] = parsed
            elif defaults:
                default = self._default(spec, where, problems)
                if default is not _MISSING:
                    out[name] = default
        if self.into is not None and defaults:
            try:
                return self.into(**out)
            except TypeError:  # a required value is missing: already a problem
                if not problems:
                    raise
                return INVALID
        return out

    def _default(self, spec: Field, path: str, problems: list[str]) -> Any:
        if spec.factory is not None:
            return spec.factory()
        if spec.default is not _MISSING:
            return copy.copy(spec.default)
        if isinstance(spec.kind, Section):
            return spec.kind.parse({}, path, problems)
        return _MISSING if self.into is not None else None
