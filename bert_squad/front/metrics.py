"""Prometheus metrics of the serve command (prometheus_client), and GET /metrics.

Three kinds of process record metrics: the serve process (here: every request, labelled protocol="grpc", "rest",
"oip_rest" or "oip_grpc"; master restarts, versions), the master process and the workers (worker restarts, the
servable's stages: bert_squad/contract/serving_metrics.py). They share one directory in prometheus_client's
multiprocess mode ($PROMETHEUS_MULTIPROC_DIR, which the serve command sets before any of them imports
prometheus_client); GET /metrics sums the files. Without that variable (a unit test, a script) each process counts
for itself.

Not visible to us: time a request waits in Serving's queue.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the /metrics endpoint)

from bert_squad.front import access, tracing
from bert_squad.contract import MULTIPROC_ENV, STAGE_LOAD, STAGE_WARM_UP

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# The servable's methods as metric label values; a request for any other counts as "other".
METHODS = ("predict", "predict_with_options", "predict_features")
# A refused request's HTTP status (gRPC codes are mapped to these first) as its outcome label.
OUTCOMES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 413: "too_large", 429: "busy",
            503: "unavailable", 504: "timeout"}

REQUESTS = Counter("bert_squad_requests", "Predict / infer requests answered by the front door",
                   ["protocol", "method", "outcome"])
LATENCY = Histogram("bert_squad_request_duration_seconds", "Predict / infer request time, received to answered",
                    ["protocol", "method"], buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge("bert_squad_requests_in_flight", "Predict / infer requests received and not yet answered",
                  ["protocol"], multiprocess_mode="livesum")
MASTER_RESTARTS = Counter("bert_squad_master_restarts", "Times Serving's master process died and was started again",
                          ["cause"])
INFO = Gauge("bert_squad_build_info", "The served model: 1, labelled with version, runtime, precision, model sha256 "
             "(0 for a version served before a switch)",
             ["version", "servable_version", "runtime", "precision", "model_sha256"], multiprocess_mode="max")
SWITCHES = Counter("bert_squad_version_switches", "Times a new model version took the traffic from the running one")
# Why a version was refused (versions_live.py): its files (metadata, a model file missing, cut short or changed), not
# enough memory for two versions, Serving could not load it, it failed its warm-up question, or its smoke test.
REFUSAL_REASONS = ("files", "memory", STAGE_LOAD, STAGE_WARM_UP, "smoke")
REFUSALS = Counter("bert_squad_version_refusals", "New model versions refused (the running one kept serving), by "
                   "reason", ["reason"])


class Record:
    """One request being answered: when it arrived, and its trace span when tracing is on."""

    __slots__ = ("started", "span", "_scope")

    def __init__(self, started: float, scope=None, span=None):
        self.started, self._scope, self.span = started, scope, span


class Meter:
    """The record of one protocol's requests: `begin()` when a request arrives, `end()` once it is answered, which
    counts it in the metrics, ends its span (tracing.py, when `tracer` is given) and writes its access line
    (access.py), so that no request gets one without the others. `facts`: span attributes every request of this
    server shares (runtime, precision)."""

    def __init__(self, protocol: str, tracer: Optional[tracing.Tracing] = None, facts: Optional[dict] = None):
        self.protocol, self._tracer, self._facts = protocol, tracer, facts or {}
        self._in_flight = IN_FLIGHT.labels(protocol)
        self._latency = {method: LATENCY.labels(protocol, method) for method in (*METHODS, "other")}

    def begin(self, name: str = "", carrier=None, attributes: Optional[Callable[[], dict]] = None) -> Record:
        """`name`, `carrier` (the request's headers or gRPC metadata: the caller's traceparent) and what
        `attributes()` returns are the span's; with tracing off none of them is looked at."""
        self._in_flight.inc()
        if self._tracer is None:
            return Record(time.perf_counter())
        given = attributes() if attributes else {}
        scope = self._tracer.request(name or self.protocol, carrier, {**self._facts, **given})
        return Record(time.perf_counter(), scope, scope.__enter__())  # the span is current until end()

    def serving_call(self):
        """The span of the call to Serving, around its await (a no-op context without tracing)."""
        if self._tracer is None:
            return contextlib.nullcontext()
        return self._tracer.child(SERVING_SPAN, SERVING_ATTRIBUTES)

    def end(self, record: Record, method: str, outcome, **line) -> None:
        """`outcome`: a label, or the HTTP status of a refusal; `line`: the access line's other fields
        (access.ACCESS_FIELDS: request_id, status, ...), written with this protocol and `method`."""
        self._in_flight.dec()
        label = method if method in METHODS else "other"
        if isinstance(outcome, int):
            outcome = OUTCOMES.get(outcome, "error")
        REQUESTS.labels(self.protocol, label, outcome).inc()
        self._latency[label].observe(time.perf_counter() - record.started)
        if record.span is not None:
            line["trace_id"] = _end_span(record, label, outcome, line)
        access.log_request(record.started, protocol=self.protocol, method=method, **line)


SERVING_SPAN = "mindspore.serving.proto.MSService/Predict"  # the front door's call to Serving's master
SERVING_ATTRIBUTES = tracing.grpc_attributes("/" + SERVING_SPAN)
FAILED = ("error", "unavailable", "timeout")  # outcomes that mark a span failed (the server's fault, not the caller's)


def _end_span(record: Record, method: str, outcome: str, line: dict) -> str:
    """Write the request's facts on its span, end it; its trace ID."""
    import grpc

    span, status, attr = record.span, line.get("status"), tracing.Attr
    if isinstance(status, int):
        code = {attr.HTTP_STATUS: status}
    else:  # a gRPC code's name; the conventions want its number
        code = {attr.RPC_GRPC_STATUS: grpc.StatusCode[status].value[0]} if status in grpc.StatusCode.__members__ else {}
    span.set({attr.REQUEST_ID: line.get("request_id"), attr.MODEL: line.get("model"),
              attr.VERSION: line.get("version"), attr.QUESTIONS: line.get("questions"), attr.METHOD: method,
              attr.OUTCOME: outcome, **code})
    if outcome in FAILED:
        span.fail(line.get("error") or outcome, str(status))
    record._scope.__exit__(None, None, None)
    return span.trace_id


def exposition() -> bytes:
    """The text /metrics answers: every process's metrics when in multiprocess mode, else this process's."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY)
