"""clean_schema: provider dialects of JSON Schema."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from clasp_gateway.shaping.schema import clean_schema

# A Claude-Code-like tool schema: draft 2020-12, additionalProperties false, nested
# $defs references, formats, defaults, const, nullable unions.
CLAUDE_CODE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "url": {"type": "string", "format": "uri", "description": "The URL to fetch"},
        "when": {"type": "string", "format": "date-time"},
        "mode": {"const": "fast"},
        "limit": {"type": "integer", "default": 10, "exclusiveMinimum": 0},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "tags": {"type": ["array", "null"], "items": {"type": "string"}},
        "todos": {"type": "array", "items": {"$ref": "#/$defs/Todo"}},
        "meta": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "propertyNames": {"pattern": "^[a-z]+$"},
        },
    },
    "required": ["url", "todos"],
    "$defs": {
        "Todo": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "content": {"type": "string", "minLength": 1},
                "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
                "owner": {"$ref": "#/$defs/User"},
            },
            "required": ["content", "status"],
        },
        "User": {"type": "object", "properties": {"name": {"type": "string"}}, "$comment": "x"},
    },
}

FORBIDDEN_FOR_GEMINI = {
    "$schema",
    "$id",
    "$comment",
    "$ref",
    "$defs",
    "definitions",
    "additionalProperties",
    "default",
    "examples",
    "const",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "propertyNames",
    "patternProperties",
    "unevaluatedProperties",
    "oneOf",
    "allOf",
}


def _walk_keys(schema: object, path: str = "") -> list[tuple[str, str]]:
    """(path, keyword) for every keyword, skipping property *names*."""
    found: list[tuple[str, str]] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            found.append((path, key))
            if key == "properties" and isinstance(value, dict):
                for name, sub in value.items():
                    found.extend(_walk_keys(sub, f"{path}.properties.{name}"))
            elif isinstance(value, (dict, list)):
                found.extend(_walk_keys(value, f"{path}.{key}"))
    elif isinstance(schema, list):
        for i, item in enumerate(schema):
            found.extend(_walk_keys(item, f"{path}.{i}"))
    return found


def test_none_returns_input_as_is() -> None:
    assert clean_schema(CLAUDE_CODE_SCHEMA, "none") is CLAUDE_CODE_SCHEMA


def test_openai_drops_only_dollar_schema() -> None:
    out = clean_schema(CLAUDE_CODE_SCHEMA, "openai")
    expected = {k: v for k, v in CLAUDE_CODE_SCHEMA.items() if k != "$schema"}
    assert out == expected
    assert out["additionalProperties"] is False
    assert out["properties"]["url"]["format"] == "uri"


@pytest.mark.parametrize("dialect", ["none", "openai", "gemini", "strict"])
def test_never_mutates_input(dialect: str) -> None:
    before = copy.deepcopy(CLAUDE_CODE_SCHEMA)
    out = clean_schema(CLAUDE_CODE_SCHEMA, dialect)
    assert CLAUDE_CODE_SCHEMA == before
    if dialect in ("gemini", "strict"):
        out["properties"]["x"] = {"type": "string"}  # editing a fresh result...
    if dialect != "none":
        out["type"] = "changed"
    assert CLAUDE_CODE_SCHEMA == before  # ...never touches the input


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({}, {"type": "object", "properties": {}}),
        ({"properties": {"a": {"type": "string"}}}, {"type": "object", "properties": {"a": {"type": "string"}}}),
        ({"type": "object"}, {"type": "object", "properties": {}}),
        ({"$schema": "x", "type": "object", "properties": {}}, {"type": "object", "properties": {}}),
    ],
)
def test_openai_top_level_is_object_with_properties(schema: dict, expected: dict) -> None:
    assert clean_schema(schema, "openai") == expected


@pytest.mark.parametrize("dialect", ["gemini", "strict"])
def test_gemini_removes_every_unsupported_keyword(dialect: str) -> None:
    out = clean_schema(CLAUDE_CODE_SCHEMA, dialect)
    bad = [(p, k) for p, k in _walk_keys(out) if k in FORBIDDEN_FOR_GEMINI]
    assert bad == []


def test_gemini_exact_output() -> None:
    out = clean_schema(CLAUDE_CODE_SCHEMA, "gemini")
    assert out == {
        "type": "object",
        "properties": {
            "url": {"type": "string", "description": "The URL to fetch"},
            "when": {"type": "string", "format": "date-time"},
            "mode": {"type": "string", "enum": ["fast"]},
            "limit": {"type": "integer"},
            "note": {"type": "string", "nullable": True},
            "tags": {"type": "array", "items": {"type": "string"}, "nullable": True},
            "todos": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "content": {"type": "string", "minLength": 1},
                        "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
                        "owner": {"type": "object", "properties": {"name": {"type": "string"}}},
                    },
                    "required": ["content", "status"],
                },
            },
            "meta": {"type": "object"},
        },
        "required": ["url", "todos"],
    }


def test_gemini_keeps_property_order() -> None:
    out = clean_schema(CLAUDE_CODE_SCHEMA, "gemini")
    assert list(out["properties"]) == list(CLAUDE_CODE_SCHEMA["properties"])
    todo = out["properties"]["todos"]["items"]
    assert list(todo["properties"]) == ["content", "status", "owner"]


def test_gemini_recursive_ref_becomes_plain_object() -> None:
    schema = {
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/Node"}},
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "value": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                },
            }
        },
    }
    out = clean_schema(schema, "gemini")
    node = out["properties"]["root"]
    assert node["properties"]["value"] == {"type": "string"}
    assert node["properties"]["children"] == {"type": "array", "items": {"type": "object"}}


def test_gemini_root_self_reference_and_definitions() -> None:
    schema = {
        "type": "object",
        "properties": {
            "again": {"$ref": "#"},
            "old": {"$ref": "#/definitions/Old"},
            "gone": {"$ref": "#/$defs/Missing"},
        },
        "definitions": {"Old": {"type": "number", "format": "double"}},
    }
    out = clean_schema(schema, "gemini")
    assert out["properties"] == {
        "again": {"type": "object"},
        "old": {"type": "number", "format": "double"},
        "gone": {"type": "object"},
    }


def test_gemini_ref_siblings_refine_target() -> None:
    schema = {
        "type": "object",
        "properties": {"u": {"$ref": "#/$defs/U", "description": "the user"}},
        "$defs": {"U": {"type": "string", "description": "generic"}},
    }
    assert clean_schema(schema, "gemini")["properties"]["u"] == {"type": "string", "description": "the user"}


@pytest.mark.parametrize(
    ("prop", "expected"),
    [
        ({"type": ["string", "null"]}, {"type": "string", "nullable": True}),
        ({"type": "null"}, {"nullable": True}),
        ({"oneOf": [{"type": "integer"}, {"type": "null"}]}, {"type": "integer", "nullable": True}),
        (
            {"anyOf": [{"type": "integer"}, {"type": "string", "format": "uri"}]},
            {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        ),
        (
            {"type": ["string", "integer"], "description": "d"},
            {
                "anyOf": [{"type": "string", "description": "d"}, {"type": "integer", "description": "d"}],
                "description": "d",
            },
        ),
        ({"type": "string", "format": "email"}, {"type": "string"}),
        ({"type": "string", "format": "enum", "enum": ["a"]}, {"type": "string", "format": "enum", "enum": ["a"]}),
        ({"type": "integer", "format": "int64"}, {"type": "integer", "format": "int64"}),
        ({"const": 3}, {}),
        ({"type": "integer", "enum": [1, 2]}, {"type": "integer", "description": "Allowed values: 1, 2."}),
        (
            {
                "allOf": [
                    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                    {"properties": {"b": {"type": "integer"}}},
                ]
            },
            {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["a"]},
        ),
        (
            {"type": "array", "items": [{"type": "string"}, {"type": "integer"}]},
            {"type": "array", "items": {"type": "string"}},
        ),
        ({"type": "object", "properties": {}, "additionalProperties": True}, {"type": "object"}),
        (
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "ghost"]},
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
        ),
        ({"type": "string", "examples": ["x"], "deprecated": True, "readOnly": True}, {"type": "string"}),
    ],
)
def test_gemini_keyword_rewrites(prop: dict, expected: dict) -> None:
    out = clean_schema({"type": "object", "properties": {"p": prop}}, "gemini")
    assert out["properties"]["p"] == expected


def test_gemini_property_named_like_a_keyword_is_kept() -> None:
    schema = {"type": "object", "properties": {"default": {"type": "string"}, "format": {"type": "string"}}}
    assert set(clean_schema(schema, "gemini")["properties"]) == {"default", "format"}


def test_gemini_memoised_results_are_independent_copies() -> None:
    a = clean_schema(CLAUDE_CODE_SCHEMA, "gemini")
    a["properties"].clear()
    b = clean_schema(CLAUDE_CODE_SCHEMA, "gemini")
    assert b["properties"]
    assert a is not b


def test_gemini_top_level_without_type() -> None:
    assert clean_schema({"properties": {"a": {"type": "string"}}}, "gemini")["type"] == "object"
    assert clean_schema({}, "strict") == {"type": "object"}


def test_deeply_nested_schema_is_cut_not_crashing() -> None:
    schema: dict = {"type": "string"}
    for _ in range(200):
        schema = {"type": "object", "properties": {"x": schema}}
    out = clean_schema(schema, "gemini")
    assert orjson.dumps(out)  # finite and serialisable


def test_unknown_dialect_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown schema dialect"):
        clean_schema({}, "klingon")
