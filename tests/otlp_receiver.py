"""A small OTLP trace receiver for the tests: the server's spans travel the real wire (OTLP/HTTP and OTLP/gRPC,
messages of opentelemetry-proto) to it, so a test sees what a collector would, not what the SDK meant to send.

Both endpoints bind 127.0.0.1 on ports picked free at start. Use it as a context manager, or as the pytest fixture
`otlp_receiver` (import it into the test module); `environment(protocol)` gives the OTEL_* variables that point a
server subprocess at it.
"""
from __future__ import annotations

import gzip
import threading
import time
import zlib
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

HOST = "127.0.0.1"
TRACES_PATH = "/v1/traces"
PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as it arrived; IDs in lower-case hex, kind and status without their enum prefixes."""

    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    name: str
    kind: str  # SERVER, CLIENT, INTERNAL, PRODUCER, CONSUMER
    attributes: Dict[str, Any]
    status: str  # UNSET, OK, ERROR
    status_message: str
    events: Tuple[str, ...]  # event names, e.g. "exception"
    resource: Dict[str, Any]
    scope: str  # the instrumentation scope (tracer) name
    protocol: str  # which endpoint got it: "grpc" or "http/protobuf"


def value_of(any_value: common_pb2.AnyValue) -> Any:
    """An OTLP AnyValue as the Python value it carries."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(item) for item in any_value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(any_value.kvlist_value.values)
    return getattr(any_value, kind)


def attributes_of(key_values) -> Dict[str, Any]:
    return {item.key: value_of(item.value) for item in key_values}


def spans_of(request: trace_service_pb2.ExportTraceServiceRequest, protocol: str) -> List[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = attributes_of(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(ReceivedSpan(
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    name=span.name,
                    kind=trace_pb2.Span.SpanKind.Name(span.kind).replace("SPAN_KIND_", ""),
                    attributes=attributes_of(span.attributes),
                    status=trace_pb2.Status.StatusCode.Name(span.status.code).replace("STATUS_CODE_", ""),
                    status_message=span.status.message,
                    events=tuple(event.name for event in span.events),
                    resource=resource,
                    scope=scope_spans.scope.name,
                    protocol=protocol,
                ))
    return spans


class OtlpReceiver:
    """Collects the spans exported to it, over either protocol, thread-safely."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._spans: List[ReceivedSpan] = []
        self._exports = {"grpc": 0, "http/protobuf": 0}
        self._headers: List[Dict[str, str]] = []
        self._grpc: Optional[grpc.Server] = None
        self._http: Optional[ThreadingHTTPServer] = None
        self.grpc_port = 0
        self.http_port = 0

    # --- what arrived
    @property
    def spans(self) -> List[ReceivedSpan]:
        with self._changed:
            return list(self._spans)

    @property
    def exports(self) -> Dict[str, int]:
        """How many export requests each endpoint answered (an empty one counts too)."""
        with self._changed:
            return dict(self._exports)

    @property
    def export_headers(self) -> List[Dict[str, str]]:
        """Each export request's HTTP headers or gRPC metadata (keys lower-case), in arrival order."""
        with self._changed:
            return list(self._headers)

    def wait_for(self, predicate: Callable[[List[ReceivedSpan]], bool], timeout: float = 10.0) -> List[ReceivedSpan]:
        """The spans received so far, once `predicate(spans)` holds; AssertionError (naming what did arrive) when it
        does not within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(list(self._spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"OTLP receiver: condition not met in {timeout} s; got {self._spans!r}")
                self._changed.wait(left)
            return list(self._spans)

    def wait_for_count(self, count: int, timeout: float = 10.0) -> List[ReceivedSpan]:
        return self.wait_for(lambda spans: len(spans) >= count, timeout)

    def clear(self) -> None:
        with self._changed:
            self._spans.clear()
            self._exports = dict.fromkeys(self._exports, 0)
            self._headers.clear()

    def _received(self, request: trace_service_pb2.ExportTraceServiceRequest, protocol: str,
                  headers: Dict[str, str]) -> None:
        spans = spans_of(request, protocol)
        with self._changed:
            self._spans.extend(spans)
            self._exports[protocol] += 1
            self._headers.append(headers)
            self._changed.notify_all()

    # --- where to send
    @property
    def grpc_endpoint(self) -> str:
        return f"http://{HOST}:{self.grpc_port}"  # http: the gRPC exporter then uses a plain (insecure) channel

    @property
    def http_endpoint(self) -> str:
        return f"http://{HOST}:{self.http_port}"  # the HTTP exporter appends /v1/traces

    def environment(self, protocol: str = "http/protobuf") -> Dict[str, str]:
        """The OTEL_* variables that make a server export its traces here, over `protocol`."""
        endpoint = self.grpc_endpoint if protocol == "grpc" else self.http_endpoint
        return {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}

    # --- life
    def start(self) -> "OtlpReceiver":
        receiver = self

        class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802 (the RPC's name)
                metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
                receiver._received(request, "grpc", metadata)
                return trace_service_pb2.ExportTraceServiceResponse()

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port(f"{HOST}:0")
        self._grpc.start()

        self._http = ThreadingHTTPServer((HOST, 0), _handler(self))
        self._http.daemon_threads = True
        self.http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, args=(0.05,), name="otlp-http", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait(5)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> "OtlpReceiver":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _handler(receiver: OtlpReceiver):
    """OTLP/HTTP with protobuf bodies: POST /v1/traces, gzip or deflate allowed; JSON bodies are refused (415)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.split("?")[0] != TRACES_PATH:
                return self._answer(404, b"", "text/plain")
            if self.headers.get("Content-Type", "").split(";")[0].strip() != PROTOBUF:
                return self._answer(415, b"only application/x-protobuf here", "text/plain")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            encoding = self.headers.get("Content-Encoding", "").strip().lower()
            try:
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            except Exception as error:  # a body that is not what OTLP says: the exporter's bug, shown to the test
                return self._answer(400, str(error).encode(), "text/plain")
            receiver._received(request, "http/protobuf", {key.lower(): value for key, value in self.headers.items()})
            self._answer(200, trace_service_pb2.ExportTraceServiceResponse().SerializeToString(), PROTOBUF)

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args) -> None:  # noqa: A002 (http.server's signature)
            pass  # quiet: the tests assert on what arrived

    return Handler


@pytest.fixture
def otlp_receiver():
    """A started OtlpReceiver, stopped after the test."""
    with OtlpReceiver() as receiver:
        yield receiver
