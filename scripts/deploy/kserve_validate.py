"""Validates k8s/kserve/*.yaml against KServe's published types, strictly.

No registry package ships KServe's CRDs as schemas, but KServe's own Python SDK
(PyPI `kserve`, installed with --no-deps) carries the types its OpenAPI spec
defines, one class per object (`openapi_types`, `attribute_map`), and the
Kubernetes client (`kubernetes`) carries the core types they embed (containers,
probes, ports). Every field of every manifest must be a field of its type, with
a value of that type: a misspelt or misplaced field (which the API server would
drop without a word) fails. Then Kiln's side of the runtime contract: the
container KServe looks for, the ports, the protocol versions, the metrics
annotations, and flags that Kiln really has.

    python scripts/deploy/kserve_validate.py k8s/kserve/*.yaml
"""
import datetime
import importlib.util
import os
import re
import sys
import types

import yaml


def kserve_models():
    # The SDK's __init__ starts a model server's imports (fastapi, ...); its
    # generated types need none of that: load kserve.models alone.
    spec = importlib.util.find_spec("kserve")
    if spec is None:
        sys.exit("kserve_validate: the kserve package is not installed (pip install --no-deps kserve)")
    pkg = types.ModuleType("kserve")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["kserve"] = pkg
    import kserve.models as models
    return models


KSERVE = kserve_models()
import kubernetes.client.models as K8S  # noqa: E402

ROOTS = {
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}


def model_class(name):
    return getattr(KSERVE, name, None) or getattr(K8S, name, None)


def check(value, type_name, path, errors):
    """Appends to `errors` every way `value` is not a `type_name`."""
    m = re.fullmatch(r"list\[(.+)\]", type_name)
    if m:
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {value!r}")
            return
        for i, v in enumerate(value):
            check(v, m.group(1), f"{path}[{i}]", errors)
        return
    m = re.fullmatch(r"dict\(str, (.+)\)", type_name)
    if m:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map, got {value!r}")
            return
        for k, v in value.items():
            check(v, m.group(1), f"{path}.{k}", errors)
        return
    simple = {"str": str, "int": int, "bool": bool, "float": (int, float)}
    if type_name in simple:
        ok = isinstance(value, simple[type_name]) and not (type_name == "int" and isinstance(value, bool))
        if not ok:
            errors.append(f"{path}: expected {type_name}, got {value!r}")
        return
    if type_name in ("object", "datetime", "date"):
        return  # IntOrString, Quantity, free-form status: any value
    cls = model_class(type_name)
    if cls is None:
        errors.append(f"{path}: unknown type {type_name}")
        return
    if not isinstance(value, dict):
        errors.append(f"{path}: expected a {type_name} object, got {value!r}")
        return
    fields = {json_key: cls.openapi_types[attr] for attr, json_key in cls.attribute_map.items()}
    for key, v in value.items():
        if key not in fields:
            errors.append(f"{path}.{key}: not a field of {type_name}")
        else:
            check(v, fields[key], f"{path}.{key}", errors)


def kiln_flags():
    """Kiln's flags, from its clap definitions."""
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "..", "crates", "kiln", "src", "cli.rs")) as f:
        text = f.read()
    named = set(re.findall(r'long = "([a-z0-9-]+)"', text))
    fields = re.findall(r"#\[arg\(long[,)].*?\)\]\s*pub ([a-z0-9_]+):", text, re.S)
    return named | {f.replace("_", "-") for f in fields}


def contract(doc, errors):
    """Kiln's side of the runtime contract."""
    kind, name = doc["kind"], doc["metadata"]["name"]
    spec = doc.get("spec", {})
    if kind == "ClusterServingRuntime":
        containers = spec.get("containers", [])
        serving = [c for c in containers if c.get("name") == "kserve-container"]
        if len(serving) != 1:
            errors.append(f"{kind}/{name}: needs one container named kserve-container")
            return
        c = serving[0]
        flags = dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in c.get("args", []))
        known = kiln_flags()
        for flag in flags:
            if flag not in known:
                errors.append(f"{kind}/{name}: --{flag} is not a Kiln flag")
        want = {"model-repository": "/mnt/models", "model-name": "{{.Name}}", "http-port": "8080",
                "grpc-port": "9000"}
        for flag, value in want.items():
            if flags.get(flag) != value:
                errors.append(f"{kind}/{name}: kserve-container needs --{flag}={value}")
        if [p.get("containerPort") for p in c.get("ports", [])][:1] != [8080]:
            errors.append(f"{kind}/{name}: the first port must be HTTP's, 8080")
        if not {"v2", "grpc-v2"} <= set(spec.get("protocolVersions", [])):
            errors.append(f"{kind}/{name}: protocolVersions must hold v2 and grpc-v2")
        formats = {f.get("name") for f in spec.get("supportedModelFormats", [])}
        if not {"onnx", "kiln"} <= formats:
            errors.append(f"{kind}/{name}: supportedModelFormats must hold onnx and kiln")
        ann = spec.get("annotations", {})
        if ann.get("prometheus.kserve.io/port") != "8080" or ann.get("prometheus.kserve.io/path") != "/metrics":
            errors.append(f"{kind}/{name}: prometheus.kserve.io/port and /path annotations must point at 8080/metrics")
    if kind == "InferenceService":
        model = spec.get("predictor", {}).get("model", {})
        if model.get("runtime") != "kiln" or not model.get("storageUri"):
            errors.append(f"{kind}/{name}: predictor.model needs runtime kiln and a storageUri")
        grpc = model.get("protocolVersion") == "grpc-v2"
        ports = model.get("ports", [])
        if grpc and [(p.get("name"), p.get("containerPort")) for p in ports] != [("h2c", 9000)]:
            errors.append(f"{kind}/{name}: grpc-v2 needs the one port h2c 9000 (Kiln's gRPC port)")


def main(paths):
    failed = 0
    for path in paths:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            errors = []
            root = ROOTS.get((doc.get("apiVersion"), doc.get("kind")))
            label = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            if root is None:
                errors.append(f"no KServe type for {doc.get('apiVersion')} {doc.get('kind')}")
            else:
                check(doc, root, doc["kind"], errors)
                contract(doc, errors)
            for e in errors:
                print(f"FAIL {label}: {e}", file=sys.stderr)
            if errors:
                failed += 1
            else:
                print(f"ok {label} (KServe {root}, strict)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
