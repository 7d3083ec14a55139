"""clasp.yaml is checked whole, the same way by `clasp check` and `clasp serve` (issue 7).

Defect 2: every field is type-checked when the file is loaded (``1e-05`` is the number
it looks like, ``"8k"`` and ``"no"`` are errors). Defect 3: unknown keys at every level
are errors with a "did you mean", a plugin's section is known only when the plugin is
loaded, a dead glob route is a warning. Defect 4: plugins check their sections through
``validate_config``, and ``check``/``serve`` run the same checks, ``serve`` before it
binds. Defect 16 (configuration): an open gateway is refused on a non-loopback address,
warned about on loopback, and weak keys are named (never shown).

Names added by this change are imported inside the tests that use them, so on the old
code every test fails for its own reason, not at import.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from clasp_gateway import cli
from clasp_gateway.config import Config, ConfigError, load_config
from clasp_gateway.hookspecs import hookimpl
from clasp_gateway.plugins import PluginManager
from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import GatewayServer, free_port

ROOT = Path(__file__).parent.parent
CLI = [sys.executable, "-m", "clasp_gateway.cli"]
KEY = "clasp-validation-key-0123456789"
UPSTREAM = {"model": "openai/gpt-4o", "api_base": "http://127.0.0.1:9/v1", "api_key": "sk-upstream-0123456789"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clasp.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def with_models(extra: str = "", deployment: str = "", keys: bool = True) -> str:
    """A valid file (one route, one deployment) with ``deployment`` lines added to the
    deployment and ``extra`` top-level lines."""
    head = f"keys:\n  - {{key: {KEY}, name: tests}}\n" if keys else ""
    dep = "".join(f"      {line}\n" for line in textwrap.dedent(deployment).strip().splitlines())
    return (f"{head}models:\n  \"claude-*\":\n    - model: openai/gpt-4o\n      api_base: http://127.0.0.1:9/v1\n"
            f"      api_key: sk-upstream-0123456789\n{dep}{textwrap.dedent(extra)}")


def problems(tmp_path: Path, text: str) -> list[str]:
    """What `clasp check` and `clasp serve` find: the file loaded, plugins loaded, the
    gateway built (not started), every plugin's check."""
    with pytest.raises(ConfigError) as info:
        create_app(load_config(write(tmp_path, text)))
    return info.value.problems


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`clasp check --no-probe` in this process: exit code and everything printed."""
    path = write(tmp_path, text)
    try:
        code = cli.main(["check", "--config", str(path), "--no-probe", *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.endswith("_API_KEY") and k not in ("OPENAI_BASE_URL", "CLASP_LOAD_PLUGINS")}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", **extra)
    return env


# --- defect 2: types ------------------------------------------------------------------------------


def test_a_cost_yaml_reads_as_a_string_is_the_number_the_user_meant(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads 1e-05 as the string "1e-05": the old code kept it, and
    # every request was billed upstream, then failed with a 500 while pricing.
    config = load_config(write(tmp_path, with_models(deployment="input_cost_per_token: 1e-05\noutput_cost_per_token: 3e-05")))
    info = config.models[0].deployments[0].info
    assert info.input_cost_per_token == 1e-05 and isinstance(info.input_cost_per_token, float)
    assert info.output_cost_per_token == 3e-05
    config = load_config(write(tmp_path, with_models(deployment='max_input_tokens: "8192"')))
    assert config.models[0].deployments[0].info.max_input_tokens == 8192


@pytest.mark.parametrize(
    "deployment, expected",
    [
        ('max_input_tokens: "8k"', "models.claude-*.0.max_input_tokens: expected an integer >= 1 (e.g. 131072), got '8k'"),
        ('supports_tools: "no"', "models.claude-*.0.supports_tools: expected true or false, got 'no'"),
        ("max_output_tokens: 0", "models.claude-*.0.max_output_tokens: expected an integer >= 1"),
        ("input_cost_per_token: cheap", "models.claude-*.0.input_cost_per_token: expected a non-negative number, got 'cheap'"),
        ("output_cost_per_token: -1", "models.claude-*.0.output_cost_per_token: expected a non-negative number"),
        ("supports_vision: 1", "models.claude-*.0.supports_vision: expected true or false, got 1"),
        ("mode: fast", "models.claude-*.0.mode: expected one of auto, direct, transform, litellm, got 'fast'"),
        ("streaming: sometimes", "models.claude-*.0.streaming: expected auto, always"),
        ("timeouts: {connect: soon}", "models.claude-*.0.timeouts.connect: expected a number > 0, got 'soon'"),
        ("timeouts: 30", "models.claude-*.0.timeouts: expected a mapping, got 30"),
        ("headers: [x]", "models.claude-*.0.headers: expected a mapping of header name to value, got list"),
        ("extra_body: text", "models.claude-*.0.extra_body: expected a mapping, got 'text'"),
        ("api_keys: []", "models.claude-*.0.api_keys: expected a non-empty list of key references, got list"),
        ("schema_dialect: yaml", "models.claude-*.0.schema_dialect: expected one of none, openai, gemini, strict"),
        ("key_pool: {auth_cooldown: long}", "models.claude-*.0.key_pool.auth_cooldown: expected a non-negative number"),
        ("secret_headers: {x-token: [a]}", "models.claude-*.0.secret_headers.x-token: expected a secret reference"),
        ("id: ''", "models.claude-*.0.id: expected a non-empty string, got ''"),
    ],
)
def test_every_deployment_field_is_type_checked_at_load(tmp_path: Path, deployment: str, expected: str) -> None:
    path = write(tmp_path, with_models(deployment=deployment))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems
    assert f"{path}: {expected}" in str(info.value)  # file: key.path: what


def test_api_base_must_be_a_url(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        models:
          local: [{model: ollama/qwen2.5-coder, api_base: "gpu-box:11434/v1"}]
        """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["models.local.0.api_base: expected an http:// or https:// URL, got 'gpu-box:11434/v1'"]


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("server: {port: eighty}", "server.port: expected an integer between 1 and 65535, got 'eighty'"),
        ("server: {allow_unauthenticated: 'yes'}", "server.allow_unauthenticated: expected true or false, got 'yes'"),
        ("server: {trusted_proxies: [10.0.0.0/8, not-an-ip]}",
         "server.trusted_proxies.1: expected an IP address or network such as 10.0.0.0/8, got 'not-an-ip'"),
        ("server: {trusted_proxies: 10.0.0.1}", "server.trusted_proxies: expected a list"),
        ("server: {timeouts: {header: 0}}", "server.timeouts.header: expected a number > 0, got 0"),
        ("server: {max_header_bytes: 64KB}", "server.max_header_bytes: expected an integer >= 1024, got '64KB'"),
        ("server: {workers: 0}", "server.workers: expected an integer >= 1, got 0"),
        ("server: {log_level: loud}", "server.log_level: expected one of debug, info, warning, error, got 'loud'"),
        ("server: [1]", "server: expected a mapping, got list"),
        ("plugins: {paths: my_plugin}", "plugins.paths: expected a list of module names or .py file paths"),
    ],
)
def test_every_server_and_plugins_field_is_type_checked(tmp_path: Path, extra: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, with_models(extra=extra)))
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


def test_server_fields_keep_their_names_and_defaults(tmp_path: Path) -> None:
    from clasp_gateway.config import ServerConfig, ServerTimeouts

    config = load_config(write(tmp_path, with_models()))
    assert config.server == ServerConfig() and config.server.timeouts == ServerTimeouts()
    config = load_config(write(tmp_path, with_models(extra="""\
        server:
          host: 0.0.0.0
          port: "8080"
          allow_unauthenticated: true
          trusted_proxies: [10.0.0.0/8, 192.168.1.7, "::1"]
          log_level: WARNING
          timeouts: {header: 5, send: 2.5}
        """)))
    server = config.server
    assert server.port == 8080 and server.allow_unauthenticated is True and server.log_level == "warning"
    assert server.trusted_proxies == ["10.0.0.0/8", "192.168.1.7", "::1"]
    assert server.timeouts == ServerTimeouts(header=5.0, send=2.5) and server.max_headers == 100


@pytest.mark.parametrize(
    "text, expected",
    [
        ("keys: [{key: " + KEY + ", name: [a]}]", "keys.0.name: expected a non-empty string, got list"),
        ("keys: [{name: ci}]", "keys.0.key: required"),
        ("keys: {key: x}", "keys: expected a list of {key, name, team}"),
        ("keys: [{key: {a: 1}, name: ci}]", "keys.0.key: expected a secret reference such as ${ENV_VAR} or file:"),
    ],
)
def test_keys_are_type_checked(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, with_models(keys=False) + text + "\n"))
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("context: {trim_to: 5}", "context.trim_to: expected a fraction of the budget between 0.1 and 1, got 5"),
        ("context: {enabled: 'off'}", "context.enabled: expected true or false, got 'off'"),
        ("context: {summary_max_tokens: 8}", "context.summary_max_tokens: expected an integer >= 16, got 8"),
        ("server_tools: {max_iterations: many}", "server_tools.max_iterations: expected an integer >= 1, got 'many'"),
        ("server_tools: {timeout: -1}", "server_tools.timeout: expected a number of seconds > 0, got -1"),
    ],
)
def test_core_sections_checked_when_the_gateway_is_built_fail_the_same_validation(
    tmp_path: Path, extra: str, expected: str
) -> None:
    found = problems(tmp_path, with_models(extra=extra))
    assert any(p.startswith(expected) for p in found), found


def test_text_tool_calls_is_checked_before_serving(tmp_path: Path) -> None:
    found = problems(tmp_path, with_models(deployment="text_tool_calls: sometimes"))
    assert found == ["models.claude-*.0.text_tool_calls: expected true, false or auto, got 'sometimes'"]


# --- defect 3: unknown keys -------------------------------------------------------------------------


def test_a_misspelt_api_base_is_refused_instead_of_sending_the_key_to_the_default_host(tmp_path: Path) -> None:
    # The old code accepted `api_bse:` and sent the deployment's key to api.openai.com.
    path = write(tmp_path, """\
        models:
          "claude-*":
            - model: openai/my-company-model
              api_bse: https://llm.internal.example/v1
              api_key: sk-internal-0123456789
        """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["models.claude-*.0.api_bse: unknown key; did you mean 'api_base'?"]
    assert "sk-internal" not in str(info.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        (with_models(extra="model: {}\n"), "model: unknown section; did you mean 'models'?"),
        (with_models(keys=False) + f"Keys:\n  - {{key: {KEY}, name: ci}}\n", "Keys: unknown section; did you mean 'keys'?"),
        (with_models(extra="servr: {port: 4001}\n"), "servr: unknown section; did you mean 'server'?"),
        (with_models(extra="quotas: {monthly: 100}\n"), "quotas: unknown section (expected one of:"),
    ],
)
def test_unknown_top_level_sections_are_errors_with_a_suggestion(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(tmp_path, text)
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(
    "text, expected",
    [
        (with_models(extra="server: {hostname: 0.0.0.0}\n"), "server.hostname: unknown key; did you mean 'host'?"),
        (with_models(extra="server: {timeouts: {headers: 5}}\n"), "server.timeouts.headers: unknown key; did you mean 'header'?"),
        (with_models(extra="plugins: {path: [x]}\n"), "plugins.path: unknown key; did you mean 'paths'?"),
        (with_models(keys=False) + f"keys: [{{key: {KEY}, name: ci, teams: qa}}]\n", "keys.0.teams: unknown key; did you mean 'team'?"),
        (with_models(deployment="timeouts: {conect: 5}"), "models.claude-*.0.timeouts.conect: unknown key; did you mean 'connect'?"),
        (with_models(deployment="key_pool: {auth_coldown: 5}"),
         "models.claude-*.0.key_pool.auth_coldown: unknown key; did you mean 'auth_cooldown'?"),
        (with_models(deployment="supports_tool: false"), "models.claude-*.0.supports_tool: unknown key; did you mean 'supports_tools'?"),
        ("models:\n  m:\n    deploymnets: [{model: openai/gpt-4o}]\n", "models.m.deploymnets: unknown key; did you mean 'deployments'?"),
        ("models:\n  m:\n    model: openai/gpt-4o\n", "models.m: expected a list of deployments; this looks like one deployment"),
    ],
)
def test_unknown_keys_at_every_level_are_errors_at_load(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("context: {trimto: 0.5}", "context.trimto: unknown key; did you mean 'trim_to'?"),
        ("server_tools: {enabeld: []}", "server_tools.enabeld: unknown key; did you mean 'enabled'?"),
    ],
)
def test_unknown_keys_in_sections_checked_with_the_gateway(tmp_path: Path, extra: str, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(tmp_path, with_models(extra=extra)))


def test_a_section_of_a_plugin_that_is_not_loaded_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "claude")
    found = problems(tmp_path, with_models(extra="fallback: {strategy: strict}\n"))
    assert found == ["fallback: this section belongs to the plugin 'fallback', which is not loaded "
                     "(CLASP_LOAD_PLUGINS='claude'); load the plugin or remove the section"]
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "claude,fallback")
    create_app(load_config(write(tmp_path, with_models(extra="fallback: {strategy: strict}\n"))))


def test_a_duplicate_key_is_an_error_not_a_silently_lost_route(tmp_path: Path) -> None:
    path = write(tmp_path, with_models() + '  "claude-*":\n    - model: openai/gpt-4o-mini\n')
    with pytest.raises(ConfigError, match=r"duplicate key 'claude-\*' \(first written on line 4\)"):
        load_config(path)


def test_a_glob_route_shadowed_by_an_earlier_one_is_a_warning_naming_both(tmp_path: Path) -> None:
    text = """\
        models:
          "claude-*":
            - model: openai/gpt-4o
          "claude-*sonnet*":
            - model: openai/gpt-4o-mini
          "claude-3-?-opus":
            - model: openai/gpt-4o-mini
        """
    warnings = [w for w in load_config(write(tmp_path, text)).warnings if "never used" in w]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("models.claude-*sonnet*: never used: the earlier route 'claude-*' matches every name")
    assert warnings[1].startswith("models.claude-3-?-opus: never used: the earlier route 'claude-*'")
    # The README's order (specific first) and exact names after a glob are fine: exact
    # names are looked up before globs.
    text = """\
        models:
          "claude-*haiku*": [{model: openai/gpt-4o-mini}]
          "claude-*": [{model: openai/gpt-4o}]
          "claude-sonnet-4-5": [{model: openai/gpt-4o}]
        """
    assert not [w for w in load_config(write(tmp_path, text)).warnings if "never used" in w]


@pytest.mark.parametrize(
    "wide, narrow, covered",
    [
        ("claude-*", "claude-*sonnet*", True),
        ("*", "gpt-?o", True),
        ("claude-*", "claude-*", True),
        ("gpt-4?", "gpt-4[ot]", True),
        ("gpt-4[a-z]", "gpt-4o", True),
        ("claude-*sonnet*", "claude-*", False),
        ("claude-*haiku*", "claude-*sonnet*", False),
        ("gpt-4o", "gpt-4?", False),
        ("gpt-4o*", "gpt-4*", False),
        ("*-mini", "gpt-*", False),
    ],
)
def test_glob_coverage(wide: str, narrow: str, covered: bool) -> None:
    from clasp_gateway.config import glob_covers

    assert glob_covers(wide, narrow) is covered


# --- defect 4: plugins check their sections; check and serve agree -------------------------------


class SectionPlugin:
    """A plugin with a section of its own, checked with the core's schema helpers."""

    def __init__(self) -> None:
        from clasp_gateway import Boolean, Duration, Field, Integer, Section

        self.schema = Section({
            "ttl": Field(Duration(minimum=1), 3600.0),
            "max_entries": Field(Integer(minimum=1), 100),
            "shared": Field(Boolean(), False),
        })
        self.seen: list[Any] = []

    @hookimpl
    def register_config_sections(self, register: Callable[..., None]) -> None:
        register("my_cache")

    @hookimpl
    def validate_config(self, config: Config, gateway: Any) -> list[str]:
        problems: list[str] = []
        self.seen.append((self.schema.parse(config.raw.get("my_cache"), "my_cache", problems), gateway))
        return problems


def app_with(plugin: object, config: Config) -> Any:
    pm = PluginManager()
    pm.load(entry_points=False)
    pm.register(plugin, name="my-plugin")
    return create_app(config, pm)


def test_a_plugin_declares_and_checks_its_own_section(tmp_path: Path) -> None:
    plugin = SectionPlugin()
    config = load_config(write(tmp_path, with_models(extra="my_cache: {ttl: 5m, max_entries: '50'}\n")))
    app = app_with(plugin, config)
    values, gateway = plugin.seen[-1]
    assert values == {"ttl": 300.0, "max_entries": 50, "shared": False}
    assert gateway is app.starlette_app.state.gateway and not gateway.ready  # built, not started

    config = load_config(write(tmp_path, with_models(extra="my_cache: {ttl: soon, shard: true, max_entries: 0}\n")))
    with pytest.raises(ConfigError) as info:
        app_with(SectionPlugin(), config)
    assert info.value.problems == [
        "my_cache.shard: unknown key; did you mean 'shared'?",
        "my_cache.ttl: expected a duration >= 1s (a number of seconds, or e.g. '500ms', '30s', '5m'), got 'soon'",
        "my_cache.max_entries: expected an integer >= 1, got 0",
    ]
    # Without the plugin, its section is unknown.
    with pytest.raises(ConfigError, match="my_cache: unknown section"):
        create_app(config, load_plugins=False)


def test_a_plugin_whose_check_crashes_is_named_and_others_still_report(tmp_path: Path) -> None:
    class Crashes:
        @hookimpl
        def validate_config(self, config: Config) -> list[str]:
            raise KeyError("oops")

    class Finds:
        @hookimpl
        def validate_config(self, config: Config) -> str:
            return "my_section.x: expected something"

    pm = PluginManager()
    pm.load(entry_points=False)
    pm.register(Crashes(), name="crashes")
    pm.register(Finds(), name="finds")
    with pytest.raises(ConfigError) as info:
        create_app(load_config(write(tmp_path, with_models())), pm)
    assert sorted(info.value.problems) == [
        "my_section.x: expected something",
        "the plugin 'crashes' failed to check the configuration: KeyError: 'oops'",
    ]


def test_fallback_checks_its_section_with_the_registered_strategies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "claude,fallback")
    found = problems(tmp_path, with_models(extra="fallback: {strategy: fastest, retry: {attemps: 2}}\n"))
    assert sorted(found) == [
        "fallback.retry.attemps: unknown key; did you mean 'attempts'?",
        "fallback.strategy: expected one of chain, strict, cost, balanced, got 'fastest'",
    ]

    class Fastest:
        @hookimpl
        def register_routing_strategies(self, register: Callable[..., None]) -> None:
            register("fastest", lambda ctx, deployments: deployments)

    pm = PluginManager()
    pm.load()
    pm.register(Fastest(), name="fastest")
    create_app(load_config(write(tmp_path, with_models(extra="fallback: {strategy: fastest}\n"))), pm)


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("fallback: {strategy: fastest}\n", "fallback.strategy: expected one of chain, strict, cost, balanced, got 'fastest'"),
        ("context: {trim_to: 5}\n", "context.trim_to: expected a fraction of the budget between 0.1 and 1, got 5"),
        ("context: {summarize_with: ghost}\n", "context.summarize_with: 'ghost' is neither a deployment id"),
        ("server_tools: {enabled: [no_such_tool]}\n", "server_tools.enabled: no plugin registers a tool named 'no_such_tool'"),
    ],
)
def test_check_refuses_what_serve_would_die_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, extra: str, expected: str
) -> None:
    # The old `clasp check` said "valid" (exit 0) for each of these; `serve` then logged
    # "listening" and died with a traceback.
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "claude,fallback")
    code, out = check(tmp_path, with_models(extra=extra), capsys)
    assert code == 2, out
    assert f"clasp.yaml: {expected}" in out and "Traceback" not in out and "valid (" not in out


def test_serve_refuses_a_bad_plugin_section_before_listening(tmp_path: Path) -> None:
    path = write(tmp_path, with_models(extra="fallback: {strategy: fastest}\n"))
    done = subprocess.run([*CLI, "serve", "--config", str(path), "--port", str(free_port())], env=clean_env(),
                          capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    # Installed routing plugins (clasp-router) add their strategies to the list.
    assert "fallback.strategy: expected one of chain, strict, cost, balanced" in out and "got 'fastest'" in out
    assert "listening" not in out and "Traceback" not in out


# --- defect 16: authentication is never silently off ----------------------------------------------


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("gateway.example.com", False),
])
def test_loopback_addresses(host: str, loopback: bool) -> None:
    from clasp_gateway.config import is_loopback

    assert is_loopback(host) is loopback


@pytest.mark.parametrize("keys", ["", "keys: []\n"])
def test_serve_refuses_an_open_gateway_on_a_network_address(tmp_path: Path, keys: str) -> None:
    path = write(tmp_path, with_models(keys=False, extra=keys))
    done = subprocess.run([*CLI, "serve", "--config", str(path), "--host", "0.0.0.0", "--port", str(free_port())],
                          env=clean_env(), capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "refusing to serve 0.0.0.0 without authentication" in out
    assert "Add `keys:`" in out and "server.allow_unauthenticated: true" in out
    assert "listening" not in out and "Traceback" not in out


def test_check_reports_an_open_gateway(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(tmp_path, with_models(keys=False, extra="server: {host: 0.0.0.0}\n"), capsys)
    assert code == 1 and "error: refusing to serve 0.0.0.0 without authentication" in out, out
    code, out = check(tmp_path, with_models(keys=False), capsys, "--host", "0.0.0.0")
    assert code == 1, out
    code, out = check(tmp_path, with_models(keys=False), capsys)
    assert code == 0 and "warning: the gateway on 127.0.0.1 is OPEN" in out, out
    code, out = check(tmp_path, with_models(keys=False, extra="server: {host: 0.0.0.0, allow_unauthenticated: true}\n"),
                      capsys)
    assert code == 0 and "warning: the gateway on 0.0.0.0 is OPEN to the network" in out, out
    code, out = check(tmp_path, with_models(extra="server: {host: 0.0.0.0}\n"), capsys)
    assert code == 0 and "OPEN" not in out and "refusing" not in out, out


def test_a_misspelt_keys_section_is_refused_not_served_open(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(tmp_path, with_models(keys=False) + f"Keys:\n  - {{key: {KEY}, name: ci}}\n", capsys)
    assert code == 2 and "Keys: unknown section; did you mean 'keys'?" in out, out


def test_an_authenticate_plugin_counts_as_authentication(tmp_path: Path) -> None:
    from clasp_gateway.config import open_gateway

    class SSO:
        @hookimpl
        def authenticate(self, api_key: str | None, headers: dict[str, str], config: Config) -> None:
            return None

    config = load_config(write(tmp_path, with_models(keys=False)))
    app = app_with(SSO(), config)
    assert cli._open_gateway(config, app, "0.0.0.0") is None
    refuse, _ = open_gateway(config, "0.0.0.0") or (False, "")
    assert refuse


def test_serve_on_loopback_without_keys_starts_with_a_loud_warning(tmp_path: Path) -> None:
    path = write(tmp_path, with_models(keys=False))
    port = free_port()
    log = tmp_path / "log"
    with log.open("w") as out:
        proc = subprocess.Popen([*CLI, "serve", "--config", str(path), "--port", str(port)], env=clean_env(),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "gateway did not become ready"
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    text = log.read_text()
    assert "WARNING clasp: the gateway on 127.0.0.1 is OPEN: no `keys:` are configured" in text, text


@pytest.mark.parametrize("value, weak", [
    ("abc", "shorter than 20 characters"),
    ("changeme-changeme-changeme", "a placeholder ('changeme')"),
    ("your-api-key-goes-here-please", "a placeholder ('yourapikey')"),
    ("choose-a-long-random-key", "a placeholder ('choosealongrandomkey')"),
    ("xxxxxxxxxxxxxxxxxxxxxxxxxxxx", "a repeated character"),
    ("sk-test-0123456789abcdefghij", None),
    ("3f9c2a7e5b1d4c8f9a0e6b2d7c1f4a8e", None),
])
def test_weak_keys(value: str, weak: str | None) -> None:
    from clasp_gateway.config import weak_key_reason

    assert weak_key_reason(value) == weak


def test_a_weak_key_is_named_never_shown_in_check_and_serve_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    text = with_models(keys=False) + "keys:\n  - {key: short-key-42, name: ci-bot}\n  - {key: " + KEY + ", name: ok}\n"
    code, out = check(tmp_path, text, capsys)
    assert code == 0, out
    assert "warning: keys.0 (ci-bot): weak key (shorter than 20 characters)" in out
    assert "short-key-42" not in out and "keys.1" not in out
    config = load_config(write(tmp_path, text))
    with caplog.at_level("WARNING"), GatewayServer(config):
        pass
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "keys.0 (ci-bot): weak key" in logged and "short-key-42" not in logged
