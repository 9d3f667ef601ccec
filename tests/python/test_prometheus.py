"""A real Prometheus (Debian's package) scrapes a real Kiln on 127.0.0.1, with
Kiln's own recording and alert rules (k8s/base/prometheusrule.yaml) loaded:

- after a burst of N requests, Prometheus holds exactly N successes and 2N rows;
- under a paced load, rate() over Kiln's counter gives the client's own rate;
- every recording and alert rule evaluates without error, and the recording
  rules give what their expressions give;
- every PromQL expression of the Grafana dashboard and the Prometheus Adapter
  rules runs against the scraped series, and (but for the panels about events
  that did not happen here) returns data.

Skipped when `prometheus` is not installed, unless KILN_REQUIRE_PROMETHEUS=1.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml

from conftest import ROOT, Kiln

sys.path.insert(0, os.path.join(ROOT, "scripts", "deploy"))
import k8s_tool  # noqa: E402

PROMETHEUS = shutil.which("prometheus")
if not PROMETHEUS:
    if os.environ.get("KILN_REQUIRE_PROMETHEUS") == "1":
        raise RuntimeError("prometheus is required (KILN_REQUIRE_PROMETHEUS=1) but not installed")
    pytest.skip("prometheus not installed (apt-get install prometheus)", allow_module_level=True)

# Labels the ServiceMonitor's scrape would attach, so that the rules' and the
# adapter's `namespace`/`pod` matchers see what they see in a cluster.
TARGET_LABELS = {"namespace": "kiln", "pod": "kiln-test-0"}
# Dashboard panels (and rule expressions) about events this test does not cause:
# an empty answer is right for them.
MAY_BE_EMPTY = ("Load failures", "Canary rollbacks")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prom:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path, **params):
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr, at=None):
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.get("/api/v1/query", **params)["result"]

    def scalar(self, expr, at=None):
        r = self.query(expr, at)
        assert len(r) == 1, f"{expr}: {r}"
        return float(r[0]["value"][1])

    def wait(self, what, cond, limit=30):
        deadline = time.time() + limit
        last = None
        while time.time() < deadline:
            try:
                last = cond()
                if last:
                    return last
            except (AssertionError, OSError) as e:
                last = e
            time.sleep(0.25)
        raise AssertionError(f"{what}: not within {limit}s (last: {last})")


@pytest.fixture(scope="module")
def stack():
    metrics_port = free_port()
    kiln = Kiln("models", ["--metrics-port", str(metrics_port)])
    tmp = tempfile.mkdtemp(prefix="kiln-prom-")
    # Kiln's rules as the PrometheusRule holds them, evaluated every second here.
    with open(os.path.join(ROOT, "k8s", "base", "prometheusrule.yaml")) as f:
        spec = yaml.safe_load(f)["spec"]
    for g in spec["groups"]:
        g["interval"] = "1s"
    with open(os.path.join(tmp, "kiln-rules.yaml"), "w") as f:
        yaml.safe_dump(spec, f)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["kiln-rules.yaml"],
        "scrape_configs": [{
            "job_name": "kiln",
            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"], "labels": TARGET_LABELS}],
        }],
    }
    with open(os.path.join(tmp, "prometheus.yml"), "w") as f:
        yaml.safe_dump(config, f)
    check = subprocess.run(["promtool", "check", "config", os.path.join(tmp, "prometheus.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp}/prometheus.yml", f"--storage.tsdb.path={tmp}/data",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    prom = Prom(port)
    try:
        prom.wait("Prometheus ready", lambda: urllib.request.urlopen(f"{prom.base}/-/ready", timeout=2).status == 200)
        prom.wait("Kiln scraped", lambda: prom.query('up{job="kiln"} == 1'))
        yield kiln, prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        kiln.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def mlp_request(rows):
    x = np.random.default_rng(rows).random((rows, 16), dtype=np.float32)
    t = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    return [t]


def test_a_burst_is_counted_exactly(stack):
    kiln, prom = stack
    client = httpclient.InferenceServerClient(kiln.http_url)
    n = 300
    for _ in range(n):
        client.infer("mlp_tiny", mlp_request(2))
    sel = '{job="kiln",model="mlp_tiny",version="1"}'
    prom.wait(f"{n} successes scraped",
              lambda: prom.scalar(f'sum(kiln_requests_total{sel[:-1]},outcome="success"}})') == n)
    assert prom.scalar(f"sum(kiln_inferences_total{sel})") == 2 * n
    # Each request ran as its own batch of 2 (one client, one at a time).
    assert prom.scalar(f"sum(kiln_executions_total{sel})") == n
    assert prom.scalar(f"sum(kiln_request_duration_seconds_count{sel})") == n
    assert prom.scalar(f"kiln_queue_capacity{sel}") > 0


def test_rate_matches_the_clients_rate_and_rules_evaluate(stack):
    kiln, prom = stack
    client = grpcclient.InferenceServerClient(kiln.grpc_url)
    x = np.random.default_rng(1).random((1, 64), dtype=np.float32) * 16
    t = grpcclient.InferInput("X", [1, 64], "FP32")
    t.set_data_from_numpy(x)
    target, seconds = 40.0, 12.0
    sent = 0
    start = time.time()
    while time.time() - start < seconds:
        client.infer("digits_mlp", [t])
        sent += 1
        # Paced: request k goes out at start + k / target.
        delay = start + sent / target - time.time()
        if delay > 0:
            time.sleep(delay)
    end = time.time()
    achieved = sent / (end - start)
    time.sleep(2.5)  # two scrapes past the end of the load
    sel = 'job="kiln",model="digits_mlp",outcome="success"'
    # The last 6 s of the load, entirely inside it.
    measured = prom.scalar(f"sum(rate(kiln_requests_total{{{sel}}}[6s]))", at=end - 0.5)
    print(f"client rate {achieved:.2f}/s ({sent} requests in {end - start:.2f}s); Prometheus rate {measured:.2f}/s")
    assert abs(measured - achieved) / achieved < 0.15, (measured, achieved)

    # Every rule group loaded and evaluated without error.
    def rules_ok():
        rules = [r for g in prom.get("/api/v1/rules")["groups"] for r in g["rules"]]
        return rules if all(r.get("health") == "ok" for r in rules) else None

    rules = prom.wait("every rule evaluated", rules_ok)
    names = {r["name"] for r in rules}
    for want in ("kiln:requests:rate5m", "kiln:request_errors:ratio_rate5m", "kiln:request_duration_seconds:p99_5m",
                 "kiln:queue:saturation", "KilnHighErrorRate", "KilnHighLatencyP99", "KilnQueueSaturated",
                 "KilnModelLoadFailed", "KilnCanaryRolledBack", "KilnTargetDown"):
        assert want in names, names
    assert not [r for r in rules if r.get("lastError")], rules
    # Nothing is wrong here, so nothing fires.
    assert prom.query('ALERTS{alertstate="firing",alertname=~"Kiln.*"}') == []

    # The recording rules hold what their expressions give at the same instant.
    # (A range selector gives the raw samples with the times the rule wrote them.)
    rec = prom.wait("kiln:requests:rate5m recorded",
                    lambda: prom.query('kiln:requests:rate5m{model="digits_mlp",outcome="success"}[5s]'))
    assert rec[0]["metric"]["namespace"] == "kiln"
    # A scrape's samples carry the scrape's start time but land when the scrape
    # ends, so a rule evaluated in between saw one sample fewer than a query for
    # the same instant sees now: the two may differ by one sample's worth of
    # extrapolation (under 1% here; CI once saw 0.8%). A wrong expression (other
    # series, other window, a missing sum) is off by far more than 5%.
    for at, value in rec[0]["values"][-3:]:
        direct = prom.scalar(f"sum(rate(kiln_requests_total{{{sel}}}[5m]))", at=float(at))
        assert float(value) > 0 and abs(float(value) - direct) <= 0.05 * direct, (at, value, direct)
    p99 = prom.query('kiln:request_duration_seconds:p99_5m{model="digits_mlp"}')
    assert p99 and 0 < float(p99[0]["value"][1]) < 10, p99
    ratio = prom.query('kiln:request_errors:ratio_rate5m{model="digits_mlp"}')
    assert ratio and float(ratio[0]["value"][1]) == 0.0, ratio


def test_dashboard_and_adapter_queries_return_data(stack):
    kiln, prom = stack
    # Traffic on every model, so that every panel has something to show.
    client = httpclient.InferenceServerClient(kiln.http_url)
    for _ in range(20):
        client.infer("mlp_tiny", mlp_request(1))
    time.sleep(2.5)
    exprs = k8s_tool.dashboard_exprs(os.path.join(ROOT, "k8s", "monitoring", "grafana-dashboard.json"))
    exprs += k8s_tool.adapter_exprs(os.path.join(ROOT, "k8s", "monitoring", "prometheus-adapter-config.yaml"))
    assert len(exprs) >= 20
    empty = []
    for title, expr in exprs:
        result = prom.query(expr)  # raises on a query Prometheus rejects
        if not result and not title.startswith(MAY_BE_EMPTY):
            empty.append(f"{title}: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)
    # The adapter's metric for the HPA: one series per pod.
    inflight = [q for t, q in exprs if t == "adapter kiln_inflight_requests metricsQuery"][0]
    assert len(prom.query(inflight.replace("by (instance)", "by (pod)"))) == 1
