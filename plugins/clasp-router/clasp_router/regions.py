"""Residency, as the router applies it: the core's rule (:func:`clasp_gateway.inside_regions`,
which the core also enforces after any routing plugin) on the candidates, and on the
catalogue when the router adds similar-capability deployments.

``principal.policy.regions`` (empty: anywhere) against each deployment's ``region:``;
a deployment without a ``region:`` is outside every restriction.
"""

from __future__ import annotations

from collections.abc import Sequence

from clasp_gateway import Deployment, PermissionDeniedError, RequestContext, inside_regions, region_allowed


def restrict(ctx: RequestContext, candidates: Sequence[Deployment]) -> list[Deployment] | PermissionDeniedError:
    """The candidates inside the key's regions, or the 403 when none is."""
    try:
        return inside_regions(ctx, candidates)
    except PermissionDeniedError as exc:
        return exc


def allowed(ctx: RequestContext, deployments: Sequence[Deployment]) -> list[Deployment]:
    """The deployments inside the key's regions (possibly none)."""
    return [d for d in deployments if region_allowed(ctx, d)]
