"""The ``limits:`` section of clasp.yaml.

Per-key limits come from the key itself (``KeyPolicy``: static keys in ``keys:`` or
virtual keys); this section adds what a key cannot say: limits per team, per user
behind a shared key, how to degrade while the shared state is down, and runaway
detection::

    limits:
      teams: {platform: {rpm: 600, tpm: 2000000, max_concurrency: 40}}
      users: {default: {rpm: 60}, alice: {rpm: 120}}
      expected_replicas: 2          # while Redis is down each process allows limit / 2
      output_estimate_cap: 4096     # max_tokens counted at admission, at most this
      lease_ttl: 900                # a concurrency slot a dead replica held frees after this
      runaway: {multiplier: 10, floor_rpm: 60, pause: true, pause_for: 600, webhook: https://...}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clasp_gateway import Boolean, Config, ConfigError, Duration, Field, Integer, MapOf, Number, Section, String


@dataclass(slots=True, frozen=True)
class LimitSet:
    """The limits of one scope (a key, a team, a user); ``None``: no limit of that kind."""

    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    tpd: int | None = None
    max_concurrency: int | None = None

    @property
    def empty(self) -> bool:
        return self.rpm is None and self.tpm is None and self.rpd is None and self.tpd is None \
            and self.max_concurrency is None


@dataclass(slots=True, frozen=True)
class RunawaySettings:
    """``limits.runaway``: flag a key or user whose per-minute rate leaves its own pattern."""

    enabled: bool = True
    multiplier: float = 10.0
    """Flag when this minute's requests (or spend) exceed ``multiplier`` x the usual..."""
    floor_rpm: float = 60.0
    """...and at least this many requests per minute (a quiet key may burst a little)."""
    floor_usd_per_minute: float = 1.0
    """...or this much spend per minute (with ``multiplier`` x the usual spend)."""
    alpha: float = 0.2
    """EWMA weight of the latest complete minute (0.2: roughly the last five minutes)."""
    pause: bool = False
    """Refuse the flagged key or user's requests for ``pause_for`` seconds."""
    pause_for: float = 600.0
    episode: float = 600.0
    """One alert per key or user per this many seconds, across replicas."""
    webhook: str | None = None
    """POSTed a JSON alert (optional; the log always gets one)."""


@dataclass(slots=True, frozen=True)
class LimitsSettings:
    teams: dict[str, LimitSet] = field(default_factory=dict)
    users: dict[str, LimitSet] = field(default_factory=dict)
    """Per user behind a shared key (``ctx.user``); ``default`` applies to every user not named."""
    expected_replicas: int = 1
    output_estimate_cap: int = 4096
    lease_ttl: float = 900.0
    runaway: RunawaySettings = field(default_factory=RunawaySettings)


_LIMIT_SET = Section({
    "rpm": Integer(minimum=1), "tpm": Integer(minimum=1), "rpd": Integer(minimum=1), "tpd": Integer(minimum=1),
    "max_concurrency": Integer(minimum=1),
}, into=LimitSet)

_RUNAWAY = Section({
    "enabled": Field(Boolean(), default=True),
    "multiplier": Field(Number(above=1.0), default=10.0),
    "floor_rpm": Field(Number(minimum=1.0), default=60.0),
    "floor_usd_per_minute": Field(Number(above=0.0), default=1.0),
    "alpha": Field(Number(above=0.0, maximum=1.0), default=0.2),
    "pause": Field(Boolean(), default=False),
    "pause_for": Field(Duration(minimum=1.0, maximum=7 * 86400.0), default=600.0),
    "episode": Field(Duration(minimum=1.0, maximum=86400.0), default=600.0),
    "webhook": String(non_empty=True, pattern=r"^https?://"),
}, into=RunawaySettings)

_SECTION = Section({
    "teams": Field(MapOf(_LIMIT_SET), factory=dict),
    "users": Field(MapOf(_LIMIT_SET), factory=dict),
    "expected_replicas": Field(Integer(minimum=1, maximum=1000), default=1),
    "output_estimate_cap": Field(Integer(minimum=1), default=4096),
    "lease_ttl": Field(Duration(minimum=10.0, maximum=86400.0), default=900.0),
    "runaway": _RUNAWAY,
}, into=LimitsSettings)


def parse_settings(config: Config) -> LimitsSettings:
    """Validate ``limits:``; raise ConfigError listing every problem.

    Without a ``limits:`` section only the keys' own limits apply: runaway detection
    (which counts every request) is on by default only once the section exists."""
    problems: list[str] = []
    raw = config.raw.get("limits")
    if raw is None:
        return LimitsSettings(runaway=RunawaySettings(enabled=False))
    settings = _SECTION.parse(raw, "limits", problems)
    if problems:
        raise ConfigError(config.source, problems)
    assert isinstance(settings, LimitsSettings)
    return settings


def limits_of(policy: Any) -> LimitSet:
    """A key's :class:`~clasp_gateway.KeyPolicy` as a :class:`LimitSet`."""
    return LimitSet(rpm=policy.rpm, tpm=policy.tpm, rpd=policy.rpd, tpd=policy.tpd,
                    max_concurrency=policy.max_concurrency)
