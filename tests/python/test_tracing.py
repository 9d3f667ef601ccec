"""Kiln's traces as a real OTLP receiver gets them (otlp_receiver.py), driven by
tritonclient over HTTP and gRPC: the caller's trace joined, the span tree, a
batch's compute span linked to every request it served, the sampling ratio,
request ids, and a collector that is down or stalls."""
import concurrent.futures
import json
import math
import os
import re
import socket
import tempfile
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import ROOT, Kiln
from otlp_receiver import Receiver, tree

SERVER, INTERNAL = 2, 1  # OTLP span kinds


@pytest.fixture(scope="module")
def repo():
    """A repository of the tiny model alone (quick to start)."""
    folder = tempfile.mkdtemp(prefix="kiln-trace-repo-")
    os.symlink(os.path.join(ROOT, "models", "mlp_tiny"), os.path.join(folder, "mlp_tiny"))
    return folder


def traced_kiln(repo, endpoint, protocol="grpc", ratio="1", extra=()):
    return Kiln(repo, ["--otlp-endpoint", endpoint, "--otlp-protocol", protocol, "--trace-sample-ratio", ratio,
                       "--trace-export-delay-ms", "50", "--log-format", "json", *extra])


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def kiln(repo, receiver):
    k = traced_kiln(repo, receiver.grpc_endpoint, extra=["--log-requests"])
    yield k
    k.stop()


def http_input(n=1):
    x = httpclient.InferInput("INPUT0", [n, 16], "FP32")
    x.set_data_from_numpy(np.ones((n, 16), np.float32))
    return [x]


def grpc_input(n=1):
    x = grpcclient.InferInput("INPUT0", [n, 16], "FP32")
    x.set_data_from_numpy(np.ones((n, 16), np.float32))
    return [x]


def traceparent():
    trace, parent = os.urandom(16).hex(), os.urandom(8).hex()
    return trace, parent, f"00-{trace}-{parent}-01"


def trace_of(receiver, trace, count=5):
    """The spans of one trace, once `count` of them have arrived."""
    return receiver.wait_for(lambda s: sum(x["trace_id"] == trace for x in s) >= count, timeout=10)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_request_joins_the_callers_trace(kiln, receiver, protocol):
    trace, parent, header = traceparent()
    if protocol == "http":
        r = kiln.http_client().infer("mlp_tiny", http_input(), headers={"traceparent": header},
                                     request_id="rid-" + protocol)
        assert r.get_response()["id"] == "rid-http"
    else:
        r = kiln.grpc_client().infer("mlp_tiny", grpc_input(), headers={"traceparent": header},
                                     request_id="rid-" + protocol)
        assert r.get_response().id == "rid-grpc"
    spans = [s for s in trace_of(receiver, trace) if s["trace_id"] == trace]
    by_name = {s["name"]: s for s in spans}
    assert set(by_name) == {"infer", "decode", "queue", "compute", "encode"}, spans
    infer = by_name["infer"]
    assert infer["parent"] == parent and infer["kind"] == SERVER
    a = infer["attributes"]
    assert a["kiln.protocol"] == protocol and a["kiln.model"] == "mlp_tiny" and a["kiln.version"] == 1
    assert a["kiln.request_id"] == "rid-" + protocol and a["kiln.batch_size"] == 1
    assert a["kiln.outcome"] in ("200", "Ok")
    assert infer["resource"]["service.name"] == "kiln"
    for name in ("decode", "queue", "compute", "encode"):
        child = by_name[name]
        assert child["parent"] == infer["span_id"] and child["kind"] == INTERNAL, child
        assert infer["start"] <= child["start"] <= child["end"] <= infer["end"], name
    # The phases follow one another under the request's span (the README shows such a tree).
    picture = tree(spans, trace)
    print(picture)
    assert [l.split()[0] for l in picture.splitlines()] == ["infer", "decode", "queue", "compute", "encode"]
    assert by_name["compute"]["links"] == [(trace, infer["span_id"])]
    # The access log line names the request and carries its trace.
    logged = kiln.wait_for_log(lambda v: v.get("target") == "kiln::access" and v.get("request_id") == "rid-" + protocol)
    assert logged["trace_id"] == trace and logged["model"] == "mlp_tiny" and logged["version"] == "1"
    assert logged["status"] in ("200", "Ok") and logged["duration_us"] > 0


def test_a_failed_request_is_an_error_span(kiln, receiver):
    trace, _, header = traceparent()
    wrong = httpclient.InferInput("NOPE", [1, 16], "FP32")
    wrong.set_data_from_numpy(np.ones((1, 16), np.float32))
    with pytest.raises(Exception, match="no input 'NOPE'"):
        kiln.http_client().infer("mlp_tiny", [wrong], headers={"traceparent": header})
    spans = receiver.wait_for(lambda s: any(x["trace_id"] == trace and x["name"] == "infer" for x in s))
    infer = next(s for s in spans if s["trace_id"] == trace and s["name"] == "infer")
    assert infer["status"] == 2 and infer["attributes"]["kiln.outcome"] == "400"  # STATUS_CODE_ERROR


def test_a_batch_is_one_compute_span_linked_to_every_request(kiln, receiver):
    client = grpcclient.InferenceServerClient(kiln.grpc_url)
    sent = {}
    # Many requests at once, so that batches form while the model computes.
    for attempt in range(5):
        results = []
        for i in range(64):
            trace, _, header = traceparent()
            sent[trace] = None
            client.async_infer("mlp_tiny", grpc_input(), headers={"traceparent": header},
                               callback=lambda result, error: results.append(error))
        deadline = time.time() + 30
        while len(results) < 64 and time.time() < deadline:
            time.sleep(0.01)
        assert results == [None] * 64
        spans = receiver.wait_for(lambda s: sum(x["name"] == "infer" and x["trace_id"] in sent for x in s) >= len(sent))
        computes = [s for s in spans if s["name"] == "compute" and s["trace_id"] in sent]
        if any(c["attributes"]["kiln.batch_requests"] > 1 for c in computes):
            break
    infers = {s["span_id"]: s for s in spans if s["name"] == "infer" and s["trace_id"] in sent}
    assert len(infers) == len(sent)
    batched = [c for c in computes if c["attributes"]["kiln.batch_requests"] > 1]
    assert batched, "no batch of more than one request formed"
    linked = {}
    for c in computes:
        links = c["links"]
        assert len(links) == c["attributes"]["kiln.batch_requests"], c
        assert c["attributes"]["kiln.batch_size"] == len(links)  # one row per request
        # Its parent is the first request it served, in that request's trace.
        assert (c["trace_id"], c["parent"]) == links[0]
        for trace, span in links:
            assert span in infers and infers[span]["trace_id"] == trace
            assert infers[span]["attributes"]["kiln.batch_size"] == len(links)
            linked[span] = linked.get(span, 0) + 1
    # Every request rode in exactly one batch, and no compute was copied.
    assert linked == {s: 1 for s in infers}


def test_sampling_follows_the_ratio(repo):
    r = Receiver()
    k = traced_kiln(repo, r.http_endpoint, protocol="http/protobuf", ratio="0.2", extra=["--log-requests", "0.1"])
    try:
        c = httpclient.InferenceServerClient(k.http_url)
        n, p = 2000, 0.2
        inputs = http_input()
        for _ in range(n):
            c.infer("mlp_tiny", inputs)
        time.sleep(0.5)
        spans = r.wait_for(lambda s: False, timeout=1.0)
        traced = sum(s["name"] == "infer" for s in spans)
        sd = math.sqrt(n * p * (1 - p))
        assert abs(traced - n * p) < 5 * sd, f"{traced} of {n} traced at ratio {p}"
        assert all(s["transport"] == "http" for s in spans)
        # A sampled parent is always followed, whatever the ratio.
        trace, _, header = traceparent()
        for _ in range(5):
            c.infer("mlp_tiny", inputs, headers={"traceparent": header})
        assert sum(s["name"] == "infer" for s in trace_of(r, trace, 25) if s["trace_id"] == trace) == 5
        logged = sum(v.get("target") == "kiln::access" for v in k.json_log())
        sd = math.sqrt((n + 5) * 0.1 * 0.9)
        assert abs(logged - (n + 5) * 0.1) < 5 * sd, f"{logged} access lines at ratio 0.1"
    finally:
        k.stop()
        r.stop()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dropped(kiln):
    text = urllib.request.urlopen(f"http://{kiln.http_url}/metrics").read().decode()
    m = re.search(r'kiln_trace_spans_dropped_total\{reason="(\w+)"\} (\d+)', text)
    return m and (m.group(1), int(m.group(2)))


@pytest.mark.parametrize("collector", ["down", "stalled"])
def test_a_collector_that_is_down_or_stalls_fails_no_request(repo, collector):
    r = Receiver(stall=30.0) if collector == "stalled" else None
    endpoint = r.grpc_endpoint if r else f"http://127.0.0.1:{free_port()}"
    k = traced_kiln(repo, endpoint, extra=["--trace-queue-size", "32", "--trace-batch-size", "8",
                                           "--trace-export-timeout-secs", "2"])
    try:
        c = httpclient.InferenceServerClient(k.http_url)
        slowest = 0.0
        for _ in range(300):
            t = time.perf_counter()
            c.infer("mlp_tiny", http_input())
            slowest = max(slowest, time.perf_counter() - t)
        # No request waited on the collector: one that did would wait out an
        # export (2 s here). How little tracing costs is measured in benches/.
        assert slowest < 1.0, f"slowest request {slowest:.3f} s"
        deadline = time.time() + 5
        while dropped(k) is None and time.time() < deadline:
            time.sleep(0.1)
        reason, count = dropped(k)
        assert count > 0 and reason in ("queue_full", "export_failed")
    finally:
        k.stop()
        if r:
            r.stop()
