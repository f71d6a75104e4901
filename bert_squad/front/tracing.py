"""OpenTelemetry traces for the front door (issue 26): one SERVER span per request, continuing the caller's W3C
`traceparent`, and a CLIENT span for the call to MindSpore Serving, exported over OTLP.

Configured only by the standard OTEL_* environment, so an operator's usual collector set-up works unchanged:
OTEL_TRACES_EXPORTER=otlp turns it on; OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL picks
`http/protobuf` (the default, as the OpenTelemetry specification asks) or `grpc`. Everything else (endpoint,
headers, timeout, compression, TLS, OTEL_TRACES_SAMPLER, OTEL_BSP_*, OTEL_RESOURCE_ATTRIBUTES) is read by the SDK
and its exporters themselves, from os.environ, and so is the service name (OTEL_SERVICE_NAME, default
"bert-squad-serve").

Off by default: with OTEL_TRACES_EXPORTER unset, empty or `none` (or OTEL_SDK_DISABLED=true) from_environment()
returns None without importing opentelemetry, and the server skips every call here, so tracing costs nothing.
No opentelemetry type leaks out of this module: callers hold `Span` handles and use the names in `Attr`.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

DEFAULT_SERVICE_NAME = "bert-squad-serve"
TRACER_NAME = "bert_squad.server"
EXPORTER_VARIABLE = "OTEL_TRACES_EXPORTER"
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")  # first set one wins
OFF = ("", "none")  # OTEL_TRACES_EXPORTER values that leave tracing off
EXPORTERS = ("otlp",)
PROTOCOLS = ("http/protobuf", "grpc")
DEFAULT_PROTOCOL = "http/protobuf"  # the specification's default transport for OTLP exporters
W3C_HEADERS = ("traceparent", "tracestate")

Carrier = Union[Mapping[str, str], Iterable[Tuple[Any, Any]], None]
_log = logging.getLogger("bert_squad.serve")


class Attr:
    """Span attribute names, in one place: OpenTelemetry semantic conventions where one exists, `bert_squad.` for
    ours (what the request asked of which model, and how big it turned out)."""

    MODEL = "bert_squad.model"
    VERSION = "bert_squad.version"
    PRECISION = "bert_squad.precision"
    RUNTIME = "bert_squad.runtime"
    QUESTIONS = "bert_squad.questions"
    WINDOWS = "bert_squad.windows"
    TOKENS = "bert_squad.tokens"
    REQUEST_ID = "bert_squad.request_id"
    METHOD = "bert_squad.method"  # the servable method the request became
    OUTCOME = "bert_squad.outcome"  # the metrics' outcome label (ok, instance_error, bad_request, ...)
    # HTTP server spans (semantic conventions: http)
    HTTP_METHOD = "http.request.method"
    HTTP_ROUTE = "http.route"
    HTTP_STATUS = "http.response.status_code"
    URL_PATH = "url.path"
    URL_SCHEME = "url.scheme"
    CLIENT_ADDRESS = "client.address"
    # gRPC server spans and the call to Serving (semantic conventions: rpc)
    RPC_SYSTEM = "rpc.system"
    RPC_SERVICE = "rpc.service"
    RPC_METHOD = "rpc.method"
    RPC_GRPC_STATUS = "rpc.grpc.status_code"
    SERVER_ADDRESS = "server.address"
    SERVER_PORT = "server.port"
    # a failed request's kind of error (an exception's class name, an HTTP status, a gRPC code name)
    ERROR_TYPE = "error.type"


class TracingError(ValueError):
    """The OTEL_* environment asks for tracing we cannot do; the server should refuse to start rather than run
    untraced when tracing was asked for."""


def http_attributes(method: str, path: str, route: Optional[str] = None, scheme: str = "http") -> Dict[str, Any]:
    """A REST request's attributes; `route` is the low-cardinality template (e.g. /v2/models/{model}/infer) that
    the span's name should use too ("POST /v2/models/{model}/infer")."""
    attributes = {Attr.HTTP_METHOD: method, Attr.URL_PATH: path, Attr.URL_SCHEME: scheme}
    if route:
        attributes[Attr.HTTP_ROUTE] = route
    return attributes


def grpc_attributes(full_method: str) -> Dict[str, Any]:
    """A gRPC call's attributes from its full method name ("/package.Service/Method", as grpc's
    HandlerCallDetails.method gives it); the span's name should be "package.Service/Method"."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return {Attr.RPC_SYSTEM: "grpc", Attr.RPC_SERVICE: service, Attr.RPC_METHOD: method}


def from_environment() -> Optional["Tracing"]:
    """The Tracing the OTEL_* environment asks for, or None when tracing is off (nothing of opentelemetry is
    imported then). Raises TracingError for an exporter or protocol we do not support, or an exporter setting
    the SDK refuses."""
    protocol = _protocol_asked(os.environ)
    if protocol is None:
        return None
    return Tracing._start(protocol)


def _protocol_asked(environ: Mapping[str, str]) -> Optional[str]:
    """The OTLP protocol to export with, None when off; checked before any import so a typo fails fast."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = environ.get(EXPORTER_VARIABLE, "").strip().lower()
    if exporter in OFF:
        return None
    if exporter not in EXPORTERS:
        raise TracingError(f"{EXPORTER_VARIABLE}={environ[EXPORTER_VARIABLE]!r} is not supported: set it to "
                           f"{' or '.join(EXPORTERS + ('none',))}, or leave it unset for no tracing")
    for variable in PROTOCOL_VARIABLES:
        protocol = environ.get(variable, "").strip().lower()
        if protocol:
            if protocol not in PROTOCOLS:
                raise TracingError(f"{variable}={environ[variable]!r} is not supported: set it to "
                                   f"{' or '.join(PROTOCOLS)} (default {DEFAULT_PROTOCOL})")
            return protocol
    return DEFAULT_PROTOCOL


class Span:
    """A started span as the server sees it: attributes set as they become known (questions, windows and tokens
    only after parsing), a failure marked, the trace ID read for the access log."""

    __slots__ = ("_span",)

    def __init__(self, span) -> None:
        self._span = span

    def set(self, attributes: Mapping[str, Any]) -> None:
        """Sets each attribute whose value is not None (an unknown value is left out, not sent as null)."""
        for name, value in attributes.items():
            if value is not None:
                self._span.set_attribute(name, value)

    def fail(self, message: str, error_type: Optional[str] = None) -> None:
        """Marks the span failed when the request fails without an exception escaping its `with` block (an escaping
        exception is recorded by itself, with its type and message)."""
        from opentelemetry.trace import Status, StatusCode

        if error_type:
            self._span.set_attribute(Attr.ERROR_TYPE, error_type)
        self._span.set_status(Status(StatusCode.ERROR, message))

    @property
    def trace_id(self) -> str:
        """32 lower-case hex digits (also for a span the sampler dropped: the log line still joins the trace)."""
        context = self._span.get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else ""

    @property
    def span_id(self) -> str:
        """16 lower-case hex digits."""
        context = self._span.get_span_context()
        return format(context.span_id, "016x") if context.is_valid else ""


class Tracing:
    """The server's tracer, its exporter and the batch processor between them: build it with from_environment(),
    once per process that serves (after any fork: the processor's thread does not survive one), and shutdown()
    at stop."""

    def __init__(self, provider, protocol: str) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.protocol = protocol
        self._provider = provider
        self._tracer = provider.get_tracer(TRACER_NAME)
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()  # W3C only, whatever OTEL_PROPAGATORS says
        self._shutdown_lock = threading.Lock()
        self._stopped = False
        atexit.register(self.shutdown)  # bounded, unlike the provider's own exit hook (turned off in _start)

    @classmethod
    def _start(cls, protocol: str) -> "Tracing":
        from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        try:
            exporter = OTLPSpanExporter()  # endpoint, headers, timeout, compression, TLS: its own OTEL_* handling
        except Exception as error:  # e.g. a bad OTEL_EXPORTER_OTLP_COMPRESSION or _TIMEOUT
            raise TracingError(f"cannot start the OTLP {protocol} trace exporter: {error}") from error
        # Resource.create() lets its own attributes override OTEL_SERVICE_NAME; merging the environment's detector
        # last makes our name the default only
        resource = Resource.create({SERVICE_NAME: DEFAULT_SERVICE_NAME}).merge(OTELResourceDetector().detect())
        # no sampler given: the SDK reads OTEL_TRACES_SAMPLER(_ARG); shutdown_on_exit off: its unbounded shutdown at
        # exit would wait out the exporter's retries (about a minute) when the collector is down
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider, protocol)

    @contextmanager
    def request(self, name: str, headers: Carrier = None,
                attributes: Optional[Mapping[str, Any]] = None) -> Iterator[Span]:
        """The SERVER span of one request, current for the `with` block (asyncio: for the task running it), a child
        of the caller's span when `headers` (an HTTP request's headers, or a gRPC call's invocation metadata as
        (key, value) pairs) carry a valid W3C traceparent, else the root of a new trace. An exception escaping the
        block marks the span failed."""
        parent = self._propagator.extract(_w3c_carrier(headers))
        with self._tracer.start_as_current_span(name, context=parent, kind=self._trace.SpanKind.SERVER,
                                                attributes=_present(attributes)) as span:
            yield Span(span)

    @contextmanager
    def child(self, name: str, attributes: Optional[Mapping[str, Any]] = None,
              parent: Optional[Span] = None) -> Iterator[Span]:
        """The CLIENT span of the call to Serving, a child of the current span (start it in the coroutine or thread
        that holds the request span, around the await), or of `parent` where that context is lost (another
        thread)."""
        context = self._trace.set_span_in_context(parent._span) if parent is not None else None
        with self._tracer.start_as_current_span(name, context=context, kind=self._trace.SpanKind.CLIENT,
                                                attributes=_present(attributes)) as span:
            yield Span(span)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Exports the finished spans now; False when that did not finish in time."""
        return self._provider.force_flush(int(timeout_s * 1000))

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Exports what is left and stops the exporter; at most `timeout_s`, because the SDK's exporters retry an
        unreachable collector for about a minute and a server stop must not wait for that. Safe to call twice."""
        with self._shutdown_lock:
            if self._stopped:
                return
            self._stopped = True
        atexit.unregister(self.shutdown)
        worker = threading.Thread(target=self._provider.shutdown, name="otel-shutdown", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            _log.warning("tracing: spans not exported within %.1f s at stop; the collector may be unreachable",
                         timeout_s)


def _w3c_carrier(headers: Carrier) -> Dict[str, List[str]]:
    """The traceparent/tracestate values of HTTP headers (a mapping, any case; or raw ASGI (bytes, bytes) pairs) or
    gRPC metadata ((key, value) pairs), keyed lower-case, as the W3C propagator reads them."""
    carrier: Dict[str, List[str]] = {}
    if not headers:
        return carrier
    for key, value in (headers.items() if isinstance(headers, Mapping) else headers):
        if isinstance(key, bytes):
            key = key.decode("latin-1")
        key = key.lower()
        if key in W3C_HEADERS:
            carrier.setdefault(key, []).append(value.decode("latin-1") if isinstance(value, bytes) else value)
    return carrier


def _present(attributes: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """The attributes whose value is known (the SDK would warn about each None)."""
    if not attributes:
        return None
    return {name: value for name, value in attributes.items() if value is not None}
