"""Helpers for scripts/deploy-checks.sh: split rendered manifests, extract the
PrometheusRule's rules for promtool, and collect the dashboard's and the
Prometheus Adapter's PromQL. Needs PyYAML (in the deploy venv)."""
import json
import re
import sys

import yaml

CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def split(rendered, core_out, crd_out):
    """Core kinds to a YAML stream (kubernetes-validate), CRD kinds to JSON (node)."""
    ds = docs(rendered)
    core = [d for d in ds if d.get("kind") not in CRD_KINDS]
    crds = [d for d in ds if d.get("kind") in CRD_KINDS]
    with open(core_out, "w") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    with open(crd_out, "w") as f:
        json.dump(crds, f)
    print(f"{rendered}: {len(core)} core objects, {len(crds)} custom resources")


def rules(rendered, out):
    """The PrometheusRule's spec is a Prometheus rules file."""
    found = [d for d in docs(rendered) if d.get("kind") == "PrometheusRule"]
    if len(found) != 1:
        sys.exit(f"expected one PrometheusRule in {rendered}, found {len(found)}")
    with open(out, "w") as f:
        yaml.safe_dump(found[0]["spec"], f, sort_keys=False)


# Grafana's variables, replaced by what they stand for when "All" is selected.
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$namespace": ".*",
    "$model": ".*",
    "$version": ".*",
}


def fill(expr):
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    return expr


def dashboard_exprs(path):
    with open(path) as f:
        dash = json.load(f)
    out = []
    for p in dash.get("panels", []):
        for t in p.get("targets", []):
            out.append((f'{p["title"]} [{t["refId"]}]', fill(t["expr"])))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q or "")
        if m:
            out.append((f'variable {v["name"]}', fill(m.group(1))))
    if re.search(r"\$\w", json.dumps([e for _, e in out])):
        sys.exit("a Grafana variable was left unreplaced in the dashboard's PromQL")
    return out


def adapter_exprs(path):
    """The Prometheus Adapter's rules: seriesQuery as is, metricsQuery with its
    template filled the way the adapter fills it for a pod."""
    cm = docs(path)[0]
    cfg = yaml.safe_load(cm["data"]["config.yaml"])
    out = []
    for r in cfg["rules"]:
        series = r["name"]["as"]
        q = (
            r["metricsQuery"]
            .replace("<<.GroupBy>>", "instance")
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", "")
        )
        out.append((f"adapter {series} seriesQuery", r["seriesQuery"]))
        out.append((f"adapter {series} metricsQuery", q))
    return out


def promql_as_rules(out, *sources):
    """Every expression as a recording rule, so that `promtool check rules`
    parses each one."""
    exprs = []
    for kind, path in (s.split("=", 1) for s in sources):
        exprs += dashboard_exprs(path) if kind == "dashboard" else adapter_exprs(path)
    rules_ = [{"record": f"check:expr_{i}", "expr": e} for i, (_, e) in enumerate(exprs)]
    with open(out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-and-adapter", "rules": rules_}]}, f)
    print(f"{len(exprs)} PromQL expressions from {', '.join(sources)}")


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "split":
        split(*args)
    elif cmd == "rules":
        rules(*args)
    elif cmd == "promql":
        promql_as_rules(*args)
    elif cmd == "exprs":
        kind, path = args
        fn = dashboard_exprs if kind == "dashboard" else adapter_exprs
        json.dump(fn(path), sys.stdout)
    else:
        sys.exit(f"unknown command {cmd}")
