"""The ``ledger:`` section of clasp.yaml.

```yaml
ledger:
  enabled: true            # write the spend ledger (storage: says where)
  batch_size: 500          # rows per write
  flush_interval: 1s       # longest a row waits in memory before it is written
  max_queue: 50000         # rows held in memory at most (beyond: spooled, then dropped loudly)
  write_timeout: 10s       # a batch write slower than this counts as the database being down
  retry_interval: 5s       # how often a down database is tried again (spool replay)
  shutdown_timeout: 10s    # the flush on shutdown (SIGTERM); what is left goes to the spool
  spool_path: /var/lib/clasp/ledger-spool.jsonl   # default: ledger-spool.jsonl in the data dir
  spool_max_bytes: 256MiB  # the spool's size cap (beyond: rows are dropped, logged as errors)
  prompt_hash: true        # fingerprint each request (a hash, never the text) for savings reports
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from clasp_gateway import Boolean, Config, ConfigError, Custom, Duration, Field, Integer, Invalid, Section, String

SPOOL_FILE = "ledger-spool.jsonl"

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}


def _size(value: Any) -> int:
    if isinstance(value, bool):
        raise Invalid("a size in bytes (e.g. 256MiB)")
    if isinstance(value, int):
        number = float(value)
        unit = None
    else:
        match = _SIZE.match(str(value))
        if match is None:
            raise Invalid("a size in bytes (e.g. 256MiB, 1GB, 1048576)")
        number, unit = float(match.group(1)), (match.group(2) or "").lower() or None
    size = int(number * _UNITS[unit])
    if size < 4096:
        raise Invalid("a size of at least 4096 bytes")
    return size


@dataclass(slots=True, frozen=True)
class LedgerSettings:
    """The validated ``ledger:`` section (defaults: on, batches of 500 or every second)."""

    enabled: bool = True
    batch_size: int = 500
    flush_interval: float = 1.0
    max_queue: int = 50_000
    write_timeout: float = 10.0
    retry_interval: float = 5.0
    shutdown_timeout: float = 10.0
    spool_path: str | None = None
    spool_max_bytes: int = 256 * 1024**2
    prompt_hash: bool = True


SCHEMA = Section({
    "enabled": Field(Boolean(), True),
    "batch_size": Field(Integer(1, 100_000), 500),
    "flush_interval": Field(Duration(minimum=0.001, maximum=3600), 1.0),
    "max_queue": Field(Integer(10, 10_000_000), 50_000),
    "write_timeout": Field(Duration(minimum=0.01, maximum=600), 10.0),
    "retry_interval": Field(Duration(minimum=0.01, maximum=3600), 5.0),
    "shutdown_timeout": Field(Duration(minimum=0.01, maximum=600), 10.0),
    "spool_path": String(non_empty=True),
    "spool_max_bytes": Field(Custom(_size, "a size in bytes (e.g. 256MiB)"), 256 * 1024**2),
    "prompt_hash": Field(Boolean(), True),
}, into=LedgerSettings)
"""``ledger:``."""


def parse_settings(config: Config) -> LedgerSettings:
    """The ``ledger:`` section, or :class:`ConfigError` with every problem."""
    problems: list[str] = []
    settings = SCHEMA.parse(config.raw.get("ledger"), "ledger", problems)
    if problems:
        raise ConfigError(config.source, problems)
    assert isinstance(settings, LedgerSettings)
    return settings
