"""The admin API's shared parts: who may call it, and its OpenAPI document.

Admin routes are plugins' routes under ``/admin/...`` (virtual keys, budgets, spend
reports). Each starts with :func:`require_role`, which authenticates the caller like
any API route (the failed-key throttle included) and refuses a key whose role is not
listed, so no admin route can forget either check. A :class:`GatewayError` an admin
route raises becomes its shaped answer (the app's error layer), Anthropic-shaped like
every non-OpenAI path.

Their docstrings carry OpenAPI YAML after a ``---`` line (Starlette's
``SchemaGenerator`` convention); ``GET /admin/openapi.json`` (an ``admin`` or
``team_admin`` key) serves the document assembled from every ``/admin/`` route::

    async def list_keys(request: Request) -> Response:
        \"\"\"List virtual keys.
        ---
        summary: List virtual keys
        responses:
          200: {description: the keys, without their secrets}
        \"\"\"
        principal = await require_role(request, "admin", "team_admin")
"""

from __future__ import annotations

import logging
import re
from typing import Any

import yaml
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.schemas import SchemaGenerator

from ..errors import PermissionDeniedError
from ..types import Principal
from .http import authenticate, json_response

log = logging.getLogger("clasp.admin")

_YAML_MARK = re.compile(r"^[ \t]*---[ \t]*$", re.M)
"""The line that starts a route docstring's OpenAPI YAML."""

ADMIN_PREFIX = "/admin/"
ROLES = ("admin", "team_admin", "member")
"""Every role a key may have: ``admin`` (everything), ``team_admin`` (its own team's
keys and budgets), ``member`` (model calls and its own usage)."""


async def require_role(request: Request, *roles: str) -> Principal:
    """The caller's :class:`~clasp_gateway.Principal` when its key has one of ``roles``
    (``await require_role(request, "admin", "team_admin")``); otherwise raise a
    :class:`~clasp_gateway.AuthenticationError` (401: no key, a wrong or expired key)
    or a :class:`~clasp_gateway.PermissionDeniedError` (403: a valid key without the
    role). The role comes from the key's configuration, never from the request."""
    unknown = [r for r in roles if r not in ROLES]
    if not roles or unknown:
        raise ValueError(f"require_role: roles must be among {', '.join(ROLES)}, got {roles!r}")
    principal = await authenticate(request)
    if principal.role not in roles:
        raise PermissionDeniedError(
            f"this API key ({principal.name or principal.key_id}) has the role {principal.role!r}; "
            f"{request.method} {request.url.path} needs {' or '.join(repr(r) for r in roles)}")
    return principal


def _admin_routes(routes: list[BaseRoute]) -> list[BaseRoute]:
    found: list[BaseRoute] = []
    for route in routes:
        if isinstance(route, Route) and route.path.startswith(ADMIN_PREFIX):
            found.append(route)
        elif isinstance(route, Mount) and route.path.startswith(ADMIN_PREFIX.rstrip("/")):
            found.append(route)
    return found


class _DocstringSchemas(SchemaGenerator):
    """Starlette's generator, but only the YAML after ``---`` is read (Starlette reads a
    whole docstring without one as YAML), and YAML that does not parse leaves only that
    route out of the document, logged, instead of failing the whole document with a 500."""

    def parse_docstring(self, func_or_method: Any) -> dict[str, Any]:
        docstring = getattr(func_or_method, "__doc__", None)
        parts = _YAML_MARK.split(docstring or "", maxsplit=1)
        if len(parts) < 2:
            return {}
        try:
            parsed = yaml.safe_load(parts[1])
        except yaml.YAMLError as exc:
            name = getattr(func_or_method, "__qualname__", repr(func_or_method))
            log.warning("admin route %s: the OpenAPI YAML of its docstring does not parse (%s)",
                        name, str(exc).splitlines()[0])
            return {}
        return parsed if isinstance(parsed, dict) else {}


def openapi_document(routes: list[BaseRoute], version: str) -> dict[str, Any]:
    """The OpenAPI 3 document of the ``/admin/`` routes among ``routes``, from their
    docstrings (the YAML after a ``---`` line; Starlette's generator leaves out a route
    without it)."""
    generator = _DocstringSchemas({
        "openapi": "3.0.3",
        "info": {"title": "clasp-gateway admin API", "version": version},
        "components": {"securitySchemes": {
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            "bearer": {"type": "http", "scheme": "bearer"},
        }},
        "security": [{"apiKey": []}, {"bearer": []}],
    })
    schema: dict[str, Any] = _string_keys(generator.get_schema(_admin_routes(routes)))
    schema.setdefault("paths", {})
    for path, operations in schema["paths"].items():
        for operation in operations.values() if isinstance(operations, dict) else ():
            if not isinstance(operation, dict):
                continue
            parameters = operation.setdefault("parameters", [])
            declared = {p.get("name") for p in parameters if isinstance(p, dict) and p.get("in") == "path"}
            parameters.extend({"name": name, "in": "path"} for name in re.findall(r"{(\w+)(?::\w+)?}", path)
                              if name not in declared)
            for parameter in parameters:
                _complete_parameter(parameter)
            if not parameters:
                del operation["parameters"]
    return schema


def _complete_parameter(parameter: Any) -> None:
    """What OpenAPI requires and a docstring may leave out: a parameter's ``schema``
    (a string unless said otherwise) and ``required: true`` on path parameters."""
    if not isinstance(parameter, dict):
        return
    if "schema" not in parameter and "content" not in parameter:
        parameter["schema"] = {"type": "string"}
    if parameter.get("in") == "path":
        parameter["required"] = True


def _string_keys(value: Any) -> Any:
    """YAML reads ``200:`` as an integer; JSON (and OpenAPI) keys are strings."""
    if isinstance(value, dict):
        return {str(k): _string_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_string_keys(v) for v in value]
    return value


async def openapi_endpoint(request: Request) -> Response:
    """The admin API's OpenAPI document.
    ---
    summary: The admin API's OpenAPI document (this one)
    responses:
      200: {description: "an OpenAPI 3 document of every /admin/ route"}
      401: {description: "no key, or a wrong one"}
      403: {description: "a key that is neither admin nor team_admin"}
    """
    from .. import __version__

    await require_role(request, "admin", "team_admin")
    return json_response(openapi_document(list(request.app.routes), __version__))


__all__ = ["ADMIN_PREFIX", "ROLES", "openapi_document", "openapi_endpoint", "require_role"]
