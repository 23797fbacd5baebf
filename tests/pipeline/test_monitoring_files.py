"""deploy/prometheus/invad-rules.yaml and deploy/grafana/invad-dashboard.json: they parse, and every metric
and every grouping label they name is one the worker exports (a renamed metric must fail here, not
silently empty a panel or mute an alert)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import yaml

from worker.pipeline.metrics import WorkerMetrics

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "invad-rules.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "invad-dashboard.json"
# Added by Prometheus to every scraped series, or by histogram_quantile's input.
SCRAPE_LABELS = {"instance", "job", "namespace", "pod", "le"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "gauge": ("",), "info": ("_info",), "summary": ("", "_count", "_sum", "_created")}


def exported() -> dict[str, set[str]]:
    """Every sample name the worker can expose -> its label names (each hook called once so that
    labelled series exist)."""
    metrics = WorkerMetrics()
    metrics.batch_polled(1)
    metrics.scored("L", "p", flagged=True)
    metrics.dead_lettered("invalid_json", None, None)
    metrics.watch_lag(lambda: {("topic", 0): 1})
    metrics.watch_drift(lambda: [SimpleNamespace(line_id="L", product="p", drifting=True)])
    metrics.model.labels("*").info({"model_name": "m", "model_version": "1", "model_release": "r"})
    metrics.model_switched("p", "r")
    metrics.model_refused("p", "smoke_failed")
    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for suffix in SUFFIXES[family.type]:
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    names["invad_gpu_memory_bytes"] = {"device", "kind"}  # only on CUDA
    return names


def check_expr(expr: str, known: dict[str, set[str]], where: str) -> None:
    assert expr.count("(") == expr.count(")") and expr.count("[") == expr.count("]"), f"{where}: unbalanced: {expr}"
    used = set(re.findall(r"\binvad_[a-z0-9_]+", expr))
    assert used, f"{where}: names no invad metric"
    unknown = used - set(known)
    assert not unknown, f"{where}: {sorted(unknown)} are not exported by the worker"
    labels = set().union(*(known[name] for name in used)) | SCRAPE_LABELS
    for group in re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", expr):
        names = {name.strip() for name in group.split(",") if name.strip()}
        assert names <= labels, f"{where}: groups by {sorted(names - labels)}, which no metric it uses has"
    assert "{{" not in expr, f"{where}: a template in an expression (templates belong in annotations and legends)"


def test_alert_rules_parse_and_name_only_exported_metrics():
    known = exported()
    document = yaml.safe_load(RULES.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert all(group["name"] for group in document["groups"])
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert {"InvadConsumerLagGrowing", "InvadDeadLettersRising", "InvadNoProgress", "InvadFlagRateJump",
            "InvadDependencyDown", "InvadDrift"} <= set(names)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"[0-9]+[smh]", rule.get("for", "0s")), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        check_expr(rule["expr"], known, rule["alert"])


def test_dashboard_parses_and_names_only_exported_metrics():
    known = exported()
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    titles = " ".join(panel["title"].lower() for panel in panels)
    for topic in ("lag", "throughput", "dead letters", "latency p50", "latency p99", "flag rate", "dependency"):
        assert topic in titles
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]
        for target in panel["targets"]:
            check_expr(target["expr"], known, f"panel {panel['title']!r}")
