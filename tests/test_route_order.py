"""The router's order (shell/app.py ``api_first``): the API routes are matched before
the admin routes plugins register, a plugin's route still wins over the core's of the
same path, and the admin API (and its OpenAPI document) is whole."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from clasp_gateway.shell.app import api_first


async def endpoint(request: Request) -> Response:
    return PlainTextResponse("x")


def test_api_routes_come_before_every_admin_route() -> None:
    plugin = [Route("/admin/keys", endpoint), Route("/admin/usage", endpoint), Route("/v1/messages", endpoint),
              Route("/metrics", endpoint), Route("/v1/chat/completions", endpoint, name="plugin-chat")]
    core = [Route("/health", endpoint), Route("/v1/chat/completions", endpoint, name="core-chat"),
            Route("/admin/openapi.json", endpoint), Route("/admin", endpoint)]
    order = [(r.path, r.name) for r in api_first(plugin, core)]
    assert [path for path, _ in order] == [
        "/v1/messages", "/metrics", "/v1/chat/completions", "/health", "/v1/chat/completions",
        "/admin/keys", "/admin/usage", "/admin/openapi.json", "/admin"]
    # The plugin's /v1/chat/completions is still ahead of the core's: it wins.
    assert [name for path, name in order if path == "/v1/chat/completions"] == ["plugin-chat", "core-chat"]
    assert len(order) == len(plugin) + len(core)  # nothing dropped


def test_the_gateway_app_routes_api_first_and_keeps_admin_routes() -> None:
    from clasp_gateway.shell.app import create_app
    from clasp_gateway.testing import config_from

    app = create_app(config_from({"models": {}}))
    paths = [getattr(r, "path", "") for r in app.starlette_app.routes]  # type: ignore[attr-defined]
    first_admin = next(i for i, p in enumerate(paths) if p.startswith("/admin"))
    assert all(not p.startswith("/admin") for p in paths[:first_admin])
    assert all(p.startswith("/admin") for p in paths[first_admin:])
    assert "/admin/openapi.json" in paths and "/admin/reload" in paths
    assert paths.index("/v1/chat/completions") < first_admin
