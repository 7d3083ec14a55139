"""The ``alerts:`` section of clasp.yaml.

```yaml
alerts:
  webhook:
    url: https://hooks.example.com/clasp        # alerts are POSTed as JSON
    headers: {Authorization: "${ALERT_TOKEN}"}  # secrets by reference, never logged
    timeout: 5s
    retries: 3                                  # then dropped (and logged)
  anomaly:
    dimensions: [key, team, model]
    factor: 5            # a minute above 5x its usual...
    min_spend_usd: 1.0   # ...and above this floor (a quiet key's first dollar is no anomaly)
    min_errors: 10
    warmup_minutes: 10   # minutes of history before a dimension can alert
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clasp_gateway import (
    Boolean,
    Choice,
    Config,
    Duration,
    Field,
    Integer,
    ListOf,
    MapOf,
    Number,
    Reference,
    Section,
    String,
    resolve_secret,
)

DIMENSIONS = ("key", "team", "model", "project", "user")


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    """Header name -> secret reference (resolved when sending)."""
    timeout: float = 5.0
    retries: int = 3
    queue: int = 1000


@dataclass(frozen=True, slots=True)
class AnomalySettings:
    enabled: bool = True
    dimensions: tuple[str, ...] = ("key", "team", "model")
    factor: float = 5.0
    alpha: float = 0.2
    """EWMA weight of the newest minute."""
    min_spend_usd: float = 1.0
    min_errors: int = 10
    min_error_rate: float = 0.2
    warmup_minutes: int = 10
    max_subjects: int = 10_000
    """Dimension values tracked per dimension (bounded: values come from clients too)."""


@dataclass(frozen=True, slots=True)
class AlertSettings:
    webhook: WebhookSettings | None = None
    anomaly: AnomalySettings = field(default_factory=AnomalySettings)


SECTION = Section({
    "webhook": Field(Section({
        "url": Field(String(pattern=r"https?://\S+", expected="an http(s) URL"), required=True),
        "headers": Field(MapOf(Reference()), {}),
        "timeout": Field(Duration(minimum=0.1, maximum=120), 5.0),
        "retries": Field(Integer(minimum=0, maximum=10), 3),
        "queue": Field(Integer(minimum=1, maximum=100_000), 1000),
    }), None, nullable=True),
    "anomaly": Field(Section({
        "enabled": Field(Boolean(), True),
        "dimensions": Field(ListOf(Choice(*DIMENSIONS)), ["key", "team", "model"]),
        "factor": Field(Number(above=1), 5.0),
        "alpha": Field(Number(above=0, maximum=1), 0.2),
        "min_spend_usd": Field(Number(minimum=0), 1.0),
        "min_errors": Field(Integer(minimum=1), 10),
        "min_error_rate": Field(Number(minimum=0, maximum=1), 0.2),
        "warmup_minutes": Field(Integer(minimum=0), 10),
        "max_subjects": Field(Integer(minimum=1), 10_000),
    })),
})


def parse_settings(config: Config, problems: list[str]) -> AlertSettings:
    raw: dict[str, Any] = SECTION.parse(config.raw.get("alerts"), "alerts", problems)
    hook = raw.get("webhook")
    webhook = None
    if isinstance(hook, dict) and hook.get("url"):
        webhook = WebhookSettings(url=hook["url"], headers=dict(hook.get("headers") or {}),
                                  timeout=float(hook["timeout"]), retries=int(hook["retries"]),
                                  queue=int(hook["queue"]))
    anomaly = raw.get("anomaly") or {}
    return AlertSettings(webhook=webhook, anomaly=AnomalySettings(
        **{**anomaly, "dimensions": tuple(anomaly.get("dimensions") or ("key", "team", "model"))}))


def resolve_headers(headers: dict[str, str]) -> dict[str, str]:
    """Header values from their references (``${ENV}``, ``file:``); missing ones dropped."""
    out = {}
    for name, ref in headers.items():
        secret = resolve_secret(ref)
        if secret.value:
            out[name] = secret.value
    return out
