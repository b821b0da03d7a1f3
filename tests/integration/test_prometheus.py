"""Every dashboard query and every alert rule, evaluated by a real Prometheus against a real scorer.

``test_every_query_has_data`` starts ``streamscore run`` on the local stack (its own topics),
feeds it a simulated shop with a drift (a tripled dropout hazard from mid-period) and a few
malformed records, and starts Debian's Prometheus on loopback scraping it every second with
``deploy/prometheus/alerts.yml`` loaded. Once the scorer has committed its input and refreshed
its model-health metrics, it

- evaluates every ``expr`` of ``deploy/grafana/dashboards/streamscore.json`` through
  ``/api/v1/query_range`` over the scorer's life (what a panel shows), with Grafana's
  variables substituted (``$__rate_interval`` → 30s, ``$__range`` → the evaluated span,
  template variables → their "All" value), and the template variables' own queries;
- reads the rules Prometheus loaded from ``/api/v1/rules`` (no YAML parser needed): every
  rule must have been evaluated without error, and every alert's expression must return data
  once its comparisons are made ``bool`` (``x > 0.05`` → ``x > bool 0.05``). A healthy alert
  expression is legitimately empty, because comparisons filter; with ``bool`` it returns 0/1
  for every series it compares, so it is empty only when a signal it depends on is missing
  (a misspelt metric, a label that does not exist). alerts.yml keeps every rule of the form
  ``<signal> <comparison> <threshold>`` (optionally ``and`` another such term) for this;

and fails listing every expression that errors or returns no data (NaN alone counts as none).
``promtool check rules`` and ``promtool check config`` (the compose config and the generated
one) run first. ``test_dashboard_is_consistent`` checks, without servers, that the dashboard
and the rules use only metrics declared in ``streamscore.metrics`` and the dashboard's
``datasource`` variable (so it imports into any Grafana).

Skips without /usr/bin/prometheus, but fails under ``scripts/test`` (``STREAMSCORE_STACK=1``),
which installs it.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import free_port, produce
from streamscore import metrics
from streamscore.core.drift import PopulationDrift
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event
from tests.required import skip_or_fail

from .conftest import SHARED
from .helpers import env_for, start_scorer, stop, tail, wait_for, wait_until_committed

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
COMPOSE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "streamscore.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")

RATE_INTERVAL = "30s"
WARMUP = PopulationDrift().warmup_labels  # churn labels before population drift is measured
# Enough for labels to resolve (rolling AUC, calibration), for the drift monitor to warm up
# and fill its PSI windows, and for the drift to be detected; a few malformed records make
# the dead-letter series exist.
SIMULATION = SimulationConfig(users=2000, days=70.0, seed=7, drift_day=35.0, bad_fraction=0.001)


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def prometheus_bin() -> None:
    """Require Debian's prometheus: fail under scripts/test, skip in a bare pytest run."""
    missing = [str(p) for p in (PROMETHEUS, PROMTOOL) if not p.exists()]
    if not missing:
        return
    skip_or_fail(
        f"{', '.join(missing)} missing; install it with scripts/stack up --with-prometheus"
    )


def promtool(*args: str) -> str:
    """Run promtool; fail with its output unless it succeeds."""
    done = subprocess.run(
        [str(PROMTOOL), *args], capture_output=True, text=True, timeout=60, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def dashboard() -> dict[str, Any]:
    """The dashboard JSON."""
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def targets(node: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every query target in the dashboard, rows included."""
    if isinstance(node, dict):
        for target in node.get("targets", []):
            yield str(node.get("title", "?")), target
        for key, value in node.items():
            if key != "targets":
                yield from targets(value)
    elif isinstance(node, list):
        for item in node:
            yield from targets(item)


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace Grafana's ``$name`` and ``${name}`` variables; fail on unknown ones."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in variables, f"unknown Grafana variable ${name} in {expr!r}"
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)


def query_variables(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's query variables (not the datasource picker)."""
    found = dash.get("templating", {}).get("list", [])
    return [v for v in found if v.get("type") != "datasource"]


def template_variables(dash: dict[str, Any]) -> dict[str, str]:
    """The dashboard's own variables at their "All" value."""
    out: dict[str, str] = {}
    for var in query_variables(dash):
        assert var.get("includeAll") and var.get("allValue"), (
            f"variable {var.get('name')} needs includeAll and an allValue"
        )
        out[str(var["name"])] = str(var["allValue"])
    return out


def variable_queries(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(name, PromQL selector) of every ``label_values(selector, label)`` variable."""
    for var in query_variables(dash):
        query = var.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", str(text))
        assert m, f"variable {var.get('name')}: expected label_values(selector, label)"
        yield str(var["name"]), m.group(1)


_COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")


def with_bool(expr: str) -> str:
    """``expr`` with ``bool`` after every comparison outside label matchers and strings.

    ``a > 0.05`` keeps only the series above 0.05; ``a > bool 0.05`` returns every series of
    ``a`` with 0 or 1, so the result is empty only when ``a`` itself is.
    """
    out: list[str] = []
    i, braces, quote = 0, 0, ""
    while i < len(expr):
        c = expr[i]
        if quote:
            out.append(c)
            if c == "\\":
                out.append(expr[i + 1])
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
            out.append(c)
        elif c == "{":
            braces += 1
            out.append(c)
        elif c == "}":
            braces -= 1
            out.append(c)
        elif braces == 0 and (op := next((o for o in _COMPARISONS if expr.startswith(o, i)), "")):
            out.append(op)
            i += len(op)
            if not expr[i:].lstrip().startswith("bool"):
                out.append(" bool")
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


class PromAPI:
    """The few calls of Prometheus's HTTP API this test needs."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422: a bad query, the body says why
            body = json.loads(exc.read())
        if body.get("status") != "success":
            raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        data = self.get(
            "/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step="1s"
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/api/v1/query", query=expr)["result"]
        return result


def has_data(result: list[dict[str, Any]]) -> bool:
    """Some series has some value that is a number."""
    return any(
        not math.isnan(float(value))
        for series in result
        for _, value in series.get("values", [series.get("value", (0, "NaN"))])
    )


def declared_metric_names() -> set[str]:
    """Every series name ``streamscore.metrics`` can export (with _total/_bucket/... suffixes)."""
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",),
        }[family.type]
        names.update(family.name + s for s in suffixes)
    return names


def simulated_records() -> list[tuple[bytes | None, bytes]]:
    """The simulated shop as (key, value) records; malformed ones carry no key."""
    out: list[tuple[bytes | None, bytes]] = []
    for e in ShopSimulator(SIMULATION).events():
        key = str(e["user_id"]).encode() if isinstance(e, dict) else None
        out.append((key, encode_event(e)))
    return out


# -- tests ------------------------------------------------------------------------------------


def test_dashboard_is_consistent() -> None:
    """Static checks: declared metrics only, the datasource variable, unique panel ids."""
    dash = dashboard()
    assert dash["uid"] == "streamscore"
    ds_uid = re.search(r"^\s*uid:\s*(\S+)\s*$", DATASOURCES.read_text(), re.MULTILINE)
    assert ds_uid, f"no datasource uid in {DATASOURCES}"
    declared = declared_metric_names()
    ids: list[int] = []
    queries = 0

    def walk(node: Any) -> None:
        nonlocal queries
        if isinstance(node, dict):
            ds = node.get("datasource")
            if isinstance(ds, dict) and ds.get("type") == "prometheus":
                assert ds.get("uid") == "${datasource}", f"datasource {ds} in {node.get('title')}"
            if node.get("type") and "gridPos" in node:
                ids.append(int(node["id"]))
            if "expr" in node:
                queries += 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dash)
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert queries >= 30
    text = DASHBOARD.read_text() + ALERTS.read_text()
    used = set(re.findall(r"\bstreamscore_[a-z0-9_]+", text))
    assert used - declared == set(), f"not declared in streamscore.metrics: {used - declared}"
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert rows == [
        "Throughput & lag",
        "Latency",
        "Quality",
        "Drift",
        "Segments & alerts",
        "Model lineage",
    ]


def test_with_bool() -> None:
    """The comparison rewrite leaves label matchers and strings alone."""
    assert (
        with_bool('sum(rate(x{a!="b", c=~"d>e"}[5m])) > 0.05 and on (i) up{job="s"} == 1')
        == 'sum(rate(x{a!="b", c=~"d>e"}[5m])) > bool 0.05 and on (i) up{job="s"} == bool 1'
    )
    assert with_bool("a >= bool 1") == "a >= bool 1"
    assert with_bool("a < 0.7") == "a < bool 0.7"


def test_every_query_has_data(prometheus_bin: None, names: dict[str, str], tmp_path: Path) -> None:
    """A real scorer and Prometheus; every dashboard query and alert rule returns data."""
    started = time.monotonic()
    promtool("check", "rules", str(ALERTS))
    promtool("check", "config", str(COMPOSE_CONFIG))

    metrics_port, prom_port = free_port(), free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": "streamscore",
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
            }
        ],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    promtool("check", "config", str(config_path))

    records = simulated_records()
    scorer_log, prom_log = tmp_path / "scorer.log", tmp_path / "prometheus.log"
    with prom_log.open("wb") as log:
        prom = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=log,
            stderr=log,
        )
    scorer: subprocess.Popen[bytes] | None = None
    api = PromAPI(prom_port)
    try:
        wait_for("Prometheus ready", api.ready, 30, {prom_log: prom}, interval_s=0.25)
        # Versions published and followed every second: the stream is read in well under a
        # minute, where the defaults (15 s, 10 s) would score most of it with one version.
        env = env_for(
            names,
            metrics_port=metrics_port,
            metrics_host="127.0.0.1",
            checkpoint_interval_seconds=1,
            model_staleness_seconds=1,
        )
        scorer = start_scorer(env, scorer_log)
        t_start, t0 = time.time(), time.monotonic()
        wait_for(
            "the first scrape of the scorer",
            lambda: bool(api.query('up{job="streamscore"} == 1')),
            30,
            {prom_log: prom, scorer_log: scorer},
            interval_s=0.25,
        )
        # A live stream's shape: the second half arrives once the lineage has learnt past the
        # drift monitor's warm-up, so that it is scored with such a version (PSI panels).
        half = len(records) * 3 // 5
        produce(SHARED, names["input_topic"], records[:half])
        wait_for(
            "the trainer to learn past the drift warm-up",
            lambda: bool(
                api.query(f'sum(streamscore_labels_learnt_total{{model="churn"}}) > {WARMUP}')
            ),
            120,
            {prom_log: prom, scorer_log: scorer},
            interval_s=0.5,
        )
        produce(SHARED, names["input_topic"], records[half:])
        t_produced = time.monotonic()
        wait_until_committed(
            names["kafka_group_id"], names["input_topic"], {scorer_log: scorer}, 120
        )
        t_committed = time.monotonic()

        def evaluate(t_end: float) -> tuple[list[str], int]:
            """Every dashboard query, variable and rule over the scorer's life so far."""
            variables = {
                "__rate_interval": RATE_INTERVAL,
                "__interval": "1s",
                "__range": f"{math.ceil(t_end - t_start)}s",
                **template_variables(dashboard()),
            }
            failures: list[str] = []
            checked = 0

            def check(label: str, expr: str) -> None:
                nonlocal checked
                checked += 1
                try:
                    result = api.query_range(expr, t_start, t_end)
                except ValueError as exc:
                    failures.append(f"{label}: ERROR {exc}\n    {expr}")
                    return
                if not has_data(result):
                    failures.append(f"{label}: NO DATA\n    {expr}")

            dash = dashboard()
            for title, target in targets(dash):
                check(
                    f"panel {title!r} {target.get('refId')}", substitute(target["expr"], variables)
                )
            for name, selector in variable_queries(dash):
                check(f"variable ${name}", selector)

            groups = api.get("/api/v1/rules")["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            assert rules, "Prometheus loaded no rules from alerts.yml"
            for rule in rules:
                label = f"{rule['type']} rule {rule.get('name')!r}"
                if rule.get("health") != "ok":
                    failures.append(
                        f"{label}: health {rule.get('health')}: {rule.get('lastError')}"
                    )
                if rule["type"] == "alerting":
                    try:  # as written: may be empty when healthy, must not error
                        api.query_range(rule["query"], t_start, t_end)
                    except ValueError as exc:
                        failures.append(f"{label}: ERROR {exc}\n    {rule['query']}")
                    check(f"{label} (bool)", with_bool(rule["query"]))
                else:
                    check(label, rule["query"])
            return failures, checked

        # The scorer refreshes quality, drift and lag metrics every 5 s (ScorerWatch), then
        # Prometheus scrapes and evaluates its rules: poll until every expression has data.
        deadline = time.monotonic() + 60
        while True:
            t_end = time.time()
            failures, checked = evaluate(t_end)
            if not failures or time.monotonic() > deadline:
                break
            assert scorer.poll() is None, tail(scorer_log)
            time.sleep(1)

        detections = [
            (d["metric"]["signal"], d["value"][1])
            for d in api.query("streamscore_drift_detections_total > 0")
        ]
        alerts = sorted(
            {f"{a['metric']['alertname']}:{a['metric']['alertstate']}" for a in api.query("ALERTS")}
        )
        print(
            f"\n{checked} expressions over {t_end - t_start:.0f}s of scrapes; "
            f"{len(records)} records produced {t_produced - t0:.1f}s after the scorer's start, "
            f"all committed after {t_committed - t0:.1f}s; whole test so far "
            f"{time.monotonic() - started:.1f}s; drift detections {detections}; alerts {alerts}"
        )
        assert not failures, (
            f"{len(failures)} of {checked} expressions failed:\n"
            + "\n".join(failures)
            + f"\n--- scorer log\n{tail(scorer_log)}\n--- prometheus log\n{tail(prom_log)}"
        )
    finally:
        code = stop(scorer) if scorer is not None and scorer.poll() is None else None
        if prom.poll() is None:
            prom.send_signal(signal.SIGTERM)
            try:
                prom.wait(timeout=20)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait()
    assert code == 0, f"the scorer did not stop cleanly on SIGTERM:\n{tail(scorer_log)}"
