"""The ``analytics:`` section of clasp.yaml.

Every key has a finite default, so a team that only installs the plugin gets metrics
behind the admin key, the dashboard, quality signals and feedback without writing a
line. Declared with the core's schema helpers, so a typo is an error with a "did you
mean" in ``clasp check`` and before ``clasp serve`` binds.
"""

from __future__ import annotations

from dataclasses import dataclass

from clasp_gateway import (
    Boolean,
    Choice,
    Config,
    ConfigError,
    Duration,
    Field,
    Integer,
    Reference,
    Secret,
    Section,
    resolve_secret,
)

SECTION = "analytics"


@dataclass(slots=True, frozen=True)
class MetricsSettings:
    """``analytics.metrics``: the Prometheus endpoint."""

    enabled: bool = True
    auth: str = "admin"
    """``admin``: an admin key (``x-api-key`` or ``authorization: Bearer``); ``token``:
    the bearer ``token`` below (a scraper's own secret, not a gateway key); ``none``:
    open (only behind a network that limits who reaches it)."""
    token: str | None = None
    """The scrape token's reference (``${CLASP_METRICS_TOKEN}``), for ``auth: token``."""
    team_label: bool = True
    """``team`` on request, token and cost series (teams are few and configured)."""
    key_label: bool = False
    """``key`` (the key's name, never the key) on request series: one series per key, so off by default."""
    max_label_values: int = 200
    """Distinct values one label may take in one process; later ones are reported as
    ``other``, so a client sending random model names cannot grow the series without bound."""


@dataclass(slots=True, frozen=True)
class QualitySettings:
    """``analytics.quality``: signals read from what the gateway sees."""

    enabled: bool = True
    retry_window: float = 300.0
    """The same conversation sent again within this many seconds counts as a retry of
    the first (a user who regenerates an answer they did not like); 0 turns it off."""
    inspect_streams: bool = True
    """Read answers (streamed or whole) for truncation and tool calls whose arguments are
    not JSON (about a microsecond per chunk)."""


@dataclass(slots=True, frozen=True)
class FeedbackSettings:
    """``analytics.feedback``: ``POST /v1/feedback``."""

    enabled: bool = True
    max_comment_chars: int = 4000
    max_metrics: int = 32
    """Named custom metrics per feedback (``tests_passed``, ``pr_merged``...)."""
    max_age: float = 30 * 86400.0
    """Feedback on a request older than this is refused (a typo'd id is more likely)."""


@dataclass(slots=True, frozen=True)
class ExportSettings:
    """``analytics.export``: CSV, JSON lines and Parquet over the admin API and ``clasp export``."""

    batch_rows: int = 2000
    """Rows read from the database per round trip while streaming an export."""
    max_rows: int = 5_000_000
    """An export stops after this many rows (and says so in its last line or trailer)."""


@dataclass(slots=True, frozen=True)
class DashboardSettings:
    """``analytics.dashboard``: the admin page."""

    enabled: bool = True
    max_range_days: int = 400
    """The widest time range one dashboard or report query may cover."""


@dataclass(slots=True, frozen=True)
class AnalyticsSettings:
    """The whole ``analytics:`` section."""

    metrics: MetricsSettings = MetricsSettings()
    quality: QualitySettings = QualitySettings()
    feedback: FeedbackSettings = FeedbackSettings()
    export: ExportSettings = ExportSettings()
    dashboard: DashboardSettings = DashboardSettings()


SCHEMA = Section({
    "metrics": Field(Section({
        "enabled": Field(Boolean(), True),
        "auth": Field(Choice("admin", "token", "none"), "admin"),
        "token": Field(Reference()),
        "team_label": Field(Boolean(), True),
        "key_label": Field(Boolean(), False),
        "max_label_values": Field(Integer(minimum=1, maximum=100_000), 200),
    }, into=MetricsSettings)),
    "quality": Field(Section({
        "enabled": Field(Boolean(), True),
        "retry_window": Field(Duration(minimum=0), 300.0),
        "inspect_streams": Field(Boolean(), True),
    }, into=QualitySettings)),
    "feedback": Field(Section({
        "enabled": Field(Boolean(), True),
        "max_comment_chars": Field(Integer(minimum=0, maximum=100_000), 4000),
        "max_metrics": Field(Integer(minimum=0, maximum=1000), 32),
        "max_age": Field(Duration(minimum=1), 30 * 86400.0),
    }, into=FeedbackSettings)),
    "export": Field(Section({
        "batch_rows": Field(Integer(minimum=1, maximum=100_000), 2000),
        "max_rows": Field(Integer(minimum=1), 5_000_000),
    }, into=ExportSettings)),
    "dashboard": Field(Section({
        "enabled": Field(Boolean(), True),
        "max_range_days": Field(Integer(minimum=1, maximum=3660), 400),
    }, into=DashboardSettings)),
}, into=AnalyticsSettings)


def parse_settings(config: Config) -> AnalyticsSettings:
    """The section with defaults filled in; every problem at once as a ConfigError."""
    problems: list[str] = []
    settings = SCHEMA.parse(config.raw.get(SECTION), SECTION, problems)
    if not problems:
        metrics = settings.metrics
        if metrics.auth == "token" and not metrics.token:
            problems.append(f"{SECTION}.metrics.token: required with auth: token (a reference such as "
                            "${CLASP_METRICS_TOKEN})")
    if problems:
        raise ConfigError(config.source, problems)
    return settings  # type: ignore[no-any-return]


def metrics_token(settings: MetricsSettings) -> Secret | None:
    """The resolved scrape token (registered as a secret, so logs never show it)."""
    return resolve_secret(settings.token) if settings.token else None
