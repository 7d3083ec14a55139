"""Shared fixtures of clasp-cache's tests: principals for several tenants and roles."""

from __future__ import annotations

from typing import Any

from clasp_gateway import KeyPolicy, Principal, hookimpl

PRINCIPALS = {
    "key-alpha-0123456789abcdef": Principal("k-alpha", name="alpha-dev", team="alpha"),
    "key-alpha-2-0123456789abcd": Principal("k-alpha2", name="alpha-dev2", team="alpha"),
    "key-beta-0123456789abcdefg": Principal("k-beta", name="beta-dev", team="beta"),
    "key-admin-0123456789abcdef": Principal("k-admin", name="ops", team="ops", role="admin"),
    "key-talpha-0123456789abcde": Principal("k-talpha", name="alpha-lead", team="alpha", role="team_admin"),
    "key-euonly-0123456789abcde": Principal("k-eu", name="eu-dev", team="alpha", policy=KeyPolicy(regions=("eu",))),
}


class Keys:
    """Authenticates the keys above (the static keys of clasp.yaml carry only a team here)."""

    @hookimpl(tryfirst=True)
    def authenticate(self, api_key: str | None, headers: dict[str, str], config: Any) -> Principal | None:
        return PRINCIPALS.get(api_key or "")


def headers(key: str) -> dict[str, str]:
    return {"x-api-key": key}
