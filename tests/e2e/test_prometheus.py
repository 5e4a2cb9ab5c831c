"""A real Prometheus (Debian package `prometheus`) scrapes Envoy's admin /stats/prometheus while
traffic with a failover and a blocked origin goes through; PromQL answers must equal what was
sent (the labels come from the stats_tags render writes into the bootstrap)."""

import re
import time

from test_monitoring import defined_metrics

import toolbox
from toolbox import DOMAIN, Prometheus


def test_promql_answers_equal_the_traffic_sent(env, tmp_path):
    toolbox.start_origins(env)
    env.start(toolbox.config(env))
    with Prometheus(tmp_path / "prometheus", env.admin_port) as prom:
        expected = toolbox.drive(env)
        prom.wait_scraped_after(time.time())

        d = f'domain="{DOMAIN}"'
        by_origin = {m["origin"]: v for m, v in prom.query(
            f"sum by (origin) (origin_pull_origin_requests_total{{{d}}})")}
        assert by_origin == expected["requests"]

        failures = {(m["origin"], m["kind"]): v for m, v in prom.query(
            f"origin_pull_origin_failures_total{{{d}}} > 0")}
        assert failures == expected["failures"]

        # Failover ratio: requests failed over / client requests (the listener's HCM stats).
        ratio = prom.query(
            f'sum(origin_pull_failovers_total{{{d},outcome="served"}})'
            ' / sum(envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="origin_pull"})')
        assert len(ratio) == 1
        assert ratio[0][1] == expected["failovers_served"] / expected["client_requests"]
        failed = prom.query(f'sum(origin_pull_failovers_total{{{d},outcome="failed"}})')
        # A series exists once it has counted something: no failed failover, no series.
        assert failed == [] or failed[0][1] == 0

        blocked = {m["origin"] for m, _ in prom.query(
            f"origin_pull_origin_blocked{{{d}}} == 1")}
        assert blocked == expected["blocked"]
        # The block ends block_seconds after it began (the gauge is Unix seconds).
        until = prom.query(f"origin_pull_origin_blocked_until_seconds{{{d}}} > 0")
        assert [m["origin"] for m, _ in until] == [env.dead]
        assert time.time() + 100 < until[0][1] <= time.time() + 121
        # One of the two masters (m1) is not blocked.
        assert prom.query(f"origin_pull_masters_available{{{d}}}")[0][1] == 1


def test_the_documented_grep_returns_only_the_filters_own_series(env):
    # docs/observability.md and the demo: `curl -s …/stats/prometheus | grep '^origin_pull_'`. Envoy's own stats of the
    # origin_pull_* clusters also contain "origin_pull" (as a label value) but never match.
    toolbox.start_origins(env)
    env.start(toolbox.config(env))
    toolbox.drive(env, missing=1, after=1)
    status, text = env.admin("/stats/prometheus")
    assert status == 200
    names, _ = defined_metrics()
    ours = [l for l in text.splitlines() if re.match(r"^origin_pull_", l)]
    assert ours and all(re.match(r"^(origin_pull_\w+)[{ ]", l).group(1) in names for l in ours)
    mentions = [l for l in text.splitlines() if "origin_pull" in l and not l.startswith("#")]
    assert len(mentions) > 5 * len(ours)  # the loose grep of before: mostly Envoy's own series
    assert {l.split("{")[0].split("_")[0] for l in mentions if l not in ours} == {"envoy"}
