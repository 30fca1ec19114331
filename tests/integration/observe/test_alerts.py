"""The alerting rules and the Grafana dashboard that ship in deploy/: the rules pass
``promtool check rules`` and their unit tests on synthetic series (``promtool test rules``),
and every metric the rules and the dashboard query is one a real ``corral start`` exports
(scraped from its ``/metrics``, which has the gateway's, the engines' and the
autoscaler's metrics in one)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.servers import Server

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
RULES = DEPLOY / "prometheus" / "corral-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "corral-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "corral-dashboard.json"
_METRIC = re.compile(r"\bcorral_[a-z_]+\b")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: scripts/install-system-deps.sh installs Debian's prometheus package"
    return path


def test_the_rules_pass_promtool_check() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "SUCCESS: 10 rules found" in result.stdout, result.stdout + result.stderr


def test_every_alert_fires_on_its_synthetic_series() -> None:
    result = subprocess.run([promtool(), "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    alerts = set(re.findall(r"- alert: (\w+)", RULES.read_text()))
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert alerts == tested and len(alerts) == 10  # none left without a test


def exported_names(text: str) -> set[str]:
    """The sample names a scrape can hold, from each family's type (a family is listed,
    with its type, even before it has a sample)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def queried_names() -> dict[str, set[str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return {"dashboard": set(_METRIC.findall(" ".join(exprs))), "rules": set(_METRIC.findall(RULES.read_text()))}


def test_the_dashboard_and_the_rules_query_only_metrics_corral_exports(demo_server: Server) -> None:
    url = demo_server.url
    # a little traffic, so that every labelled family has its children
    httpx.post(f"{url}/v1/chat/completions", json={"model": "demo-chat", "max_tokens": 3, "stream": True,
               "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
    scrape = httpx.get(f"{url}/metrics", timeout=30)
    assert scrape.status_code == 200
    exported = exported_names(scrape.text)
    queried = queried_names()
    assert len(queried["dashboard"]) >= 20 and len(queried["rules"]) >= 9
    for source, names in queried.items():
        assert names <= exported, f"the {source} query metrics /metrics does not export: {sorted(names - exported)}"
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and all(p["datasource"]["uid"] == "${datasource}"
                                             for p in dashboard["panels"] if p["type"] != "row")
