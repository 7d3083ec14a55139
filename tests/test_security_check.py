"""``clasp check --security`` on files with known problems: each finding named with
where it is and how to fix it, never the secret itself, and the exit status (1 on
findings, 0 on a clean file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from clasp_gateway.cli import main
from clasp_gateway.security import entropy_bits, weakness

STRONG = "Zx81-Lq0vT4mN7pR2sW9yB6kH3jF5dG1"
PROVIDER_KEY = "sk-ant-api03-" + "Q7w" * 12


def check(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: dict[str, Any], *extra: str) -> tuple[int, str]:
    path = tmp_path / "clasp.yaml"
    path.write_text(yaml.safe_dump({"storage": {"url": f"sqlite:///{tmp_path / 'db.sqlite'}"}, **data}))
    status = main(["check", "--security", "-c", str(path), *extra])
    return status, capsys.readouterr().out


def test_a_careful_file_has_no_findings(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASP_ADMIN_KEY", STRONG)
    monkeypatch.setenv("OPENAI_API_KEY", PROVIDER_KEY)
    status, out = check(tmp_path, capsys, {
        "server": {"host": "0.0.0.0", "behind_https": True},
        "keys": [{"key": "${CLASP_ADMIN_KEY}", "name": "ops", "role": "admin"}],
        "models": {"gpt-4o": [{"model": "openai/gpt-4o", "api_key": "${OPENAI_API_KEY}"}]},
    })
    assert status == 0 and "security: no findings" in out, out


def test_an_open_public_gateway_without_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = check(tmp_path, capsys, {"server": {"host": "0.0.0.0", "allow_unauthenticated": True,
                                                      "log_level": "debug", "cors": {"allow_origins": ["*"]}}})
    assert status == 1
    for expected in ("accepts requests without any key", "allow_unauthenticated", "TLS is off on 0.0.0.0",
                     "server.cors.allow_origins: every web site", "debug logging writes request details",
                     "fix: "):
        assert expected in out, (expected, out)


def test_plaintext_and_weak_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = check(tmp_path, capsys, {
        "keys": [{"key": "sk-1234", "name": "short"}, {"key": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "name": "same"},
                 {"key": "abababababababababababab", "name": "lowentropy"}, {"key": STRONG, "name": "strong",
                                                    "metadata": {"runbook": f"the old key was {PROVIDER_KEY}"}}],
        "models": {"gpt-4o": [{"model": "openai/gpt-4o", "api_key": PROVIDER_KEY,
                               "secret_headers": {"X-Portkey-Key": "literal-header-secret"}}]},
    }, "--host", "127.0.0.1")
    assert status == 1
    assert "keys.0: the key 'short' is weak: shorter than" in out
    assert "keys.1: the key 'same' is weak: a repeated character" in out
    assert "keys.2: the key 'lowentropy' is weak" in out
    assert "keys.3: the key" not in out  # strong, though written in the file:
    assert "keys.3.key: a secret is written in the file in plain text" in out
    assert "models.gpt-4o.0.api_key: a secret is written in the file in plain text" in out
    assert "models.gpt-4o.0.secret_headers.X-Portkey-Key: a secret is written" in out
    assert "keys.3.metadata.runbook: a provider or platform key appears in the file" in out
    assert "${MY_SECRET}" in out
    for secret in (PROVIDER_KEY, STRONG, "sk-1234"):
        assert secret not in out


def test_admin_api_without_a_way_in(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASP_KEY", STRONG)
    status, out = check(tmp_path, capsys, {"server": {"host": "10.1.2.3", "behind_https": True},
                                           "keys": [{"key": "${CLASP_KEY}", "name": "dev"}]})
    assert status == 1 and "gives nobody the admin role" in out, out


def test_weakness_measures() -> None:
    assert entropy_bits("a" * 40) == 0
    assert entropy_bits(STRONG) > 100
    assert weakness(STRONG) is None
    assert weakness("0123456789-clasp-gateway-key") == "a keyboard or counting sequence"
    assert weakness("changeme-changeme-changeme") is not None
