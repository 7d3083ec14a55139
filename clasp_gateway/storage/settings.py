"""The ``storage:`` section of clasp.yaml: where plugins' records live (ledger, keys,
analytics), validated with ``storage.key: what`` messages.

```yaml
storage:
  url: ${DATABASE_URL}    # postgresql://user:pass@host/db, or sqlite:////abs/path.db;
                          # default: a SQLite file clasp.db in the data dir
  auto_migrate: true      # upgrade every plugin's tables when the gateway starts
  pool_size: 5            # connections kept open per process
  max_overflow: 5         # extra connections under load, closed when idle
  pool_timeout: 10s       # longest wait for a free connection
  pool_recycle: 30m       # reopen connections older than this (load balancers drop idle ones)
  connect_timeout: 10s
  statement_timeout: 30s  # PostgreSQL: longest one statement may run
  busy_timeout: 5s        # SQLite: longest wait for another process's write lock
```

The data dir is ``$CLASP_DATA_DIR``, else ``$XDG_DATA_HOME/clasp``
(``~/.local/share/clasp``). Nothing here imports SQLAlchemy: the section is checked
on every start, the engine is built only when a plugin needs a database.

The URL may hold a password, so it is a secret reference (``${DATABASE_URL}``,
``file:/run/secrets/db``): the whole URL and its password are registered for
redaction when it is read, and :attr:`StorageSettings.safe_url` is what logs and
errors show.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from ..redact import register_secret
from ..state.outage import safe_url
from ..validation import INVALID, Boolean, Duration, Field, Integer, Reference, Section

if TYPE_CHECKING:
    from ..config import Config

DATA_DIR_ENV = "CLASP_DATA_DIR"
"""Where the gateway keeps its files (the default SQLite database)."""

SCHEMA = Section({
    "url": Reference(),
    "auto_migrate": Field(Boolean(), True),
    "pool_size": Field(Integer(1, 100), 5),
    "max_overflow": Field(Integer(0, 100), 5),
    "pool_timeout": Field(Duration(minimum=0.001, maximum=600), 10.0),
    "pool_recycle": Field(Duration(minimum=1, maximum=86400), 1800.0),
    "connect_timeout": Field(Duration(minimum=0.001, maximum=600), 10.0),
    "statement_timeout": Field(Duration(minimum=0.001, maximum=3600), 30.0),
    "busy_timeout": Field(Duration(minimum=0.001, maximum=600), 5.0),
})
"""``storage:`` (the declarative schema every core section uses)."""

_SCHEMES = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(slots=True, frozen=True)
class StorageSettings:
    """The validated ``storage:`` section (defaults: the embedded SQLite file)."""

    url: str
    """The SQLAlchemy URL with its async driver (``sqlite+aiosqlite:///…``,
    ``postgresql+asyncpg://…``). May hold a password: log :attr:`safe_url`."""
    auto_migrate: bool = True
    pool_size: int = 5
    max_overflow: int = 5
    pool_timeout: float = 10.0
    pool_recycle: float = 1800.0
    connect_timeout: float = 10.0
    statement_timeout: float = 30.0
    busy_timeout: float = 5.0
    configured: bool = False
    """Whether clasp.yaml has a ``storage:`` section (a plugin may then want a database
    even without migrations of its own)."""

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return "sqlite" if self.url.startswith("sqlite") else "postgresql"

    @property
    def safe_url(self) -> str:
        """The URL without its password, for logs, errors and ``clasp db current``."""
        return safe_url(self.url)

    def __repr__(self) -> str:
        return f"StorageSettings({self.safe_url!r}, auto_migrate={self.auto_migrate})"


def data_dir() -> Path:
    """The gateway's data directory: ``$CLASP_DATA_DIR``, else ``$XDG_DATA_HOME/clasp``
    (``~/.local/share/clasp``). Not created here."""
    chosen = os.environ.get(DATA_DIR_ENV)
    if chosen:
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(str(Path.home()), ".local", "share")
    return Path(base) / "clasp"


def default_url() -> str:
    """``sqlite+aiosqlite:///<data dir>/clasp.db``."""
    return "sqlite+aiosqlite:///" + str((data_dir() / "clasp.db").absolute())


def async_url(url: str) -> str | None:
    """``url`` with the async driver the gateway uses (``postgresql://`` ->
    ``postgresql+asyncpg://``, ``sqlite:///x`` -> ``sqlite+aiosqlite:///x``), a plain
    file path as SQLite; ``None`` for anything else (MySQL, a sync driver...)."""
    match = _SCHEME.match(url)
    if match is None:
        if not url.strip() or "://" in url:
            return None
        return "sqlite+aiosqlite:///" + str(Path(url).expanduser().absolute())
    driver = _SCHEMES.get(match.group(1).lower())
    if driver is None:
        return None
    rest = url[match.end():]
    if driver.startswith("sqlite") and not rest.startswith("/"):
        return None  # sqlite://relative (two slashes) is a host, not a file
    return f"{driver}://{rest}"


def _register_password(url: str) -> None:
    """The password inside a URL is a secret of its own: an error that quotes the
    host and user (asyncpg's, SQLAlchemy's) must not show it either."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return
    if password:
        register_secret(password)
        register_secret(unquote(password))


def storage_problems(raw: Any) -> tuple[StorageSettings, list[str]]:
    """Validate a ``storage:`` value; returns the settings and every problem found
    (``storage.key: what was expected``). Never shows the URL's password."""
    from ..config import _resolve_secret

    problems: list[str] = []
    if raw is None:
        return StorageSettings(url=default_url()), problems
    v = SCHEMA.parse(raw, "storage", problems)
    if not isinstance(raw, dict):
        return StorageSettings(url=default_url()), problems
    v = {key: value for key, value in v.items() if value is not INVALID and value is not None}
    url = default_url()
    if "url" in v:
        # Not resolve_secret: it would register the whole URL, and redaction would then
        # hide its host and database name (its ends) everywhere; the password is the secret.
        secret = _resolve_secret(str(v.pop("url")).strip(), None)
        if not secret.value:
            problems.append(f"storage.url: {secret.describe()} is not set: {secret.hint}, "
                            "or remove storage.url to use the embedded SQLite file")
        else:
            _register_password(secret.value)
            converted = async_url(secret.value)
            if converted is None:
                shown = secret.describe() if secret.describe() != "<literal>" else safe_url(secret.value)
                problems.append(f"storage.url: expected postgresql://user:password@host/database, "
                                f"sqlite:////absolute/path.db or a file path, got {shown}")
            else:
                url = converted
    return StorageSettings(url=url, configured=True, **v), problems


def parse_storage_settings(config: Config) -> StorageSettings:
    """``config``'s ``storage:`` section; raises ConfigError listing every problem."""
    from ..config import ConfigError

    settings, problems = storage_problems(config.raw.get("storage"))
    if problems:
        raise ConfigError(config.source, problems)
    return settings
