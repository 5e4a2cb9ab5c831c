"""The shipped Prometheus rules and Grafana dashboard (deploy/): the rules pass `promtool check
rules` and their unit tests (`promtool test rules`), every dashboard query is valid PromQL, and
every metric and label either names is one the filter defines — read from the filter's source
(src/engine/metrics.rs, src/s3/bucket.rs), so renaming a metric there fails this test until the rules and
the dashboard follow."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "origin-pull-rules.yml"
RULE_TESTS = sorted((REPO / "deploy" / "prometheus" / "tests").glob("*.yml"))
DASHBOARD = REPO / "deploy" / "grafana" / "origin-pull-dashboard.json"
# Envoy's own series the files may use (the listener's request counter), with their labels.
ENVOY_METRICS = {"envoy_http_downstream_rq_total"}
ENVOY_LABELS = {"envoy_http_conn_manager_prefix"}
# Labels Prometheus adds to every scraped series.
SCRAPE_LABELS = {"instance", "job"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}


def promtool():
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool is missing: Debian package `prometheus` (.ci/run installs it)")
    return path


def defined_metrics(src=REPO / "src"):
    """Metric names the filter defines, and the label names its stats_tags extract: the string
    literals of src/engine/metrics.rs (outside its tests) and of BucketEvent::metric_name."""
    metrics_rs = (Path(src) / "engine" / "metrics.rs").read_text().split("#[cfg(test)]")[0]
    bucket_rs = (Path(src) / "s3" / "bucket.rs").read_text()
    bucket_fn = bucket_rs[bucket_rs.index("fn metric_name"):]
    bucket_fn = bucket_fn[:bucket_fn.index("\n    }\n")]
    names = set(re.findall(r'"(origin_pull_[a-z0-9_]+)"', metrics_rs))
    names |= set(re.findall(r'"(origin_pull_[a-z0-9_]+)"', bucket_fn))
    tags = re.search(r"pub const TAGS: \[&str; \d+\] = \[([^\]]*)\]", metrics_rs)
    labels = set(re.findall(r'"([a-z_]+)"', tags.group(1)))
    return names, labels


def rule_exprs():
    doc = yaml.safe_load(RULES.read_text())
    return {r.get("alert") or r["record"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def dashboard_exprs():
    """{panel title / refId: PromQL} of every target, plus the template variables' queries,
    with Grafana's variables replaced by values PromQL accepts."""
    dash = json.loads(DASHBOARD.read_text())
    out = {}
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out[f"{p['title']} / {t['refId']}"] = t["expr"]
    for v in dash["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict):
            m = re.fullmatch(r"label_values\((\w+), *(\w+)\)", q["query"])
            assert m, f"variable {v['name']}: unexpected query {q['query']}"
            out[f"variable {v['name']}"] = f'group by ({m.group(2)}) ({m.group(1)})'
    return {k: e.replace("$__rate_interval", "5m").replace("$domain", ".*")
            for k, e in out.items()}


def problems(exprs, names, labels):
    """Metric or label names of `exprs` the filter (or Envoy) does not define."""
    known_labels = labels | SCRAPE_LABELS | ENVOY_LABELS
    out = []
    for where, expr in exprs.items():
        text = re.sub(r'"[^"]*"', '""', expr)  # label values and strings are not names
        for metric in re.findall(r"\b((?:origin_pull|envoy)_[a-z0-9_]+)\b(?!\s*(?:=~|!~|!=|=))",
                                 text):
            if metric not in names and metric not in ENVOY_METRICS:
                out.append(f"{where}: metric {metric} is not defined by the filter")
        used = set(re.findall(r"\b([a-z_]+)\s*(?:=~|!~|!=|=)\s*\"\"", text))
        for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
            used |= {l.strip() for l in group.split(",") if l.strip()}
        for label in sorted(used - known_labels - PROMQL_WORDS):
            out.append(f"{where}: label {label} is not one the filter's stats carry")
    return out


def test_rules_pass_promtool_check():
    p = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS: 5 rules found" in p.stdout


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda p: p.name)
def test_rules_unit_tests(test_file):
    p = subprocess.run([promtool(), "test", "rules", str(test_file)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout


def test_every_alert_has_a_unit_test():
    tested = set()
    for f in RULE_TESTS:
        for t in yaml.safe_load(f.read_text())["tests"]:
            for a in t.get("alert_rule_test", []):
                if a.get("exp_alerts"):
                    tested.add(a["alertname"])
    assert tested == set(rule_exprs()), "alerts never shown firing in deploy/prometheus/tests"


def test_dashboard_queries_are_valid_promql(tmp_path):
    # promtool checks PromQL syntax of rules: one recording rule per dashboard query.
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    doc = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs.values())]}]}
    f = tmp_path / "dashboard-queries.yml"
    f.write_text(yaml.safe_dump(doc))
    p = subprocess.run([promtool(), "check", "rules", str(f)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_rules_and_dashboard_name_only_what_the_filter_defines():
    names, labels = defined_metrics()
    assert "origin_pull_origin_blocked" in names and "origin_pull_failovers_total" in names
    assert labels == {"domain", "origin", "kind", "source", "result", "outcome"}
    assert problems({**rule_exprs(), **dashboard_exprs()}, names, labels) == []


def test_dashboard_shows_every_metric_the_filter_defines():
    names, _ = defined_metrics()
    used = " ".join(dashboard_exprs().values())
    assert sorted(n for n in names if not re.search(rf"\b{n}\b", used)) == []


def test_a_renamed_metric_is_caught(tmp_path):
    # The check must fail when the filter renames a metric the dashboard and rules use.
    src = tmp_path / "src"
    (src / "s3").mkdir(parents=True)
    (src / "engine").mkdir()
    shutil.copy(REPO / "src" / "s3" / "bucket.rs", src / "s3" / "bucket.rs")
    text = (REPO / "src" / "engine" / "metrics.rs").read_text()
    assert '"origin_pull_masters_available"' in text
    (src / "engine" / "metrics.rs").write_text(text.replace('"origin_pull_masters_available"',
                                                 '"origin_pull_domain_masters_up"'))
    names, labels = defined_metrics(src)
    found = problems({**rule_exprs(), **dashboard_exprs()}, names, labels)
    assert any("OriginPullAllMastersBlocked: metric origin_pull_masters_available" in f
               for f in found), found
    assert any("Masters available / A: metric origin_pull_masters_available" in f
               for f in found), found
    # A label the stats do not carry is caught too.
    bad = problems({"x": 'sum by (role) (origin_pull_failovers_total{zone="a"})'}, names, labels)
    assert bad == ["x: label role is not one the filter's stats carry",
                   "x: label zone is not one the filter's stats carry"]
