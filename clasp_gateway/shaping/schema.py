"""Provider-neutral cleaning of JSON Schemas (tool parameters, response formats).

Clients write tool schemas in full JSON Schema (Claude Code sends draft 2020-12 with
``$schema``, ``additionalProperties: false``, ``$defs``/``$ref``, ``format: uri``...).
Providers accept different subsets: OpenAI takes almost everything, Gemini takes a
strict OpenAPI-3.0 subset and answers 400 to anything else. :func:`clean_schema`
rewrites one schema for one *dialect*:

``"none"``
    The schema as given (same object).
``"openai"``
    Drops the top-level ``$schema`` and makes sure the top level is an object schema
    with ``properties``. Cheap (it runs for every tool of every request): a shallow
    copy whose nested values are shared with the input, so callers must not edit
    nested parts of the result in place (the other dialects return fresh copies).
``"gemini"`` / ``"strict"``
    Keeps only the keywords of Gemini's subset (a whitelist, so unknown future keywords
    never leak), inlines ``$ref`` from ``$defs``/``definitions`` (a recursive reference
    becomes ``{"type": "object"}``), turns ``const`` into a one-value ``enum``,
    ``anyOf``/``oneOf`` with ``null`` and ``type: [X, "null"]`` into ``nullable``,
    ``oneOf`` into ``anyOf``, merges ``allOf``, and keeps ``format`` only where Gemini
    allows it. Non-string ``enum`` values (rejected by Gemini) move into the
    description. ``"strict"`` is the same rewrite, for other providers that reject
    these keywords. Results are memoised by content, and a fresh copy is returned
    each time.

The input is never mutated. ``"openai"`` adds ``"properties": {}`` to a top-level
object schema lacking it (some OpenAI models reject one without); the Gemini
dialects do not, since Gemini rejects an *empty* ``properties``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson

__all__ = ["DIALECTS", "clean_schema"]

DIALECTS = ("none", "openai", "gemini", "strict")

# Gemini's Schema object (OpenAPI 3.0 subset). ``default`` and ``example`` are
# accepted by newer Gemini versions only, so they are dropped too.
_GEMINI_KEYS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "items",
        "minItems",
        "maxItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "anyOf",
        "propertyOrdering",
    }
)

# format values Gemini accepts, per type.
_GEMINI_FORMATS = {
    "string": frozenset({"enum", "date-time"}),
    "number": frozenset({"float", "double"}),
    "integer": frozenset({"int32", "int64"}),
}

_MAX_DEPTH = 64  # deeper schemas are cut to {"type": "object"}: no provider takes them anyway


def clean_schema(schema: dict[str, Any], dialect: str) -> dict[str, Any]:
    """Return *schema* rewritten for a provider *dialect* (see the module doc).

    The input is never mutated. Raises ``ValueError`` for an unknown dialect.
    """
    if dialect == "none":
        return schema
    if not isinstance(schema, dict):
        schema = {}
    if dialect == "openai":
        return _clean_openai(schema)
    if dialect in ("gemini", "strict"):
        try:
            # Key order is kept (not sorted): property order matters to models.
            key = orjson.dumps(schema)
        except TypeError:
            # Not JSON-serialisable (never the case for parsed JSON): no memo.
            return _clean_strict_top(schema)
        if len(key) > _MEMO_MAX_BYTES:  # the memo holds its keys: only schemas of a sane size
            return _clean_strict_top(schema)
        fresh: dict[str, Any] = orjson.loads(_cached_strict(key))
        return fresh
    raise ValueError(f"unknown schema dialect {dialect!r} (expected one of {', '.join(DIALECTS)})")


def _clean_openai(schema: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in schema.items() if k != "$schema"}
    if "type" not in out and not _is_combinator(out):
        out["type"] = "object"
    if out.get("type") == "object" and not isinstance(out.get("properties"), dict):
        # Some OpenAI models reject an object schema without "properties".
        out["properties"] = {}
    return out


def _is_combinator(schema: dict[str, Any]) -> bool:
    return "anyOf" in schema or "oneOf" in schema or "allOf" in schema or "$ref" in schema


_MEMO_MAX_BYTES = 64 * 1024
"""Largest tool schema memoised: schemas come from clients, and 2,048 of them at any
size would let requests keep gigabytes alive after they end."""


@lru_cache(maxsize=2048)
def _cached_strict(key: bytes) -> bytes:
    # Cached as bytes so every caller gets its own fresh dict (no shared mutable state).
    return orjson.dumps(_clean_strict_top(orjson.loads(key)))


def _clean_strict_top(schema: dict[str, Any]) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    for name in ("$defs", "definitions"):
        found = schema.get(name)
        if isinstance(found, dict):
            for k, v in found.items():
                defs[f"#/{name}/{k}"] = v
    out = _clean_strict(schema, defs, (), 0)
    if "type" not in out and "anyOf" not in out:
        out["type"] = "object"
    return out


def _resolve_ref(ref: Any, defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    """The schema a ``$ref`` points to, or ``None`` when unknown or recursive."""
    if not isinstance(ref, str) or ref in seen or ref == "#":
        return None
    target = defs.get(ref)
    if target is None:
        # JSON-pointer escapes (~1 = "/", ~0 = "~") in a definition name.
        target = defs.get(ref.replace("~1", "/").replace("~0", "~"))
    return target


def _clean_strict(schema: Any, defs: dict[str, Any], seen: tuple[str, ...], depth: int) -> dict[str, Any]:
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        # true / false / junk schemas: the widest thing Gemini understands.
        return {"type": "object"} if schema is not True else {}

    if "$ref" in schema:
        ref = schema["$ref"]
        target = _resolve_ref(ref, defs, seen)
        if target is None:
            # Recursive or dangling: Gemini cannot express it, so accept any object.
            base: dict[str, Any] = {"type": "object"}
        else:
            base = _clean_strict(target, defs, seen + (ref,), depth + 1)
        # Siblings of $ref (description, nullable...) refine the target.
        siblings = {k: v for k, v in schema.items() if k not in ("$ref", "$defs", "definitions")}
        if siblings:
            base.update(_clean_strict(siblings, defs, seen, depth + 1))
        return base

    if "allOf" in schema and isinstance(schema["allOf"], list):
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, dict) and "$ref" in part:
                target = _resolve_ref(part["$ref"], defs, seen)
                part = target if isinstance(target, dict) else {"type": "object"}
            if isinstance(part, dict):
                _merge_into(merged, part)
        return _clean_strict(merged, defs, seen, depth + 1)

    out: dict[str, Any] = {}
    nullable = schema.get("nullable") is True

    typ = schema.get("type")
    if isinstance(typ, list):
        kinds = [t for t in typ if isinstance(t, str) and t != "null"]
        if len(kinds) < len(typ):
            nullable = True
        if len(kinds) == 1:
            typ = kinds[0]
        elif not kinds:
            typ = None
        else:
            # Several types: Gemini has no type lists, but anyOf expresses them.
            variants = [_clean_strict({**schema, "type": k}, defs, seen, depth + 1) for k in kinds]
            out["anyOf"] = variants
            for key in ("description", "title"):
                if isinstance(schema.get(key), str):
                    out[key] = schema[key]
            if nullable:
                out["nullable"] = True
            return out
    elif typ == "null":
        typ = None
        nullable = True

    if isinstance(typ, str):
        out["type"] = typ

    for key, value in schema.items():
        if key == "type" or key == "nullable":
            continue
        if key == "const":
            if isinstance(value, str):
                out["enum"] = [value]
                out.setdefault("type", "string")
            continue
        if key in ("anyOf", "oneOf") and isinstance(value, list):
            variants = []
            for sub in value:
                if isinstance(sub, dict) and (sub.get("type") == "null" or sub == {"const": None}):
                    nullable = True
                    continue
                variants.append(_clean_strict(sub, defs, seen, depth + 1))
            if len(variants) == 1:
                # anyOf [X, null] -> X + nullable (the common Optional[X] shape).
                for k, v in variants[0].items():
                    out.setdefault(k, v)
            elif variants:
                out["anyOf"] = variants
            continue
        if key not in _GEMINI_KEYS:
            continue
        if key == "properties":
            if isinstance(value, dict):
                props = {str(name): _clean_strict(sub, defs, seen, depth + 1) for name, sub in value.items()}
                if props:
                    out["properties"] = props
            continue
        if key == "items":
            if isinstance(value, list):
                # Tuple form: Gemini has one item schema; take the first.
                value = value[0] if value else {}
            out["items"] = _clean_strict(value, defs, seen, depth + 1)
            continue
        if key == "required":
            if isinstance(value, list):
                out["required"] = [r for r in value if isinstance(r, str)]
            continue
        if key == "enum":
            if isinstance(value, list):
                if value and all(isinstance(v, str) for v in value):
                    out["enum"] = list(value)
                else:
                    # Gemini accepts only string enums: keep the allowed values as prose.
                    allowed = ", ".join(orjson.dumps(v).decode() for v in value if v is not None)
                    if None in value:
                        nullable = True
                    if allowed:
                        out["_enum_note"] = f"Allowed values: {allowed}."
            continue
        if key == "format":
            continue  # decided below, once the type is known
        if key in ("description", "title", "pattern") and not isinstance(value, str):
            continue
        out[key] = value

    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _GEMINI_FORMATS.get(out.get("type", ""), ()):
        out["format"] = fmt

    note = out.pop("_enum_note", None)
    if note:
        desc = out.get("description")
        out["description"] = f"{desc} {note}" if isinstance(desc, str) and desc else note

    if "required" in out:
        # Gemini rejects "required" entries that name no property.
        props = out.get("properties") or {}
        out["required"] = [r for r in out["required"] if r in props]
        if not out["required"]:
            del out["required"]

    if "items" in out and "type" not in out:
        out["type"] = "array"
    if "properties" in out and "type" not in out:
        out["type"] = "object"
    if nullable:
        out["nullable"] = True
    return out


def _merge_into(target: dict[str, Any], part: dict[str, Any]) -> None:
    """Merge one ``allOf`` member into *target* (properties and required are unioned)."""
    for key, value in part.items():
        if key == "properties" and isinstance(value, dict):
            props = dict(target.get("properties") or {})
            props.update(value)
            target["properties"] = props
        elif key == "required" and isinstance(value, list):
            req = list(target.get("required") or [])
            req.extend(r for r in value if r not in req)
            target["required"] = req
        else:
            target.setdefault(key, value)
