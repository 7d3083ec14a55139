"""``clasp check --security``: what in a clasp.yaml would make the gateway easy to
abuse, each finding with what is wrong and how to fix it.

Checked, from the file and the plugins it loads (no network):

- an **open gateway** on an address other machines reach (no ``keys:`` and no plugin
  authenticating), and the **admin API** with nobody able to administer it safely;
- **plaintext secrets**: provider keys, gateway keys and plugins' secrets written in
  the file instead of ``${ENV}`` or ``file:`` references (a clasp.yaml is copied into
  repositories, tickets and ConfigMaps; a reference keeps the secret out of all of them),
  and well-known provider key shapes anywhere in the file;
- **weak keys**: short, low-entropy, repeated or well-known gateway keys;
- **TLS off** on a public address (keys would cross the network in clear) unless a
  TLS-terminating proxy is declared (``server.behind_https``);
- **CORS** allowing every origin;
- **debug logging**, which writes request details (prompts included) to the log.

Each :class:`Finding` names a ``path`` in the file but never a secret's value.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .config import Config, is_loopback, weak_key_reason

SECRET_NAMES = re.compile(r"(^|_)(api_?key|api_?keys|key|secret|client_secret|token|password|session_secret|"
                          r"access_key|secret_key|private_key|auth_token|webhook_secret)$", re.IGNORECASE)
"""Field names whose value is a credential (``api_key``, ``client_secret``, ``token``...)."""

NOT_SECRETS = frozenset({"key_env", "token_url", "key_id", "cache_key", "api_key_env", "partition_key",
                         "tokens", "max_tokens"})

PROVIDER_KEY = re.compile(
    r"\b(sk-ant-[A-Za-z0-9_-]{20,}|sk-(?:proj-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}|"
    r"gh[pousr]_[A-Za-z0-9]{36,}|xox[baprs]-[A-Za-z0-9-]{10,}|hf_[A-Za-z0-9]{30,})\b")
"""Shapes of well-known provider and platform keys (Anthropic, OpenAI, AWS, Google,
GitHub, Slack, Hugging Face)."""

WELL_KNOWN = frozenset({
    "sk-1234", "sk-12345", "sk-123456", "sk-test", "sk-local", "test", "testing", "secret", "admin", "letmein",
    "master", "masterkey", "sk-master", "sk-admin", "default", "clasp", "gateway", "apikey", "api-key",
    "0123456789abcdef0123456789abcdef", "abcdefghijklmnopqrstuvwxyz",
})
MIN_ENTROPY_BITS = 64.0
"""Below this estimated strength (length times the Shannon entropy of its
characters) a gateway key can be guessed offline or by a patient attacker."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: where (a path in clasp.yaml), what is wrong, and how to fix it."""

    path: str
    what: str
    fix: str
    severity: str = "high"

    def __str__(self) -> str:
        return f"[{self.severity}] {self.path}: {self.what}\n    fix: {self.fix}"


def is_reference(value: Any) -> bool:
    """``${ENV}``, ``file:/path`` or a secret backend's ``scheme:path`` (``vault:...``):
    the secret is not in the file."""
    from .secrets import KNOWN_MANAGERS, is_backend_reference

    if not isinstance(value, str):
        return False
    backend = is_backend_reference(value.strip())
    return (bool(re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}", value.strip())) or value.startswith("file:")
            or (backend is not None and backend[0] in KNOWN_MANAGERS))


def entropy_bits(value: str) -> float:
    """Estimated strength: length times the Shannon entropy per character."""
    if not value:
        return 0.0
    counts = Counter(value)
    per_char = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())
    return per_char * len(value)


def weakness(value: str) -> str | None:
    """Why a gateway key is weak, or ``None``."""
    reason = weak_key_reason(value)
    if reason:
        return reason
    lowered = value.lower()
    if lowered in WELL_KNOWN or re.sub(r"[^a-z0-9]", "", lowered) in WELL_KNOWN:
        return "a well-known key"
    if re.search(r"(0123456|1234567|abcdefg|qwertyu)", lowered):
        return "a keyboard or counting sequence"
    bits = entropy_bits(value)
    if bits < MIN_ENTROPY_BITS:
        return f"low entropy (about {bits:.0f} bits; use at least {MIN_ENTROPY_BITS:.0f})"
    return None


def _walk(value: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    """Every (path, field name, value) in the raw document."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            yield where, str(key), item
            yield from _walk(item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}.{i}")


def plaintext_secrets(raw: dict[str, Any]) -> list[Finding]:
    """Secrets written in the file, by field name and by well-known key shape."""
    found: list[Finding] = []
    flagged: set[str] = set()
    for path, name, value in _walk(raw, ""):
        secret_header = ".secret_headers." in f".{path}"  # every value of a secret_headers mapping
        if not secret_header and (name.lower() in NOT_SECRETS or not SECRET_NAMES.search(name)):
            continue
        values = value if isinstance(value, list) else [value]
        for i, item in enumerate(values):
            if isinstance(item, str) and item and not is_reference(item):
                where = path if not isinstance(value, list) else f"{path}.{i}"
                flagged.add(where)
                found.append(Finding(where, "a secret is written in the file in plain text",
                                     "move it to the environment or a file and write a reference instead, "
                                     "e.g. ${MY_SECRET} or file:/run/secrets/my_secret"))
    for path, _name, value in _walk(raw, ""):
        if isinstance(value, str) and path not in flagged and PROVIDER_KEY.search(value) and not is_reference(value):
            found.append(Finding(path, "a provider or platform key appears in the file in plain text",
                                 "revoke it if the file was shared, then reference it: ${PROVIDER_API_KEY}"))
    return found


def audit(config: Config, host: str, *, other_auth: bool, admin_routes: bool, oidc: bool) -> list[Finding]:
    """Every finding for ``config`` served on ``host``. ``other_auth``: a plugin
    authenticates (virtual keys, SSO); ``admin_routes``: plugins serve ``/admin/``
    routes; ``oidc``: single sign-on is configured."""
    findings: list[Finding] = []
    server = config.server
    public = not is_loopback(host)
    has_keys = bool(config.raw.get("keys"))
    if public and not has_keys and not other_auth:
        findings.append(Finding(
            "keys", f"the gateway on {host} accepts requests without any key: anyone who reaches it spends its "
            "provider keys", "add `keys:` with long random keys given as ${ENV} references (or virtual keys), "
            "or serve on 127.0.0.1"))
    if public and server.allow_unauthenticated:
        findings.append(Finding("server.allow_unauthenticated", "the gateway is served open on purpose on "
                                f"{host}", "remove allow_unauthenticated and require keys"))
    if public and not server.tls.enabled and not server.behind_https:
        findings.append(Finding(
            "server.tls", f"TLS is off on {host}: keys and prompts cross the network in clear text",
            "set server.tls.certfile and keyfile, or put a TLS-terminating proxy in front and set "
            "server.behind_https: true"))
    if "*" in server.cors.allow_origins:
        findings.append(Finding("server.cors.allow_origins", "every web site may call the gateway from a browser "
                                "(allow_origins: ['*'])", "list the origins that need it, e.g. "
                                "[https://app.example.com]"))
    if server.log_level == "debug":
        findings.append(Finding("server.log_level", "debug logging writes request details, prompts included, "
                                "to the log", "use info (or warning) in production", "medium"))
    findings += plaintext_secrets(config.raw)
    admin_keys = 0
    for i, key in enumerate(config.keys):
        if key.role == "admin":
            admin_keys += 1
        reason = weakness(key.secret.value) if key.secret.value else None
        if reason:
            findings.append(Finding(f"keys.{i}", f"the key {key.name!r} is weak: {reason}",
                                    "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"))
    if admin_routes and public and not admin_keys and not oidc and not other_auth:
        findings.append(Finding(
            "keys", "the admin API is served but the file gives nobody the admin role (no admin key, no oidc:); "
            "only admin virtual keys made with `clasp keys create --role admin` could use it",
            "give one key `role: admin` (a ${ENV} reference) or configure single sign-on under oidc:", "medium"))
    return findings


__all__ = ["Finding", "audit", "entropy_bits", "is_reference", "plaintext_secrets", "weakness"]
