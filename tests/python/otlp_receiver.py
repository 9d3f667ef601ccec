"""A small OTLP trace receiver for the tests: OTLP/gRPC and OTLP/HTTP (protobuf)
on free 127.0.0.1 ports, decoding the real protocol with the official
definitions (the opentelemetry-proto package). No OpenTelemetry Collector
binary can be installed from the package registries here.

`stall`: seconds each export is held before it is answered (a collector that
has stopped keeping up).

Run alone (benches/tracing_ab.sh does), it serves OTLP/gRPC on a given port
until killed, answering each export without decoding it (so that on a small
machine its own CPU does not weigh on the server measured):
    python tests/python/otlp_receiver.py PORT [STALL_SECONDS]"""
import http.server
import threading
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def _value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def _spans(request, transport):
    """The spans of an ExportTraceServiceRequest as dicts."""
    out = []
    for rs in request.resource_spans:
        resource = {a.key: _value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append({
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": s.kind,
                    "start": s.start_time_unix_nano,
                    "end": s.end_time_unix_nano,
                    "attributes": {a.key: _value(a.value) for a in s.attributes},
                    "links": [(l.trace_id.hex(), l.span_id.hex()) for l in s.links],
                    "status": s.status.code,
                    "resource": resource,
                    "transport": transport,
                })
    return out


class Receiver:
    def __init__(self, stall=0.0):
        self.stall = stall
        self._spans = []
        self._lock = threading.Lock()
        receiver = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                receiver._take(request, "grpc")
                return trace_service_pb2.ExportTraceServiceResponse()

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()

        class Http(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver._take(request, "http")
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Http)
        self.http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def _take(self, request, transport):
        if self.stall:
            time.sleep(self.stall)
        with self._lock:
            self._spans.extend(_spans(request, transport))

    @property
    def grpc_endpoint(self):
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self):
        return f"http://127.0.0.1:{self.http_port}"

    def spans(self):
        with self._lock:
            return list(self._spans)

    def wait_for(self, done, timeout=15.0):
        """The spans received once `done(spans)` holds (or the timeout passes)."""
        deadline = time.time() + timeout
        while True:
            spans = self.spans()
            if done(spans) or time.time() > deadline:
                return spans
            time.sleep(0.05)

    def clear(self):
        with self._lock:
            self._spans.clear()

    def stop(self):
        self._grpc.stop(0)
        self._http.shutdown()


def tree(spans, trace):
    """One trace's spans as an indented tree with start offsets and durations (µs),
    and the links of each span; the README's picture of a trace is one."""
    spans = [s for s in spans if s["trace_id"] == trace]
    ids = {s["span_id"] for s in spans}
    t0 = min(s["start"] for s in spans)
    lines = []

    def walk(level, depth):
        for s in sorted(level, key=lambda s: s["start"]):
            attrs = " ".join(f"{k}={v}" for k, v in sorted(s["attributes"].items()))
            links = f" links={len(s['links'])}" if s["links"] else ""
            lines.append(f"{'  ' * depth}{s['name']:<{14 - 2 * depth}} +{(s['start'] - t0) // 1000:>5} µs "
                         f"{(s['end'] - s['start']) // 1000:>5} µs  {attrs}{links}".rstrip())
            walk([c for c in spans if c["parent"] == s["span_id"]], depth + 1)

    walk([s for s in spans if s["parent"] not in ids], 0)
    return "\n".join(lines)


def serve_undecoded(port, stall=0.0):
    """OTLP/gRPC on `port` that takes each export as bytes and answers an empty
    ExportTraceServiceResponse (which encodes as no bytes)."""
    def export(request, context):
        if stall:
            time.sleep(stall)
        return b""

    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


if __name__ == "__main__":
    import sys

    server = serve_undecoded(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
