"""count_tokens with offline tiktoken, and calibration of the fast estimate."""

from __future__ import annotations

import base64
import os
import pathlib
import struct
import subprocess
import sys
from typing import Any

import pytest
from clasp_claude.request import IMAGE_TOKENS, PDF_PAGE_TOKENS, estimate_input_tokens
from clasp_claude.tokens import (
    count_tokens,
    encoding_for_model,
    get_encoding,
    image_size,
    image_tokens,
    pdf_tokens,
    tiktoken_cache_dir,
)

from clasp_gateway.errors import InvalidRequestError

ROOT = pathlib.Path(__file__).resolve().parents[3]


def png(w: int, h: int) -> bytes:
    return (
        b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + struct.pack(">II", w, h) + b"\x08\x02\x00\x00\x00" + b"\x00" * 20
    )


def jpeg(w: int, h: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, h, w, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof0 + b"\x00" * 16


def gif(w: int, h: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", w, h) + b"\x00" * 10


def data_url(raw: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(raw).decode()}"


def body(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}
    base.update(kw)
    return base


# -- offline tiktoken ---------------------------------------------------------------------------


def test_cache_dir_found_without_importing_litellm() -> None:
    code = (
        "import sys; from clasp_claude.tokens import tiktoken_cache_dir; d = tiktoken_cache_dir(); "
        "assert 'litellm' not in sys.modules, 'litellm was imported'; print(d)"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins' / 'clasp-claude'}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    path = out.stdout.strip()
    assert path.endswith(os.path.join("litellm", "litellm_core_utils", "tokenizers"))
    assert os.path.isdir(path)
    assert tiktoken_cache_dir() == path


def test_encodings_load_offline_from_litellm_files() -> None:
    code = (
        "import os; os.environ.pop('TIKTOKEN_CACHE_DIR', None)\n"
        "from clasp_claude.tokens import get_encoding\n"
        "for name in ('o200k_base', 'cl100k_base'):\n"
        "    assert get_encoding(name).encode_ordinary('hello world') \n"
        "assert 'tokenizers' in os.environ['TIKTOKEN_CACHE_DIR']\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    env["PYTHONPATH"] = f"{ROOT}:{ROOT / 'plugins' / 'clasp-claude'}"
    # No network: a download attempt would fail (and proxies are pointed nowhere).
    env.update({"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr


def test_encoding_is_cached() -> None:
    assert get_encoding("o200k_base") is get_encoding("o200k_base")


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("openai/gpt-4o-mini", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("azure/gpt-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("deepseek-chat", "o200k_base"),
        ("llama3.1:8b", "o200k_base"),
        ("gemini-2.5-pro", "o200k_base"),
    ],
)
def test_encoding_for_model(model: str, encoding: str) -> None:
    assert encoding_for_model(model) == encoding


# -- counting ------------------------------------------------------------------------------------


def n(text: str, name: str = "o200k_base") -> int:
    return len(get_encoding(name).encode_ordinary(text))


def test_exact_count_of_a_simple_request() -> None:
    # reply priming 3 + (3 framing + 1 role) per message + text
    assert count_tokens(body()) == 3 + 4 + n("hi")
    assert count_tokens(body(system="Be brief.")) == 3 + 4 + n("Be brief.") + 4 + n("hi")
    assert count_tokens(body(), "cl100k_base") == 3 + 4 + n("hi", "cl100k_base")


def test_tool_calls_and_results_are_counted() -> None:
    b = body(
        messages=[
            {"role": "user", "content": "list"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a.py\nb.py"}]},
        ]
    )
    expected = 3 + 4 + n("list") + 4 + 3 + n("Bash") + n('{"command":"ls"}') + 4 + n("a.py\nb.py")
    assert count_tokens(b) == expected


def test_tools_add_tokens_and_thinking_history_adds_none() -> None:
    tool = {
        "name": "Read",
        "description": "Reads a file from the local filesystem.",
        "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}},
    }
    assert count_tokens(body(tools=[tool])) > count_tokens(body()) + 20
    with_thinking = body(
        messages=[
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "long " * 500, "signature": "s"},
                    {"type": "text", "text": "a"},
                ],
            },
            {"role": "user", "content": "again"},
        ]
    )
    without = body(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "again"},
        ]
    )
    assert count_tokens(with_thinking) == count_tokens(without)


def test_special_token_text_is_plain_text() -> None:
    assert count_tokens(body(messages=[{"role": "user", "content": "<|endoftext|> <|im_start|>"}])) > 7


def test_validation_is_the_same_as_messages() -> None:
    with pytest.raises(InvalidRequestError, match=r"messages\.0\.content\.0: unknown content block type 'foo'"):
        count_tokens(body(messages=[{"role": "user", "content": [{"type": "foo"}]}]))
    with pytest.raises(InvalidRequestError, match="messages: at least one message"):
        count_tokens(body(messages=[]))
    assert count_tokens(body(max_tokens=10)) == count_tokens(body())


# -- media ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "size"),
    [(png(800, 600), (800, 600)), (jpeg(1920, 1080), (1920, 1080)), (gif(10, 20), (10, 20)), (b"nope", None)],
)
def test_image_size(raw: bytes, size: tuple[int, int] | None) -> None:
    assert image_size(raw) == size


@pytest.mark.parametrize(
    ("url", "tokens"),
    [
        (data_url(png(200, 200)), 53),  # 200*200/750
        (data_url(png(1000, 1000)), 1333),
        (data_url(jpeg(1920, 1080), "image/jpeg"), 1533),  # resized to fit 1568 px and ~1.15 MP
        (data_url(png(4000, 4000)), 1533),
        (data_url(b"not an image"), IMAGE_TOKENS),
        ("https://example.com/cat.png", IMAGE_TOKENS),
    ],
)
def test_image_tokens(url: str, tokens: int) -> None:
    assert image_tokens(url) == tokens


def test_images_and_pdfs_in_a_request() -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(png(1000, 1000)).decode()},
    }
    assert count_tokens(body(messages=[{"role": "user", "content": [image]}])) == 3 + 4 + 1333
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Pages /Count 2 >>\n2 0 obj << /Type /Page >>\n3 0 obj << /Type/Page >>\n"
    url = data_url(pdf, "application/pdf")
    assert pdf_tokens(url) == 2 * PDF_PAGE_TOKENS
    doc = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": base64.b64encode(pdf).decode()},
    }
    assert count_tokens(body(messages=[{"role": "user", "content": [doc]}])) == 3 + 4 + 2 * PDF_PAGE_TOKENS


# -- calibration of the fast estimate -------------------------------------------------------------------

PROSE = """You are an interactive CLI tool that helps users with software engineering tasks. Use the
instructions below and the tools available to you to assist the user. IMPORTANT: Assist with
defensive security tasks only. Refuse to create, modify, or improve code that may be used
maliciously. When the user asks about the codebase, search for the relevant files first and
read them before answering; never guess at file contents or APIs you have not seen. Keep your
responses short, since they will be displayed on a command line interface. Answer the user's
question directly, without elaboration, explanation, or details unless asked. When you run a
non-trivial bash command, explain what the command does and why you are running it, to make
sure the user understands what you are doing. Prefer editing existing files to creating new
ones. Follow the conventions of the project: look at neighbouring files, the test framework in
use, and the way errors are handled before you change anything. Always run the linter and the
type checker after a change when the project has them, and fix what they report.
"""

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "file_path": {"type": "string", "description": "The absolute path to the file to modify"},
        "old_string": {"type": "string", "description": "The text to replace"},
        "new_string": {
            "type": "string",
            "description": "The text to replace it with (must be different from old_string)",
        },
        "replace_all": {
            "type": "boolean",
            "default": False,
            "description": "Replace all occurrences of old_string (default false)",
        },
        "todos": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "content": {"type": "string", "minLength": 1},
                    "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
                },
                "required": ["content", "status"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["file_path", "old_string", "new_string"],
}


def _code_samples() -> list[str]:
    files = sorted((ROOT / "clasp_gateway").glob("*.py")) + sorted(
        (ROOT / "plugins" / "clasp-claude" / "clasp_claude").glob("*.py")
    )
    texts = [f.read_text() for f in files]
    return [t for t in texts if len(t) > 2000] or [PROSE * 3]


def claude_code_like(n_tools: int, n_turns: int, code_chars: int, prose_chars: int) -> dict[str, Any]:
    prose = (PROSE * 40)[:prose_chars]
    code = _code_samples()
    messages: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"<system-reminder>{prose[: prose_chars // 2]}</system-reminder>"},
                {"type": "text", "text": "Fix the failing test in the client module."},
            ],
        }
    ]
    for turn in range(n_turns):
        messages.append(
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me read the file."},
                    {
                        "type": "tool_use",
                        "id": f"toolu_{turn:024d}",
                        "name": "Read",
                        "input": {"file_path": f"/repo/src/m{turn}.py"},
                    },
                ],
            }
        )
        messages.append(
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": f"toolu_{turn:024d}",
                        "content": code[turn % len(code)][:code_chars],
                    },
                ],
            }
        )
    tools = [
        {"name": f"Tool{i}", "description": (PROSE * 3)[i * 150 : i * 150 + 600], "input_schema": SCHEMA}
        for i in range(n_tools)
    ]
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "stream": True,
        "system": [{"type": "text", "text": prose, "cache_control": {"type": "ephemeral"}}],
        "messages": messages,
        "tools": tools,
        "metadata": {"user_id": "user_abc"},
    }


@pytest.mark.parametrize(
    "shape",
    [
        (15, 0, 0, 3000),
        (15, 2, 3000, 3000),
        (15, 6, 4000, 6000),
        (5, 10, 6000, 2000),
        (0, 10, 6000, 500),
        (0, 1, 0, 20000),
        (12, 20, 2000, 8000),
    ],
)
def test_estimate_is_calibrated(shape: tuple[int, int, int, int]) -> None:
    request = claude_code_like(*shape)
    exact = count_tokens(request)
    estimate = estimate_input_tokens(request)
    assert 0.8 <= estimate / exact <= 1.35, (estimate, exact)
