"""The docs_lookup tool: indexing, ranking, snippets, configuration and refresh.

The tool running inside the gateway's loop is tested in the gateway's
``tests/test_server_tools.py``; these tests call it the way the gateway does.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import clasp_tool_docs
import pytest
from clasp_tool_docs import docs_lookup, settings_from
from clasp_tool_docs.search import DocsIndex, snippet, split_sections, stem, tokenize

from clasp_gateway.config import parse_config
from clasp_gateway.shaping.server_tools import ToolContext
from clasp_gateway.types import RequestContext

ONCALL = """# On-call

Intro text about the rotation.

## Paging

Pages go to the primary first, then the secondary after 10 minutes.

```bash
# this is a shell comment, not a heading
pagerctl escalate --team payments
```

## Handover

Write a handover note every Monday.
"""


def tool_ctx(config_data: dict[str, Any], source: str = "test-config") -> ToolContext:
    config = parse_config({"models": {}, **config_data}, source)
    request = RequestContext(request_id="req_test", api="anthropic", public_model="m", client_stream=False)
    return ToolContext(request=request, config=config, call_id="call_1", round=1)


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "team").mkdir(parents=True)
    (root / "team" / "oncall.md").write_text(ONCALL)
    (root / "deploying-services.md").write_text(
        "# Deploying services\n\nShip with `deployctl ship`.\n\n## Rollbacks\n\nRoll back with `deployctl rollback`.\n"
    )
    (root / "node_modules").mkdir()
    (root / "node_modules" / "noise.md").write_text("# Rollbacks\nvendored noise about rollbacks\n")
    (root / "image.png").write_bytes(b"\x89PNG")
    return root


def test_tokens_are_lowercased_stemmed_and_stop_words_dropped() -> None:
    assert tokenize("How do I Roll back the Deploys? Deploying, deployed!") == [
        "roll", "back", "deploy", "deploy", "deploy"]
    assert [stem(w) for w in ("policies", "status", "class", "analysis", "rolling")] == [
        "policy", "status", "class", "analysis", "roll"]


def test_sections_follow_headings_but_not_comments_in_code() -> None:
    sections = split_sections("team/oncall.md", ONCALL)
    assert [s.title for s in sections] == ["On-call", "On-call › Paging", "On-call › Handover"]
    assert "pagerctl escalate" in sections[1].text and "# this is a shell comment" in sections[1].text


def test_search_ranks_the_matching_section_first(docs: Path) -> None:
    index = DocsIndex.build(docs)
    assert {s.path for s in index.sections} == {"team/oncall.md", "deploying-services.md"}  # no vendored files
    hits = index.search("rolling back a deploy")
    assert hits[0].section.title == "Deploying services › Rollbacks"
    assert hits[0].snippet == "Roll back with `deployctl rollback`."
    assert index.search("escalate payments")[0].section.title == "On-call › Paging"
    assert index.search("kubernetes") == [] and index.search("the of and") == []


def test_snippets_centre_on_the_best_line() -> None:
    text = "\n".join(f"filler line number {i} with nothing useful" for i in range(40))
    text += "\nthe magic word is xylophone\n" + "\n".join(f"tail {i}" for i in range(40))
    cut = snippet(text, ["xylophone"], 200)
    assert cut.startswith("… filler line number 39") and "xylophone" in cut and len(cut) < 220


def test_the_tool_answers_with_paths_titles_and_excerpts(docs: Path) -> None:
    ctx = tool_ctx({"docs_lookup": {"path": str(docs), "max_results": 1}})
    answer = docs_lookup({"query": "rollback"}, ctx)
    assert answer == (
        "1 result(s) for 'rollback' in the company docs:\n\n"
        "[1] deploying-services.md — Deploying services › Rollbacks\nRoll back with `deployctl rollback`."
    )
    assert docs_lookup({"query": "zebra"}, ctx) == "No document matched 'zebra'. Try other or fewer keywords."
    with pytest.raises(ValueError, match='"query" must be a non-empty string'):
        docs_lookup({"query": "  "}, ctx)
    with pytest.raises(RuntimeError, match="docs_lookup is not configured"):
        docs_lookup({"query": "x"}, tool_ctx({}))


def test_edited_docs_are_picked_up(docs: Path) -> None:
    ctx = tool_ctx({"docs_lookup": {"path": str(docs), "refresh_seconds": 30}})
    assert "No document matched" in docs_lookup({"query": "quokka"}, ctx)
    new = docs / "animals.md"
    new.write_text("# Animals\n\nThe office quokka is called Steve.\n")
    os.utime(new, (time.time() + 5, time.time() + 5))
    assert "No document matched" in docs_lookup({"query": "quokka"}, ctx)  # within refresh_seconds: cached
    settings = settings_from(ctx.config)
    assert settings is not None
    clasp_tool_docs.index_for(settings).checked -= 31  # 31 s later, as far as the index can tell (no sleeping)
    assert "The office quokka is called Steve." in docs_lookup({"query": "quokka"}, ctx)


def test_relative_paths_start_at_the_config_file(docs: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "clasp.yaml"
    config_file.write_text("")
    settings = settings_from(tool_ctx({"docs_lookup": {"path": "docs"}}, str(config_file)).config)
    assert settings is not None and settings.path == docs.resolve()


@pytest.mark.parametrize(("section", "message"), [
    ({"max_results": 3}, "docs_lookup.path: required"),
    ({"path": "x", "max_results": 0}, "docs_lookup.max_results: expected a positive int"),
    ({"path": "x", "snippet_chars": "long"}, "docs_lookup.snippet_chars: expected a positive int"),
])
def test_bad_settings_say_which_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings_from(tool_ctx({"docs_lookup": section}).config)


def test_startup_refuses_a_missing_folder_and_builds_the_index(docs: Path, tmp_path: Path) -> None:
    missing = tool_ctx({"docs_lookup": {"path": str(tmp_path / "nope")}}).config
    with pytest.raises(RuntimeError, match=r"docs_lookup.path: .*nope is not a folder"):
        clasp_tool_docs.startup(app=None, config=missing)
    assert clasp_tool_docs.startup(app=None, config=tool_ctx({}).config) is None  # not configured: nothing to do
    index = asyncio.run(clasp_tool_docs.startup(app=None, config=tool_ctx({"docs_lookup": {"path": str(docs)}}).config))
    assert isinstance(index, DocsIndex) and index.sections
