"""deploy/'s Prometheus rules and Grafana dashboards ask only for what the gateway exposes.

Every expression is parsed by a real PromQL parser (``promql-parser``, the Rust parser
GreptimeDB uses, compatible with Prometheus 2.45); every metric it selects must be a
series the gateway's ``/metrics`` really serves (read from a running gateway with the
analytics, fallback and ledger plugins on Redis and SQLite), and every label it matches
on must be one of that series' labels. A renamed metric or label fails here instead of
leaving an alert that can never fire.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from clasp_analytics.metrics import GatewayMetrics
from clasp_analytics.settings import MetricsSettings
from prometheus_client.parser import text_string_to_metric_families

from clasp_gateway import Principal, hookimpl
from clasp_gateway.testing import FakeUpstream, GatewayServer, Text, config_from, openai_models

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "clasp.rules.yml"
DASHBOARDS = sorted((DEPLOY / "grafana").glob("*.json"))
ADMIN_KEY = "deploy-observability-admin-key-0123456789"

PROMETHEUS_LABELS = {"job", "instance"}
"""Labels Prometheus adds to every scraped series."""
BUILTIN_SERIES: dict[str, set[str]] = {"up": set()}
"""Series Prometheus itself writes for each target."""
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h", "$job": "clasp-gateway",
                     "$model": "gpt-4o", "$team": "platform"}


class AdminKey:
    """An admin principal for the scrape (``analytics.metrics.auth: admin``)."""

    @hookimpl(tryfirst=True)
    def authenticate(self, api_key: str | None, headers: dict[str, str], config: Any) -> Any:
        if api_key == ADMIN_KEY:
            return Principal(key_id="ops", name="ops", team="ops", role="admin")
        return None


def _families(text: str) -> dict[str, tuple[str, set[str]]]:
    """family name -> (type, label names seen on its samples)."""
    found: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels)
        known = found.get(family.name)
        found[family.name] = (family.type, labels | (known[1] if known else set()))
    return found


def _series(families: dict[str, tuple[str, set[str]]]) -> dict[str, set[str]]:
    """The series names a query may select (``_total``, ``_bucket``...) and their labels."""
    series: dict[str, set[str]] = {}
    for name, (kind, labels) in families.items():
        if kind == "counter":
            series[name + "_total"] = labels
        elif kind == "histogram":
            series[name + "_bucket"] = labels | {"le"}
            series[name + "_sum"] = labels - {"le"}
            series[name + "_count"] = labels - {"le"}
        else:
            series[name] = labels
    return series


def _every_series_fed() -> dict[str, tuple[str, set[str]]]:
    """The request-path series with a child each (a labelled series with no sample
    shows no labels in a scrape): one of every event the analytics plugin counts."""
    metrics = GatewayMetrics(MetricsSettings(team_label=True))
    event = {"kind": "request", "status": 402, "public_model": "m", "deployment": "d", "provider": "p",
             "request_class": "coding", "team": "t", "latency_ms": 900.0, "ttfb_ms": 100.0,
             "usage": {"input_tokens": 10, "output_tokens": 20, "cache_read_input_tokens": 1,
                       "cache_creation_input_tokens": 1, "reasoning_tokens": 1},
             "cost_usd": None, "cache_hit": "exact", "saved_usd": 0.5, "cut": True,
             "error": "BudgetExhaustedError: budget 'x' is exhausted",
             "attempts": [{"deployment": "a"}, {"deployment": "a"}, {"deployment": "b"}]}
    metrics.observe_request(event, None)
    metrics.observe_request({**event, "cost_usd": 0.25}, None)
    metrics.observe_attempt({"kind": "attempt", "deployment": "d", "provider": "p", "ok": False, "upstream_status": 500})
    metrics.observe_signals("m", "coding", ["truncated"])
    metrics.feedback.labels("m").inc()
    metrics.sync_hook_failures({"record": 1})
    return _families(metrics.exposition([]).decode())


@pytest.fixture(scope="module")
def exposed(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, set[str]]]:
    """Series name -> labels, from a real gateway's /metrics and every event fed once."""
    db = tmp_path_factory.mktemp("observability") / "clasp.db"
    with pytest.MonkeyPatch.context() as patch, FakeUpstream("openai") as upstream, \
            redis_server.namespace() as ns:
        patch.setenv("CLASP_LOAD_PLUGINS", "analytics,fallback,claude,budgets_ledger,budgets_budgets")
        gw = GatewayServer(config_from({
            "models": openai_models(upstream.base_url),
            "state": {"backend": "redis", "url": ns.url, "prefix": ns.prefix},
            "storage": {"url": f"sqlite:///{db}"},
        }), plugins=[AdminKey()]).start()
        try:
            upstream.queue(Text("hello", usage=(5, 2)))
            answer = httpx.post(gw.base_url + "/v1/chat/completions", headers=gw.headers, timeout=30,
                                json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
            assert answer.status_code == 200, answer.text
            scrape = httpx.get(gw.base_url + "/metrics", headers={"x-api-key": ADMIN_KEY}, timeout=30)
            assert scrape.status_code == 200, scrape.text
            live = _families(scrape.text)
        finally:
            gw.stop()
    fed = _every_series_fed()
    missing = set(fed) - set(live)
    assert not missing, f"families the analytics plugin defines but the gateway's /metrics does not show: {missing}"
    for needed in ("clasp_state_up", "clasp_database_up", "clasp_ledger_spool_bytes", "clasp_circuit_breaker_state"):
        assert needed in live, f"{needed} is not in the scrape"
    merged = {name: (kind, labels | (fed[name][1] if name in fed else set())) for name, (kind, labels) in live.items()}
    series = {name: labels | PROMETHEUS_LABELS for name, labels in _series(merged).items()}
    for name, labels in BUILTIN_SERIES.items():
        series[name] = labels | PROMETHEUS_LABELS
    yield series


# --- the expressions ------------------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _recorded() -> set[str]:
    return {rule["record"] for rule in _rules() if "record" in rule}


def _dashboard_queries() -> list[tuple[str, str]]:
    """(where, expression) for every panel target and query variable of every dashboard."""
    found: list[tuple[str, str]] = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.name}: {panel['title']}", target["expr"]))
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                query = variable["query"]["query"]
                match = re.fullmatch(r"label_values\((.*), (\w+)\)", query)
                assert match, f"{path.name}: variable {variable['name']}: {query}"
                found.append((f"{path.name}: variable {variable['name']}", match.group(1)))
    return found


def _selectors(expression: str) -> list[tuple[str, list[str]]]:
    """(metric name, label names matched) for every vector selector in ``expression``."""
    for variable, value in GRAFANA_VARIABLES.items():
        expression = expression.replace(variable, value)
    tree = promql_parser.parse(expression)
    found: list[tuple[str, list[str]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = [m.name for m in node.matchers.matchers if m.name != "__name__"]
            found.append((node.name or "", matchers))

    promql_parser.walk(tree, visit)
    return found


def _check(where: str, expression: str, exposed: dict[str, set[str]], recorded: set[str]) -> list[str]:
    problems: list[str] = []
    try:
        selectors = _selectors(expression)
    except Exception as exc:  # the parser's own message
        return [f"{where}: does not parse: {exc}"]
    if not selectors:
        problems.append(f"{where}: selects no series")
    for name, labels in selectors:
        if name in recorded:
            continue
        if name not in exposed:
            problems.append(f"{where}: {name} is not a series the gateway exposes")
            continue
        for label in labels:
            if label not in exposed[name]:
                problems.append(f"{where}: {name} has no label {label!r} (it has {sorted(exposed[name])})")
    return problems


def test_every_rule_expression_parses_and_selects_real_series(exposed: dict[str, set[str]]) -> None:
    recorded = _recorded()
    problems: list[str] = []
    for rule in _rules():
        problems += _check(rule.get("alert") or rule["record"], rule["expr"], exposed, recorded)
    assert not problems, "\n".join(problems)


def test_every_dashboard_query_parses_and_selects_real_series(exposed: dict[str, set[str]]) -> None:
    problems: list[str] = []
    for where, expression in _dashboard_queries():
        problems += _check(where, expression, exposed, set())
    assert not problems, "\n".join(problems)


def test_the_alerts_cover_what_an_operator_must_hear_about() -> None:
    """Availability, first-token latency, errors, budgets, Redis, the database and the ledger."""
    alerts = {rule["alert"]: rule for rule in _rules() if "alert" in rule}
    for needed in ("ClaspErrorBudgetFastBurn", "ClaspErrorBudgetSlowBurn", "ClaspHighErrorRate",
                   "ClaspTimeToFirstTokenSlow", "ClaspBudgetExhausted", "ClaspSharedStateDown", "ClaspDatabaseDown",
                   "ClaspLedgerSpoolGrowing", "ClaspLedgerRowsLost", "ClaspReplicaDown", "ClaspCircuitOpen"):
        assert needed in alerts, needed
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("page", "ticket", "warning", "info"), name
        assert rule["annotations"]["summary"], name
        if "for" in rule:
            promql_parser.parse_duration(rule["for"])


def test_rule_groups_are_well_formed() -> None:
    data = yaml.safe_load(RULES.read_text())
    assert set(data) == {"groups"}
    names = [group["name"] for group in data["groups"]]
    assert len(names) == len(set(names))
    recorded: list[str] = []
    for group in data["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group["name"]
        for rule in group["rules"]:
            kind = "alert" if "alert" in rule else "record"
            allowed = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"} if kind == "alert" \
                else {"record", "expr", "labels"}
            assert set(rule) <= allowed, rule
            if kind == "record":
                assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["record"]), rule["record"]
                recorded.append(rule["record"])
    assert len(recorded) == len(set(recorded))


def test_the_operator_rule_is_the_same_rules_file() -> None:
    """deploy/k8s/prometheusrule.yaml wraps exactly deploy/prometheus/clasp.rules.yml."""
    wrapped = yaml.safe_load((DEPLOY / "k8s" / "prometheusrule.yaml").read_text())
    assert wrapped["kind"] == "PrometheusRule"
    assert wrapped["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_dashboards_are_importable_grafana_json(path: Path) -> None:
    board = json.loads(path.read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert "datasource" in variables
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval", "__interval", "__range"}
            assert used <= variables, f"{panel['title']}: undefined variables {used - variables}"
