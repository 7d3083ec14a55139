"""The ``state:`` section of clasp.yaml, validated with ``state.key: what`` messages.

```yaml
state:
  backend: redis            # memory | redis | sqlite (inferred from url when omitted)
  url: ${REDIS_URL}         # redis://, rediss://, unix://; sqlite:///relative.db,
                            # sqlite:////absolute.db or a plain path; memory: none
  prefix: "clasp:"          # added to every key (several gateways on one Redis)
  timeout: 250ms            # longest a state call may take before it counts as an outage
```

Keys and types for a typed schema: ``backend`` (one of :data:`BACKENDS`), ``url``
(string, a secret reference allowed), ``prefix`` (string), ``timeout`` (seconds: a
number > 0 or a string such as ``250ms``, ``2s``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..types import Secret
from ..validation import INVALID, Choice, Duration, Field, Reference, Section, String

if TYPE_CHECKING:
    from ..config import Config

BACKENDS = ("memory", "redis", "sqlite")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
DEFAULT_PREFIX = "clasp:"
DEFAULT_TIMEOUT = 0.25

SCHEMA = Section({
    "backend": Choice(*BACKENDS),
    "url": Reference(),
    "prefix": Field(String(), DEFAULT_PREFIX),
    "timeout": Field(Duration(minimum=0.001), DEFAULT_TIMEOUT),
})
"""``state:`` (the declarative schema every core section uses: :mod:`..validation`)."""


@dataclass(slots=True, frozen=True)
class StateSettings:
    """The validated ``state:`` section."""

    backend: str = "memory"
    url: Secret | None = None
    """Redis: the URL (a secret: it may hold a password)."""
    path: str | None = None
    """SQLite: the file (None: a fresh file per ``clasp serve`` run)."""
    prefix: str = DEFAULT_PREFIX
    timeout: float = DEFAULT_TIMEOUT
    configured: bool = False
    """Whether clasp.yaml chose a backend (``backend`` or ``url`` given)."""


def state_problems(raw: Any) -> tuple[StateSettings, list[str]]:
    """Validate a ``state:`` value; returns the settings and every problem found
    (``state.key: what was expected``), for a caller that collects problems itself."""
    from ..config import resolve_secret

    problems: list[str] = []
    if raw is None:
        return StateSettings(), problems
    v = SCHEMA.parse(raw, "state", problems)
    if not isinstance(raw, dict):
        return StateSettings(), problems
    v = {key: None if value is INVALID else value for key, value in v.items()}  # each already reported
    url: Secret | None = None
    if v["url"]:
        url = resolve_secret(str(v["url"]).strip())

    backend = v["backend"]
    if backend is None and url is not None and url.value:
        backend = "redis" if url.value.startswith(REDIS_SCHEMES) else "sqlite"
    if backend is None and url is not None and not url.value:
        backend = "redis"  # an unset ${REDIS_URL}: say which variable to set, below

    path: str | None = None
    if backend == "redis":
        if url is None:
            problems.append("state.url: required with backend redis (e.g. redis://127.0.0.1:6379/0 or ${REDIS_URL})")
        elif not url.value:
            problems.append(f"state.url: {url.describe()} is not set: {url.hint}, or remove state: to keep state in memory")
        elif not url.value.startswith(REDIS_SCHEMES):
            problems.append("state.url: expected a redis://, rediss:// or unix:// URL with backend redis")
    elif backend == "sqlite" and url is not None:
        if not url.value:
            problems.append(f"state.url: {url.describe()} is not set: {url.hint}, or remove url for a fresh file per run")
        else:
            path = _sqlite_path(url.value)
            if not path:
                problems.append("state.url: expected sqlite:///relative.db, sqlite:////absolute.db or a file path")
    elif backend == "memory" and url is not None:
        problems.append("state.url: the memory backend takes no url (remove it, or choose backend redis or sqlite)")

    prefix = DEFAULT_PREFIX if v["prefix"] is None else v["prefix"]
    timeout = DEFAULT_TIMEOUT if v["timeout"] is None else float(v["timeout"])

    settings = StateSettings(
        backend=backend or "memory", url=url if backend == "redis" else None, path=path, prefix=prefix,
        timeout=timeout, configured=backend is not None,
    )
    return settings, problems


def parse_state_settings(config: Config) -> StateSettings:
    """``config``'s ``state:`` section; raises ConfigError listing every problem."""
    from ..config import ConfigError

    settings, problems = state_problems(config.raw.get("state"))
    if problems:
        raise ConfigError(config.source, problems)
    return settings


def _sqlite_path(url: str) -> str:
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///"):]
    if "://" in url:
        return ""
    return url
