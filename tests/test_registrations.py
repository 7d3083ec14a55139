"""The ``register`` callbacks of every ``register_*`` hook (registrations.py).

For each hook: the positional and the keyword form give the same typed record; a bad
argument is a start-up error naming the plugin and the hook (never a ``TypeError``
deep in the core); a name two registrations share is an error naming both plugins.
Then the core reads the records: a plugin that registers everything by keyword is
served like one that registers by position.
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import openai
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from clasp_gateway import RegistrationError, hookimpl, registrations
from clasp_gateway.plugins import PluginManager
from clasp_gateway.shell.app import create_app
from clasp_gateway.testing import GATEWAY_KEY, FakeUpstream, GatewayServer, Text, ToolCalls, config_from, openai_models


async def endpoint(request: Request) -> Response:
    return PlainTextResponse("from a keyword route")


class Adapter:
    """A provider adapter: answers with the last user message."""

    async def open(self, deployment: Any, body: dict[str, Any], *, stream: bool) -> AsyncIterator[dict[str, Any]]:
        yield {"choices": [{"index": 0, "delta": {"role": "assistant", "content": f"kw: {body['messages'][-1]['content']}"},
                            "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}


ADAPTER = Adapter()
SCHEMA = {"type": "object", "properties": {}}


def strategy(ctx: Any, deployments: list[Any]) -> list[Any]:
    return list(reversed(deployments))


def command(argv: list[str], config_path: str) -> int:
    return 0


def handler(arguments: dict[str, Any], ctx: Any) -> str:
    return "tool says hi"


def predicate(features: Any) -> bool:
    return False


def plugin(hook: str, *calls: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
    """A plugin implementing ``hook`` by making ``calls`` (``(args, kwargs)`` each)."""

    def implementation(register: Callable[..., Any]) -> None:
        for args, kwargs in calls:
            register(*args, **kwargs)

    implementation.__name__ = hook
    return types.SimpleNamespace(**{hook: hookimpl(implementation)})


def manager(**plugins: Any) -> PluginManager:
    pm = PluginManager()
    pm.load(entry_points=False)
    for name, p in plugins.items():
        pm.register(p, name=name)
    return pm


class Case(NamedTuple):
    hook: str
    collect: Callable[[PluginManager], list[Any]]
    kwargs: dict[str, Any]
    """The registration by keyword; the same values by position, in this order."""
    record: dict[str, Any]
    """The record's fields (besides ``plugin``)."""
    bad: list[tuple[tuple[Any, ...], dict[str, Any], str]]
    """Calls that must fail, and what the error says."""
    duplicate: str
    """How the duplicate error names the shared key."""


CASES = [
    Case("register_routes", registrations.routes,
         {"path": "/x", "endpoint": endpoint, "methods": ["get"], "name": "x"},
         {"path": "/x", "endpoint": endpoint, "methods": ("GET",), "name": "x"},
         [(("x", endpoint), {}, "path must be a string starting with '/', got 'x'"),
          (("/x", "endpoint"), {}, "the endpoint of /x must be callable, got str"),
          (("/x", endpoint, ["FETCH"]), {}, "methods of /x must be HTTP methods such as ['GET']"),
          (("/x", endpoint, 7), {}, "methods of /x must be a list such as ['GET'], got 7"),
          (("/x",), {}, "missing 1 required positional argument: 'endpoint' (call register(path, endpoint, "),
          (("/x", endpoint), {"method": ["GET"]}, "got an unexpected keyword argument 'method'")],
         "a route for GET /x"),
    Case("register_providers", registrations.providers,
         {"name": "acme", "adapter": ADAPTER},
         {"name": "acme", "adapter": ADAPTER},
         [(("acme",), {}, "missing 1 required positional argument: 'adapter' (call register(name, adapter))"),
          (("acme/v1", ADAPTER), {}, "provider name 'acme/v1' must be a word"),
          (("acme", object()), {}, "the adapter of provider 'acme' (its open method) must be callable"),
          ((), {"name": "acme", "adaptor": ADAPTER}, "unexpected keyword argument 'adaptor'")],
         "a provider named 'acme'"),
    Case("register_routing_strategies", registrations.routing_strategies,
         {"name": "reverse", "strategy": strategy},
         {"name": "reverse", "strategy": strategy},
         [(("reverse", "first"), {}, "strategy 'reverse' must be callable, got str"),
          ((None, strategy), {}, "strategy name None must be a word"),
          (("reverse",), {}, "missing 1 required positional argument: 'strategy'")],
         "a routing strategy named 'reverse'"),
    Case("register_commands", registrations.commands,
         {"name": "keys", "function": command, "help": "manage keys"},
         {"name": "keys", "function": command, "help": "manage keys"},
         [(("--keys", command), {}, "command name '--keys' must be a word"),
          (("keys", None), {}, "the function of command 'keys' must be callable, got NoneType"),
          (("keys", command, 3), {}, "help of command 'keys' must be a string, got int")],
         "a command named 'keys'"),
    Case("register_tools", registrations.tools,
         {"name": "lookup", "description": "Look things up", "input_schema": SCHEMA, "handler": handler},
         {"name": "lookup", "description": "Look things up", "input_schema": SCHEMA, "handler": handler},
         [(("has space", "x", SCHEMA, handler), {}, "tool name 'has space' must match"),
          (("lookup", " ", SCHEMA, handler), {}, "tool 'lookup' needs a description"),
          (("lookup", "x", {"type": "string"}, handler), {}, "tool 'lookup' needs a JSON Schema with \"type\": \"object\""),
          (("lookup", "x", SCHEMA, "handler"), {}, "the handler of tool 'lookup' is not callable"),
          (("lookup", "x", SCHEMA), {}, "(call register(name, description, input_schema, handler))")],
         "a tool named 'lookup'"),
    Case("register_config_sections", registrations.config_sections,
         {"name": "cache"},
         {"name": "cache"},
         [((7,), {}, "section name 7 must be a YAML key"),
          ((), {}, "missing 1 required positional argument: 'name' (call register(name))")],
         "the config section 'cache'"),
    Case("register_request_classes", registrations.request_classes,
         {"name": "review", "predicate": predicate, "description": "a code review", "after": "coding"},
         {"name": "review", "predicate": predicate, "description": "a code review", "after": "coding"},
         [(("review", True), {}, "the predicate of request class 'review' must be callable, got bool"),
          (("two words", predicate), {}, "request class name 'two words' must be a word"),
          (("review", predicate), {"after": 3}, "after= of request class 'review' must be a class name or None"),
          (("review", predicate, 5), {}, "description of request class 'review' must be a string")],
         "a request class named 'review'"),
    Case("register_cache_backends", registrations.cache_backends,
         {"name": "memcached", "factory": command},
         {"name": "memcached", "factory": command},
         [(("memcached", "not callable"), {}, "the factory of cache backend 'memcached' must be callable, got str"),
          (("mem cached", command), {}, "cache backend name 'mem cached' must be a word"),
          (("memcached",), {}, "missing 1 required positional argument: 'factory' (call register(name, factory))")],
         "a cache backend named 'memcached'"),
]
IDS = [c.hook for c in CASES]
BAD = [pytest.param(c, args, kwargs, message, id=f"{c.hook}-{i}") for c in CASES
       for i, (args, kwargs, message) in enumerate(c.bad)]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_positional_and_keyword_forms_give_the_same_record(case: Case) -> None:
    by_position = case.collect(manager(acme=plugin(case.hook, (tuple(case.kwargs.values()), {}))))
    by_keyword = case.collect(manager(acme=plugin(case.hook, ((), case.kwargs))))
    assert by_position == by_keyword
    [record] = by_keyword
    assert {f.name: getattr(record, f.name) for f in dataclasses.fields(record)} == {**case.record, "plugin": "acme"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.plugin = "someone else"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_register_returns_the_record(case: Case) -> None:
    returned: list[Any] = []

    def implementation(register: Callable[..., Any]) -> None:
        returned.append(register(**case.kwargs))

    implementation.__name__ = case.hook
    [record] = case.collect(manager(acme=types.SimpleNamespace(**{case.hook: hookimpl(implementation)})))
    assert returned == [record]


@pytest.mark.parametrize(("case", "args", "kwargs", "message"), BAD)
def test_bad_arguments_are_a_start_up_error_naming_the_plugin(
    case: Case, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    pm = manager(good=plugin(case.hook), acme=plugin(case.hook, (args, kwargs)))
    with pytest.raises(RegistrationError) as info:
        case.collect(pm)
    assert str(info.value).startswith(f"plugin 'acme': {case.hook}: ")
    assert message in str(info.value)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_name_two_plugins_register_is_an_error_naming_both(case: Case) -> None:
    one = (tuple(case.kwargs.values()), {})
    pm = manager(first=plugin(case.hook, one), second=plugin(case.hook, ((), case.kwargs)))
    with pytest.raises(RegistrationError) as info:
        case.collect(pm)
    message = str(info.value)
    assert message.startswith(f"{case.hook}: the plugins ")
    assert "'first'" in message and "'second'" in message and f"both register {case.duplicate}" in message

    with pytest.raises(RegistrationError, match=f"the plugin 'acme' registers {case.duplicate} twice"):
        case.collect(manager(acme=plugin(case.hook, one, one)))


def test_a_hook_that_fails_or_a_plugin_without_a_name_is_named() -> None:
    class Broken:
        @hookimpl
        def register_providers(self, register: Callable[..., Any]) -> None:
            raise KeyError("settings")

    pm = manager()
    pm.register(Broken())
    with pytest.raises(RegistrationError, match=r"^plugin 'Broken \(registered without a name\)': register_providers "
                                                r"failed: KeyError: 'settings'"):
        registrations.providers(pm)


def test_routes_may_share_a_path_with_other_methods_and_must_not_share_a_method() -> None:
    get = plugin("register_routes", (("/admin", endpoint, ["GET"]), {}))
    post = plugin("register_routes", (("/admin", endpoint), {"methods": "post"}))  # one method as a string
    found = registrations.routes(manager(reader=get, writer=post))
    assert sorted(r.methods for r in found) == [("GET",), ("POST",)]
    both = plugin("register_routes", (("/admin", endpoint, ["POST", "GET"]), {}))
    with pytest.raises(RegistrationError, match="'reader' and 'both' both register a route for GET /admin|"
                                                "'both' and 'reader' both register a route for GET /admin"):
        registrations.routes(manager(reader=get, both=both))


def test_a_core_section_or_a_built_in_class_cannot_be_taken() -> None:
    pm = manager(acme=plugin("register_config_sections", (("models",), {})))
    with pytest.raises(RegistrationError, match=r"plugin 'acme': register_config_sections: 'models' is a section of the core"):
        create_app(config_from({"models": {}}), pm)
    pm = manager(acme=plugin("register_request_classes", (("background", predicate), {})))
    with pytest.raises(RegistrationError, match=r"plugin 'acme': register_request_classes: 'background' is a built-in"):
        create_app(config_from({"models": {}}), pm)
    pm = manager(acme=plugin("register_request_classes", (("review", predicate), {"after": "codin"})))
    with pytest.raises(RegistrationError, match=r"plugin 'acme': register_request_classes: class 'review': "
                                                r"after='codin' names no other class"):
        create_app(config_from({"models": {}}), pm)


def test_two_providers_of_one_name_stop_the_gateway_building() -> None:
    """Two plugins serving ``bedrock``: which one served a request would depend on load
    order, so the gateway refuses to start and names both."""
    pm = manager(bedrock=plugin("register_providers", (("bedrock", ADAPTER), {})),
                 my_bedrock=plugin("register_providers", ((), {"name": "bedrock", "adapter": Adapter()})))
    with pytest.raises(RegistrationError, match="register_providers: the plugins 'my_bedrock' and 'bedrock' both "
                                                "register a provider named 'bedrock'"):
        create_app(config_from({"models": {}}), pm)


class KeywordPlugin:
    """Registers one of everything, by keyword only."""

    @hookimpl
    def register_routes(self, register: Callable[..., Any]) -> None:
        register(endpoint=endpoint, path="/x-keyword", methods=["GET"])

    @hookimpl
    def register_providers(self, register: Callable[..., Any]) -> None:
        register(adapter=ADAPTER, name="kw")

    @hookimpl
    def register_routing_strategies(self, register: Callable[..., Any]) -> None:
        register(strategy=strategy, name="reverse")

    @hookimpl
    def register_tools(self, register: Callable[..., Any]) -> None:
        register(handler=handler, input_schema=SCHEMA, description="Greets", name="greet")

    @hookimpl
    def register_config_sections(self, register: Callable[..., Any]) -> None:
        register(name="keyword_plugin")


def test_the_core_serves_what_is_registered_by_keyword() -> None:
    with FakeUpstream("openai") as upstream:
        config = config_from({"models": {**openai_models(upstream.base_url), "kw-model": [{"model": "kw/anything"}]},
                              "server_tools": {"enabled": ["greet"]}, "keyword_plugin": {}})
        pm = manager(keyword=KeywordPlugin())
        with GatewayServer(config, create_app(config, pm)) as server:
            assert httpx.get(server.base_url + "/x-keyword").text == "from a keyword route"
            assert server.gateway.strategies == {"reverse": strategy}
            client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=GATEWAY_KEY, max_retries=0)
            answer = client.chat.completions.create(model="kw-model", messages=[{"role": "user", "content": "hi"}])
            assert answer.choices[0].message.content == "kw: hi"
            upstream.queue(ToolCalls([("greet", {})]), Text("done"))
            answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
            assert answer.choices[0].message.content == "done"
            tool_message = upstream.requests[-1].json["messages"][-1]
            assert tool_message["role"] == "tool" and tool_message["content"] == "tool says hi"


def test_clasp_check_prints_a_bad_registration_for_a_person(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from clasp_gateway.cli import main

    (tmp_path / "badplugin.py").write_text(textwrap.dedent("""
        from clasp_gateway import hookimpl

        @hookimpl
        def register_providers(register):
            register("acme")
    """))
    config = tmp_path / "clasp.yaml"
    config.write_text(f"plugins: {{paths: [{tmp_path / 'badplugin.py'}]}}\nmodels: {{}}\n")
    monkeypatch.setenv("CLASP_LOAD_PLUGINS", "badplugin")
    monkeypatch.delitem(sys.modules, "clasp_local_plugin_badplugin", raising=False)
    assert main(["check", "--no-probe", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clasp: plugin 'badplugin': register_providers: ")
    assert "missing 1 required positional argument: 'adapter' (call register(name, adapter))" in err
    assert "Traceback" not in err
