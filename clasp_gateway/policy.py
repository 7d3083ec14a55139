"""What a key may do, enforced by the core, and who a request is for.

A key's :class:`~clasp_gateway.types.KeyPolicy` comes from its configuration (a
static key in clasp.yaml, or a virtual key a plugin authenticates), never from the
request. The core enforces the parts no plugin may be trusted to (a cache answering
first, a plugin forgetting): an expired key is a 401 (:func:`check_expiry`, in
``Gateway.authenticate``), and a model outside ``policy.models`` is a 403 before any
plugin sees the request (:func:`check_model_access`, first thing in
``Gateway.open``: no ``resolve_route``, no ``before_call``, no upstream call).
``/v1/models`` lists only what the key may use (:func:`may_use_model`). Residency is
enforced here too (:func:`region_allowed`, :func:`inside_regions`): whatever orders the
candidates (a routing plugin, context fallbacks, the summariser), a key restricted to
regions is never served outside them. Limits and budgets are enforced by the plugin
that owns them (clasp-budgets).

Who a request is for (:func:`identify`): ``ctx.user`` is the ``x-clasp-user``
header, else what the client's body says (Anthropic ``metadata.user_id``, OpenAI
``user``); ``ctx.tags`` are the client's ``x-clasp-tags: project=api,feature=review``
under the key's own tags, which win: a client labels its requests, it cannot move
them to another key's project. Both headers have finite limits (count, lengths,
characters) and a bad one is a 400 naming it.
"""

from __future__ import annotations

import datetime
import fnmatch
import re
from collections.abc import Callable, Sequence
from typing import Any

from .errors import AuthenticationError, InvalidRequestError, PermissionDeniedError
from .types import CanonicalRequest, Deployment, Principal, RequestContext


def region_allowed(ctx: RequestContext, deployment: Deployment) -> bool:
    """Whether ``deployment`` may serve ``ctx``: the key's ``policy.regions`` (empty:
    anywhere) includes the deployment's ``region:``. A deployment without a region is
    outside every restriction (where it runs is unknown)."""
    principal = ctx.principal
    regions = principal.policy.regions if principal is not None else ()
    return not regions or deployment.settings.get("region") in regions


def inside_regions(ctx: RequestContext, candidates: Sequence[Deployment]) -> list[Deployment]:
    """The candidates ``ctx`` may be served by; a 403 saying so when none is left."""
    principal = ctx.principal
    regions = principal.policy.regions if principal is not None else ()
    if not regions:
        return list(candidates)
    kept = [d for d in candidates if d.settings.get("region") in regions]
    if not kept and candidates:
        where = sorted({str(d.settings.get("region") or "no region") for d in candidates})
        raise PermissionDeniedError(
            f"model {ctx.public_model!r} cannot be served inside this key's regions ({', '.join(regions)}): "
            f"its deployments run in {', '.join(where)}"
        )
    return kept


USER_HEADER = "x-clasp-user"
TAGS_HEADER = "x-clasp-tags"
MAX_TAGS = 16
MAX_TAGS_HEADER = 2048
MAX_USER = 256
TAG_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
TAG_VALUE = re.compile(r"[A-Za-z0-9_.:/@+-]{1,128}")
USER = re.compile(r"[A-Za-z0-9_.:/@+=-]{1,256}")
_PRINTABLE = re.compile(r"[ -~]+")

TAG_RULE = (f"at most {MAX_TAGS} tags written name=value, names a letter then letters, digits, _ . - "
            "(64 at most), values letters, digits, _ . : / @ + - (128 at most)")


# --- the key's policy --------------------------------------------------------------------------


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _route_inside(allowed: str, route: str | None, routes: Sequence[str]) -> bool:
    """Whether the route serving a name is one ``allowed`` means. A glob route must
    itself lie inside the allowed glob (``claude-*haiku*`` admits the
    ``claude-*haiku*`` route's names, never ``claude-sonnet-haiku``, which an earlier
    ``claude-*sonnet*`` route catches), unless the allowed glob singles out no glob
    route at all (``*haiku*`` over one ``claude-*`` route: the name is all there is).
    An exact allowed name is the admin's explicit choice."""
    if route is None or not _is_glob(allowed) or not _is_glob(route):
        return True
    if fnmatch.fnmatchcase(route, allowed):
        return True
    return not any(fnmatch.fnmatchcase(r, allowed) for r in routes if _is_glob(r))


def may_use_model(principal: Principal | None, model: str, *, route: str | None = None,
                  routes: Sequence[str] = ()) -> bool:
    """Whether ``principal``'s key may ask for the public model name ``model``
    (``policy.models`` globs; none listed: every model). With ``route`` (the pattern
    of the route that serves ``model``) and ``routes`` (every route pattern), a name
    matching an allowed glob must also be served by a route inside it (see
    ``_route_inside``): the gateway checks that before calling anything."""
    if principal is None or not principal.policy.models:
        return True
    return any(fnmatch.fnmatchcase(model, allowed) and _route_inside(allowed, route, routes)
               for allowed in principal.policy.models)


def check_model_access(principal: Principal | None, model: str, *, route: str | None = None,
                       routes: Sequence[str] = ()) -> None:
    """Raise a 403 :class:`~clasp_gateway.PermissionDeniedError` unless the key may
    use ``model`` (:func:`may_use_model`; routes that name a model without calling
    one, such as count_tokens, call it with the name alone)."""
    if not may_use_model(principal, model, route=route, routes=routes):
        assert principal is not None
        shown = model if _PRINTABLE.fullmatch(model) and len(model) <= 256 else "this model"
        raise PermissionDeniedError(
            f"this API key ({principal.name or principal.key_id}) may not use the model {shown!r}; "
            f"it may use: {', '.join(principal.policy.models)}")


def check_expiry(principal: Principal, now: float) -> None:
    """Raise a 401 :class:`~clasp_gateway.AuthenticationError` once the key's
    ``policy.expires_at`` (unix seconds) has passed."""
    expires = principal.policy.expires_at
    if expires is not None and now >= expires:
        when = datetime.datetime.fromtimestamp(expires, datetime.UTC).isoformat().replace("+00:00", "Z")
        raise AuthenticationError(f"this API key expired at {when}; ask the gateway's admin for a new one")


# --- who the request is for -------------------------------------------------------------------


def parse_tags(value: str, where: str = TAGS_HEADER) -> dict[str, str]:
    """``project=api,feature=review`` as a dict; a 400 naming ``where`` if it breaks
    :data:`TAG_RULE` (or a name is repeated)."""
    if len(value) > MAX_TAGS_HEADER:
        raise InvalidRequestError(f"{where}: longer than {MAX_TAGS_HEADER} characters")
    tags: dict[str, str] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, tag = item.partition("=")
        name, tag = name.strip(), tag.strip()
        if not sep or not TAG_KEY.fullmatch(name) or not TAG_VALUE.fullmatch(tag):
            raise InvalidRequestError(f"{where}: expected {TAG_RULE}, e.g. project=api,feature=review")
        if name in tags:
            raise InvalidRequestError(f"{where}: the tag {name!r} is given twice")
        tags[name] = tag
        if len(tags) > MAX_TAGS:
            raise InvalidRequestError(f"{where}: more than {MAX_TAGS} tags")
    return tags


def check_tag_map(value: Any) -> dict[str, str]:
    """A key's ``tags:`` in clasp.yaml under the same rules as the header (for the
    schema: raises ``ValueError`` with the rule)."""
    if not isinstance(value, dict) or len(value) > MAX_TAGS:
        raise ValueError(TAG_RULE)
    tags: dict[str, str] = {}
    for name, tag in value.items():
        tag = str(tag) if isinstance(tag, (int, float)) and not isinstance(tag, bool) else tag
        if not isinstance(name, str) or not isinstance(tag, str) or not TAG_KEY.fullmatch(name) \
                or not TAG_VALUE.fullmatch(tag):
            raise ValueError(TAG_RULE)
        tags[name] = tag
    return tags


def _client_user(value: Any) -> str | None:
    """A user id from the client's body: kept when it is printable text, cut to
    :data:`MAX_USER` characters (an analytics label, not a credential)."""
    if isinstance(value, str) and value and _PRINTABLE.fullmatch(value):
        return value[:MAX_USER]
    return None


def identify(ctx: RequestContext, request: CanonicalRequest) -> None:
    """Set ``ctx.user`` and ``ctx.tags`` (see the module's docstring). A format plugin
    may have put its client's own user id in ``ctx.user`` already (clasp-claude:
    ``metadata.user_id``); the header still wins. Raises a 400 for a bad header."""
    header = ctx.headers.get(USER_HEADER)
    if header is not None:
        header = header.strip()
        if not USER.fullmatch(header):
            raise InvalidRequestError(f"{USER_HEADER}: expected 1 to {MAX_USER} letters, digits or _ . : / @ + = -")
        ctx.user = header
    else:
        ctx.user = _client_user(ctx.user) or _client_user(request.get("user"))
    tags = parse_tags(ctx.headers[TAGS_HEADER]) if TAGS_HEADER in ctx.headers else {}
    if ctx.principal is not None:
        tags.update(ctx.principal.tags)  # the key's own tags win
    ctx.tags = tags


def admit(ctx: RequestContext, request: CanonicalRequest, resolve: Callable[[str], str], routes: Sequence[str]) -> None:
    """What the core checks before any plugin sees a request: who it is for
    (:func:`identify`), and that the key may use the model (:func:`check_model_access`:
    the name, then the route ``resolve(name)`` serving it; an unknown name is then
    the resolver's 404)."""
    identify(ctx, request)
    principal = ctx.principal
    if principal is not None and principal.policy.models:
        check_model_access(principal, ctx.public_model)
        check_model_access(principal, ctx.public_model, route=resolve(ctx.public_model), routes=routes)


# --- clasp.yaml: expires ------------------------------------------------------------------------


def parse_expiry(value: Any) -> float:
    """``expires:`` as unix seconds: an ISO date (the start of that day, UTC) or
    date-time (UTC unless it says otherwise), as YAML reads it or as text."""
    if isinstance(value, datetime.datetime):
        moment = value
    elif isinstance(value, datetime.date):
        moment = datetime.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError("an ISO date or date-time such as 2027-01-31 or 2027-01-31T18:00:00Z") from None
    else:
        raise ValueError("an ISO date or date-time such as 2027-01-31 or 2027-01-31T18:00:00Z")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


__all__ = [
    "MAX_TAGS", "TAGS_HEADER", "TAG_RULE", "USER_HEADER", "admit", "check_expiry", "check_model_access",
    "check_tag_map", "identify", "may_use_model", "parse_expiry", "parse_tags",
]
