"""Admin routes: ``require_role`` (401/403 shaped, the role from the key's configuration
only), ``GET /admin/openapi.json`` from the routes' docstrings, and a ``GatewayError``
raised by a plugin route coming out shaped."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from clasp_gateway import (
    InvalidRequestError,
    NotFoundError,
    RegisterRoute,
    hookimpl,
    json_response,
    require_role,
)
from clasp_gateway.testing import GatewayServer, config_from

ADMIN = "admin-key-0123456789abcdef"
TEAM_ADMIN = "team-admin-key-0123456789abc"
MEMBER = "member-key-0123456789abcdef"


async def list_keys(request: Request) -> Response:
    """List the team's virtual keys.
    ---
    summary: List virtual keys
    parameters:
      - {name: team, in: query, schema: {type: string}}
    responses:
      200: {description: the keys, without their secrets}
    """
    principal = await require_role(request, "admin", "team_admin")
    return json_response({"caller": principal.name, "role": principal.role, "team": principal.team})


async def delete_everything(request: Request) -> Response:
    """Admins only.
    ---
    summary: Delete every key
    responses:
      204: {description: deleted}
    """
    await require_role(request, "admin")
    if request.query_params.get("really") != "yes":
        raise InvalidRequestError("really: expected yes")
    raise NotFoundError("nothing to delete")


async def usage(request: Request) -> Response:
    """Not an admin route: left out of the admin document."""
    return json_response({})


class AdminPlugin:
    @hookimpl
    def register_routes(self, register: RegisterRoute) -> None:
        register("/admin/keys", list_keys, methods=["GET"])
        register("/admin/everything", delete_everything, methods=["DELETE"])
        register("/v1/usage", usage, methods=["GET"])


@pytest.fixture(scope="module")
def gateway() -> Any:
    config = config_from({"models": {}, "keys": [
        {"key": ADMIN, "name": "root", "role": "admin"},
        {"key": TEAM_ADMIN, "name": "lead", "team": "search", "role": "team_admin"},
        {"key": MEMBER, "name": "dev", "team": "search"},
    ]})
    # Only the toy plugin: an installed one (clasp-budgets) has real routes of these paths.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLASP_LOAD_PLUGINS", "")
        server = GatewayServer(config, plugins=[AdminPlugin()])
    with server:
        yield server


def get(gateway: Any, path: str, key: str | None, **kwargs: Any) -> httpx.Response:
    headers = {"x-api-key": key} if key else {}
    return httpx.request(kwargs.pop("method", "GET"), gateway.base_url + path, headers={**headers, **kwargs.pop(
        "headers", {})}, **kwargs)


def test_roles_come_from_the_key(gateway: Any) -> None:
    assert get(gateway, "/admin/keys", ADMIN).json() == {"caller": "root", "role": "admin", "team": None}
    assert get(gateway, "/admin/keys", TEAM_ADMIN).json() == {"caller": "lead", "role": "team_admin", "team": "search"}
    member = get(gateway, "/admin/keys", MEMBER)
    assert member.status_code == 403
    assert member.json()["type"] == "error" and member.json()["error"]["type"] == "permission_error"
    assert "has the role 'member'; GET /admin/keys needs 'admin' or 'team_admin'" in member.json()["error"]["message"]
    assert get(gateway, "/admin/everything", TEAM_ADMIN, method="DELETE").status_code == 403


def test_no_key_or_a_wrong_one_is_a_shaped_401(gateway: Any) -> None:
    for key in (None, "wrong-key-0123456789abcdef"):
        answer = get(gateway, "/admin/keys", key)
        assert answer.status_code == 401
        assert answer.json()["error"]["type"] == "authentication_error"
        assert answer.headers["request-id"].startswith("req_")


def test_a_header_cannot_grant_a_role(gateway: Any) -> None:
    for headers in ({"x-clasp-role": "admin"}, {"x-role": "admin"}, {"x-clasp-user": "admin"},
                    {"authorization": f"Bearer {ADMIN}"}):  # x-api-key (the member's) is read first
        answer = get(gateway, "/admin/keys", MEMBER, headers=headers)
        assert answer.status_code == 403, headers


def test_a_gateway_error_from_a_plugin_route_is_shaped(gateway: Any) -> None:
    bad = get(gateway, "/admin/everything", ADMIN, method="DELETE")
    assert bad.status_code == 400
    assert bad.json()["error"] == {"type": "invalid_request_error", "message": "really: expected yes"}
    missing = get(gateway, "/admin/everything?really=yes", ADMIN, method="DELETE")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_openapi_document_of_the_admin_routes(gateway: Any) -> None:
    for key in (None, MEMBER):
        assert get(gateway, "/admin/openapi.json", key).status_code in (401, 403)
    document = get(gateway, "/admin/openapi.json", TEAM_ADMIN).json()
    assert document["openapi"].startswith("3.") and document["info"]["title"] == "clasp-gateway admin API"
    # (installed plugins add their own admin routes: clasp-cache's /admin/cache, clasp-budgets' /admin/usage...)
    assert {"/admin/keys", "/admin/everything", "/admin/openapi.json"} <= set(document["paths"])
    assert "/v1/usage" not in document["paths"]
    assert document["paths"]["/admin/keys"]["get"]["summary"] == "List virtual keys"
    assert document["paths"]["/admin/keys"]["get"]["parameters"][0]["name"] == "team"
    assert document["paths"]["/admin/everything"]["delete"]["responses"] == {"204": {"description": "deleted"}}
    assert "apiKey" in document["components"]["securitySchemes"]


async def test_require_role_refuses_a_role_that_does_not_exist() -> None:
    with pytest.raises(ValueError, match="roles must be among admin, team_admin, member"):
        await require_role(None, "superuser")  # type: ignore[arg-type]


def test_a_docstring_that_is_not_openapi_yaml_costs_only_its_own_details() -> None:
    """A route whose docstring has no ``---`` (Starlette would read it all as YAML) or
    YAML that does not parse keeps its path in the document; the others keep theirs."""
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from clasp_gateway.shell.admin import openapi_document

    async def plain(request: Any) -> Any:
        """``GET /admin/plain``: prose with `backticks` and: colons."""
        return PlainTextResponse("")

    async def broken(request: Any) -> Any:
        """Broken.
        ---
        summary: [unclosed
        """
        return PlainTextResponse("")

    async def good(request: Any) -> Any:
        """Good.
        ---
        summary: fine
        responses:
          200: {description: ok}
        """
        return PlainTextResponse("")

    document = openapi_document([Route("/admin/plain", plain), Route("/admin/broken", broken),
                                 Route("/admin/good", good)], "0")
    assert document["paths"]["/admin/good"]["get"]["summary"] == "fine"
    assert set(document["paths"]) >= {"/admin/good"}
