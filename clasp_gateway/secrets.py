"""Secret references and the backends that resolve them.

clasp.yaml never holds a credential, only a reference to one. Two kinds are built
in: ``${ENV_VAR}`` (the environment) and ``file:/run/secrets/name`` (a file, as
Docker and Kubernetes mount secrets). Any other ``scheme:path`` reference is
resolved by a backend a plugin registers (``register_secret_backends``), e.g.
``vault:secret/llm/openai#api_key`` with clasp-secrets-vault::

    @hookimpl
    def register_secret_backends(register):
        register("vault", VaultBackend.from_options, settings=VAULT_SETTINGS)

A backend is built once per configuration by ``factory(options)``, ``options``
being its ``secrets.<scheme>:`` section of clasp.yaml (checked with ``settings``,
its secret fields resolved from the environment or files first: a backend's own
credential cannot come from itself). Its ``resolve(path)`` returns the value or
raises :class:`SecretLookupError` with a hint for a person (never the value).

References are resolved when the configuration loads, off the request path, and
every value is registered for redaction (:mod:`clasp_gateway.redact`) at once, so it
never reaches a log line, an error or ``clasp check``. Backends come from installed
plugins (entry points, filtered by ``CLASP_LOAD_PLUGINS``), found the first time a
reference or ``secrets:`` names a scheme that is not built in: a secret is needed
before ``plugins.paths`` can be read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .plugins import PluginManager
    from .validation import Section

__all__ = [
    "BUILTIN_SCHEMES", "RegisterSecretBackend", "SecretBackend", "SecretBackendRegistration", "SecretBackends",
    "SecretLookupError", "is_backend_reference",
]

log = logging.getLogger("clasp.secrets")

BUILTIN_SCHEMES = ("env", "file")
"""Built into the core: ``${VAR}`` and ``file:/path``."""

_REFERENCE = re.compile(r"([a-z][a-z0-9_-]{1,31}):(?!//)(\S+)")
"""``scheme:path``; a URL (``postgresql://…``) is not a reference."""

KNOWN_MANAGERS = {"vault": "clasp-secrets-vault", "aws-sm": None, "gcp-sm": None, "op": None}
"""Schemes that name a secret manager: without its backend installed, a reference to
one is an unresolved secret (with a hint), never taken as a literal key."""


class SecretLookupError(Exception):
    """A reference that did not resolve; the message is a hint for a person
    (``put api_key in secret/llm/openai``), never any secret."""


class SecretBackend(Protocol):
    """What a secret backend implements."""

    def resolve(self, path: str) -> str:
        """The secret at ``path`` (the reference after ``scheme:``); raise
        :class:`SecretLookupError` when it cannot be read. Called when the
        configuration loads, never per request: it may block (a bounded HTTP call)."""
        ...


SecretBackendFactory = Callable[[dict[str, Any]], SecretBackend]


@dataclass(slots=True, frozen=True)
class SecretBackendRegistration:
    """A secret backend, by scheme (``register_secret_backends``)."""

    scheme: str
    factory: SecretBackendFactory
    settings: Section | None
    plugin: str


class RegisterSecretBackend(Protocol):
    """``register`` of ``register_secret_backends``."""

    def __call__(self, scheme: str, factory: SecretBackendFactory,
                 settings: Section | None = None) -> SecretBackendRegistration: ...


def is_backend_reference(text: str) -> tuple[str, str] | None:
    """``(scheme, path)`` when ``text`` is a ``scheme:path`` reference for a backend
    other than the built-in ones, else ``None``."""
    match = _REFERENCE.fullmatch(text)
    if match is None or match.group(1) in BUILTIN_SCHEMES:
        return None
    return match.group(1), match.group(2)


def _register(plugin: str, out: list[SecretBackendRegistration]) -> RegisterSecretBackend:
    from .registrations import _Bad, _callable, _name

    def register(scheme: str, factory: SecretBackendFactory, settings: Section | None = None) -> SecretBackendRegistration:
        """Add the secret backend for ``scheme:`` references, built by ``factory(options)``."""
        _name(scheme, "secret backend scheme", re.compile(r"^[a-z][a-z0-9_-]{1,31}$"),
              "must be a lower-case word such as 'vault'")
        if scheme in BUILTIN_SCHEMES:
            raise _Bad(f"{scheme!r} is built in; register another scheme")
        _callable(factory, f"the factory of secret backend {scheme!r}")
        record = SecretBackendRegistration(scheme, factory, settings, plugin)
        out.append(record)
        return record

    return register


def registered_backends(pm: PluginManager) -> dict[str, SecretBackendRegistration]:
    """Every ``register_secret_backends`` registration of ``pm``, by scheme (a scheme
    two plugins register is a :class:`~clasp_gateway.RegistrationError`)."""
    from .registrations import _collect

    records = _collect(pm, "register_secret_backends", _register, lambda r: [r.scheme])
    return {r.scheme: r for r in records}


class SecretBackends:
    """The backends of one configuration, built on first use from their registrations
    and ``secrets:`` options. ``registrations`` defaults to the installed plugins'."""

    def __init__(self, options: Mapping[str, Any] | None = None,
                 registrations: Mapping[str, SecretBackendRegistration] | None = None) -> None:
        self.options: dict[str, Any] = dict(options or {})
        self._registrations = dict(registrations) if registrations is not None else None
        self._built: dict[str, SecretBackend] = {}

    @property
    def registrations(self) -> dict[str, SecretBackendRegistration]:
        """Registrations by scheme (installed plugins', loaded once when first asked)."""
        if self._registrations is None:
            from .plugins import PluginManager

            try:
                pm = PluginManager()
                pm.load()
                self._registrations = registered_backends(pm)
            except RuntimeError as exc:  # a plugin that fails to load: `clasp serve` says which
                log.warning("secret backends of installed plugins unavailable: %s", exc)
                self._registrations = {}
        return self._registrations

    def check(self, resolve: Callable[[Any], Any], problems: list[str]) -> None:
        """Check the ``secrets:`` section: every scheme has a backend, every backend's
        options match its settings (their references resolved with ``resolve``, the
        built-in resolver)."""
        from .validation import Reference

        for scheme, raw in self.options.items():
            where = f"secrets.{scheme}"
            registration = self.registrations.get(str(scheme))
            if registration is None:
                known = ", ".join([*BUILTIN_SCHEMES, *sorted(self.registrations)])
                hint = KNOWN_MANAGERS.get(str(scheme))
                problems.append(f"{where}: no secret backend {scheme!r} is installed (known: {known})"
                                + (f"; install {hint}" if hint else ""))
                continue
            if registration.settings is None:
                problems.append(f"{where}: the backend {scheme!r} takes no settings")
                continue
            values = registration.settings.parse(raw, where, problems)
            if not isinstance(values, dict):
                continue
            for name, field in registration.settings.fields.items():
                if isinstance(field.kind, Reference) and values.get(name) is not None:
                    values[name] = resolve(values[name]).value
            self.options[scheme] = values

    def backend(self, scheme: str) -> SecretBackend | None:
        """The backend for ``scheme`` (built once), or ``None`` when none is installed."""
        built = self._built.get(scheme)
        if built is not None:
            return built
        registration = self.registrations.get(scheme)
        if registration is None:
            return None
        options = self.options.get(scheme)
        if not isinstance(options, dict):
            options = registration.settings.parse(None, f"secrets.{scheme}", []) if registration.settings else {}
        built = self._built[scheme] = registration.factory(dict(options))
        return built

    def resolve(self, scheme: str, path: str) -> tuple[str | None, str]:
        """``(value, hint)`` of ``scheme:path``: the value, or ``None`` and what a person
        should do. A backend that fails unexpectedly is a hint too, never a traceback."""
        try:
            backend = self.backend(scheme)
        except SecretLookupError as exc:
            return None, f"{scheme}: {exc}"
        except Exception as exc:
            log.warning("the secret backend %r could not be set up: %s", scheme, type(exc).__name__)
            return None, f"{scheme}: the backend could not be set up ({type(exc).__name__}: {exc})"
        if backend is None:
            hint = KNOWN_MANAGERS.get(scheme)
            return None, (f"install a secret backend for {scheme}: references ({hint})" if hint
                          else f"no secret backend {scheme!r} is installed")
        try:
            value = backend.resolve(path)
        except SecretLookupError as exc:
            return None, f"{scheme}:{path}: {exc}"
        except Exception as exc:  # a backend's bug: say whose, never the value
            return None, f"{scheme}:{path}: the backend failed ({type(exc).__name__})"
        return (value or None), f"{scheme}:{path} is empty"
