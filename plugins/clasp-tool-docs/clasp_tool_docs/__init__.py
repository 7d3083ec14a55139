"""``docs_lookup``: a server-side tool searching a folder of company markdown docs.

The gateway offers the tool to the model and runs it itself (``register_tools``); the
client (Claude Code, an SDK) never sees it. Configure in clasp.yaml::

    docs_lookup:
      path: ./company-docs        # folder of .md files (relative to clasp.yaml)
      max_results: 5              # sections per answer (the model may ask for fewer)
      snippet_chars: 700          # text per section
      refresh_seconds: 30         # how often to look for edited files
    server_tools:
      enabled: [docs_lookup]

The index is built at start-up (a missing folder refuses to start, saying so) and
rebuilt when files change; searching runs in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clasp_gateway import Config, ToolContext, hookimpl

from .search import DocsIndex, format_hits

__version__ = "0.1.0"
__all__ = [
    "DESCRIPTION", "INPUT_SCHEMA", "TOOL_NAME", "DocsSettings", "docs_lookup", "register_config_sections",
    "settings_from", "validate_config",
]

TOOL_NAME = "docs_lookup"
DESCRIPTION = (
    "Search the company's internal documentation (runbooks, conventions, architecture notes) by "
    "keywords. Returns the best matching sections with their file path and an excerpt. Use it "
    "before answering questions about internal systems, processes or conventions."
)
INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "description": "Keywords to search for, e.g. 'rollback deploy'"},
        "max_results": {"type": "integer", "minimum": 1, "maximum": 10, "description": "Sections to return"},
    },
    "required": ["query"],
}


@dataclass(slots=True, frozen=True)
class DocsSettings:
    """The ``docs_lookup:`` section of clasp.yaml."""

    path: Path
    max_results: int = 5
    snippet_chars: int = 700
    refresh_seconds: float = 30.0


def settings_from(config: Config) -> DocsSettings | None:
    """The validated section (``None`` when absent); a ``ValueError`` names the bad key."""
    raw = config.raw.get("docs_lookup")
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("path"), str) or not raw["path"].strip():
        raise ValueError(f"{config.source}: docs_lookup.path: required, the folder of markdown docs")
    base = Path(config.source).parent if Path(config.source).is_file() else Path.cwd()
    path = (base / Path(raw["path"]).expanduser()).resolve()

    def positive(key: str, default: float, kind: type) -> Any:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or (
            kind is int and not isinstance(value, int)
        ):
            raise ValueError(f"{config.source}: docs_lookup.{key}: expected a positive {kind.__name__}, got {value!r}")
        return kind(value)

    return DocsSettings(
        path=path,
        max_results=positive("max_results", 5, int),
        snippet_chars=positive("snippet_chars", 700, int),
        refresh_seconds=positive("refresh_seconds", 30.0, float),
    )


_indexes: dict[Path, DocsIndex] = {}
_lock = threading.Lock()


def index_for(settings: DocsSettings) -> DocsIndex:
    """The index of ``settings.path``, rebuilt when files changed (blocking)."""
    with _lock:
        index = _indexes.get(settings.path)
        now = time.monotonic()
        if index is not None and now - index.checked < settings.refresh_seconds:
            return index
        if not settings.path.is_dir():
            raise FileNotFoundError(f"the docs folder {settings.path} does not exist")
        if index is not None and DocsIndex.signature_of(DocsIndex.files(settings.path)) == index.signature:
            index.checked = now
            return index
        index = DocsIndex.build(settings.path)
        _indexes[settings.path] = index
        return index


def docs_lookup(arguments: dict[str, Any], ctx: ToolContext) -> str:
    """The tool handler (a plain function: the gateway runs it in a worker thread)."""
    settings = settings_from(ctx.config)
    if settings is None:
        raise RuntimeError("docs_lookup is not configured on this gateway (docs_lookup.path in clasp.yaml)")
    query = arguments.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ValueError('"query" must be a non-empty string of keywords, e.g. {"query": "rollback deploy"}')
    limit = arguments.get("max_results", settings.max_results)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        limit = settings.max_results
    hits = index_for(settings).search(query, min(limit, 10), settings.snippet_chars)
    return format_hits(query.strip(), hits)


@hookimpl
def register_tools(register: Callable[..., None]) -> None:
    register(TOOL_NAME, DESCRIPTION, INPUT_SCHEMA, docs_lookup)


@hookimpl
def register_config_sections(register: Callable[..., None]) -> None:
    """``docs_lookup:`` is this plugin's section."""
    register("docs_lookup")


@hookimpl
def validate_config(config: Config) -> list[str] | None:
    """The section and its folder, checked by ``clasp check`` and before ``clasp serve`` binds."""
    try:
        settings = settings_from(config)
    except ValueError as exc:
        return [str(exc).removeprefix(f"{config.source}: ")]
    if settings is not None and not settings.path.is_dir():
        return [f"docs_lookup.path: {settings.path} is not a folder (create it or fix the path)"]
    return None


@hookimpl
def startup(app: Any, config: Config) -> Any:
    """Check the folder and build the index before serving, so mistakes show at once."""
    try:
        settings = settings_from(config)
    except ValueError as exc:
        raise RuntimeError(str(exc)) from None
    if settings is None:
        return None
    if not settings.path.is_dir():
        raise RuntimeError(
            f"{config.source}: docs_lookup.path: {settings.path} is not a folder (create it or fix the path)"
        )
    return asyncio.to_thread(index_for, settings)
