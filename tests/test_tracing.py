"""bert_squad.front.tracing against a real OTLP receiver (tests/otlp_receiver.py), over both OTLP protocols: the
caller's W3C trace is continued, the call to Serving is the request span's child, our attributes and failures
arrive, the sampler and the off switch are obeyed, and settings we cannot honour fail with a clear message."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bert_squad.front import tracing
from bert_squad.front.tracing import Attr, TracingError

pytestmark = pytest.mark.pure

REPO = Path(__file__).resolve().parent.parent
PROTOCOLS = ("grpc", "http/protobuf")
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@pytest.fixture
def otel_env(monkeypatch):
    """No OTEL_* variable of the outer environment leaks into a test."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def receiver(otel_env):
    for module in ("opentelemetry.sdk", "opentelemetry.proto", "opentelemetry.exporter.otlp.proto.grpc",
                   "opentelemetry.exporter.otlp.proto.http"):
        pytest.importorskip(module, reason="the tracing extras (setup.cfg: server, test) are not installed here")
    from otlp_receiver import OtlpReceiver

    with OtlpReceiver() as started:
        yield started


def traced_to(receiver, protocol: str, monkeypatch, **variables) -> tracing.Tracing:
    """A Tracing from the environment, exporting to `receiver` over `protocol`."""
    for name, value in {**receiver.environment(protocol), **variables}.items():
        monkeypatch.setenv(name, value)
    started = tracing.from_environment()
    assert started is not None and started.protocol == protocol
    return started


def by_kind(spans, kind: str):
    found = [span for span in spans if span.kind == kind]
    assert len(found) == 1, spans
    return found[0]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_request_span_continues_the_callers_trace_and_parents_the_serving_call(receiver, otel_env, protocol):
    traced = traced_to(receiver, protocol, otel_env)
    seen = {}

    async def handle():  # as the front door would: spans around awaits, in one asyncio task
        with traced.request("POST /v2/models/{model}/infer", {"traceparent": TRACEPARENT, "tracestate": "ours=1"},
                            {**tracing.http_attributes("POST", "/v2/models/bert/infer", "/v2/models/{model}/infer"),
                             Attr.MODEL: "bert", Attr.VERSION: "1", Attr.REQUEST_ID: "req-7",
                             Attr.QUESTIONS: None}) as span:
            await asyncio.sleep(0)
            span.set({Attr.QUESTIONS: 2, Attr.WINDOWS: 3, Attr.TOKENS: 384, Attr.PRECISION: "fp16",
                      Attr.RUNTIME: "serving"})
            with traced.child("bert_squad.Serving/predict",
                              {Attr.RPC_SYSTEM: "grpc", Attr.RPC_SERVICE: "ms_serving.MSService",
                               Attr.RPC_METHOD: "Predict"}) as call:
                await asyncio.sleep(0.01)
            span.set({Attr.HTTP_STATUS: 200})
            seen.update(trace_id=span.trace_id, span_id=span.span_id, child_id=call.span_id)

    asyncio.run(handle())
    traced.shutdown()
    spans = receiver.wait_for_count(2)
    server, client = by_kind(spans, "SERVER"), by_kind(spans, "CLIENT")

    assert server.trace_id == client.trace_id == CALLER_TRACE == seen["trace_id"]
    assert server.parent_span_id == CALLER_SPAN
    assert client.parent_span_id == server.span_id == seen["span_id"]
    assert client.span_id == seen["child_id"]
    assert server.name == "POST /v2/models/{model}/infer" and client.name == "bert_squad.Serving/predict"
    assert server.attributes == {
        "http.request.method": "POST", "url.path": "/v2/models/bert/infer", "url.scheme": "http",
        "http.route": "/v2/models/{model}/infer", "http.response.status_code": 200,
        "bert_squad.model": "bert", "bert_squad.version": "1", "bert_squad.request_id": "req-7",
        "bert_squad.questions": 2, "bert_squad.windows": 3, "bert_squad.tokens": 384,
        "bert_squad.precision": "fp16", "bert_squad.runtime": "serving"}
    assert client.attributes == {"rpc.system": "grpc", "rpc.service": "ms_serving.MSService", "rpc.method": "Predict"}
    assert server.status == client.status == "UNSET"
    assert server.resource["service.name"] == "bert-squad-serve"
    assert server.scope == tracing.TRACER_NAME
    assert {span.protocol for span in spans} == {protocol}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_failures_are_recorded_as_error_status(receiver, otel_env, protocol):
    traced = traced_to(receiver, protocol, otel_env)
    with pytest.raises(ValueError, match="no context given"):
        with traced.request("POST /predict", {"traceparent": TRACEPARENT}):
            with traced.child("Serving predict"):
                raise ValueError("no context given")
    with traced.request("GET /v2/models/{model}", {"traceparent": TRACEPARENT}) as span:
        span.set({Attr.HTTP_STATUS: 503})
        span.fail("model bert is not loaded", error_type="503")
    traced.shutdown()
    spans = receiver.wait_for_count(3)

    raised = [span for span in spans if span.name in ("POST /predict", "Serving predict")]
    assert len(raised) == 2
    for span in raised:  # the exception passed through both blocks: each span says so
        assert span.status == "ERROR" and "no context given" in span.status_message, span
        assert "exception" in span.events
    failed = next(span for span in spans if span.name == "GET /v2/models/{model}")
    assert (failed.status, failed.status_message) == ("ERROR", "model bert is not loaded")
    assert failed.attributes["error.type"] == "503" and failed.attributes["http.response.status_code"] == 503


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("headers", [
    None, {}, {"traceparent": "hello"}, {"traceparent": f"00-{'0' * 32}-{CALLER_SPAN}-01"},
    {"traceparent": f"00-{CALLER_TRACE}-{'0' * 16}-01"}, {"traceparent": f"ff-{CALLER_TRACE}-{CALLER_SPAN}-01"},
], ids=["none", "empty", "garbage", "zero-trace-id", "zero-span-id", "version-ff"])
def test_missing_or_invalid_traceparent_starts_a_new_trace(receiver, otel_env, protocol, headers):
    traced = traced_to(receiver, protocol, otel_env)
    with traced.request("POST /predict", headers) as span:
        with traced.child("Serving predict"):
            pass
    traced.shutdown()
    spans = receiver.wait_for_count(2)
    server, client = by_kind(spans, "SERVER"), by_kind(spans, "CLIENT")
    assert server.parent_span_id == ""
    assert server.trace_id == client.trace_id == span.trace_id
    assert len(server.trace_id) == 32 and server.trace_id not in (CALLER_TRACE, "0" * 32)
    assert client.parent_span_id == server.span_id


def test_traceparent_from_grpc_metadata_raw_asgi_headers_and_any_case(receiver, otel_env):
    traced = traced_to(receiver, "http/protobuf", otel_env)
    carriers = {
        "grpc": (("x-request-id", "r1"), ("traceparent", TRACEPARENT), ("trace-bin", b"\x00\x01")),
        "asgi": [(b"host", b"x"), (b"traceparent", TRACEPARENT.encode())],
        "mixed-case": {"TraceParent": TRACEPARENT},
    }
    for name, headers in carriers.items():
        with traced.request(name, headers):
            pass
    traced.shutdown()
    spans = receiver.wait_for_count(3)
    assert {span.name: (span.trace_id, span.parent_span_id) for span in spans} == \
        dict.fromkeys(carriers, (CALLER_TRACE, CALLER_SPAN))


def test_concurrent_requests_in_one_event_loop_keep_their_own_parents(receiver, otel_env):
    traced = traced_to(receiver, "http/protobuf", otel_env)
    callers = {f"{n:032x}": f"{n:016x}" for n in range(1, 5)}

    async def handle(trace_id: str, span_id: str):
        with traced.request(f"request {trace_id}", {"traceparent": f"00-{trace_id}-{span_id}-01"}):
            await asyncio.sleep(0.01)  # the others start their spans meanwhile
            with traced.child(f"call {trace_id}"):
                await asyncio.sleep(0.01)

    async def all_at_once():
        await asyncio.gather(*(handle(trace_id, span_id) for trace_id, span_id in callers.items()))

    asyncio.run(all_at_once())
    traced.shutdown()
    spans = {span.name: span for span in receiver.wait_for_count(2 * len(callers))}
    for trace_id, span_id in callers.items():
        server, client = spans[f"request {trace_id}"], spans[f"call {trace_id}"]
        assert (server.trace_id, server.parent_span_id) == (trace_id, span_id)
        assert (client.trace_id, client.parent_span_id) == (trace_id, server.span_id)


def test_child_of_an_explicit_parent_on_another_thread(receiver, otel_env):
    """Where the context does not follow (a worker thread), `parent=` still links the call to its request."""
    import threading

    traced = traced_to(receiver, "http/protobuf", otel_env)
    with traced.request("POST /predict", {"traceparent": TRACEPARENT}) as span:
        def work():
            with traced.child("Serving predict", parent=span):
                pass

        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
    traced.shutdown()
    spans = receiver.wait_for_count(2)
    assert by_kind(spans, "CLIENT").parent_span_id == by_kind(spans, "SERVER").span_id


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("sampler, flags", [("always_off", "01"), ("parentbased_always_on", "00")],
                         ids=["always_off", "caller-not-sampled"])
def test_sampled_out_requests_export_nothing(receiver, otel_env, protocol, sampler, flags):
    traced = traced_to(receiver, protocol, otel_env, OTEL_TRACES_SAMPLER=sampler)
    with traced.request("POST /predict", {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-{flags}"}) as span:
        span.set({Attr.QUESTIONS: 1})
        span.fail("still not exported")
        with traced.child("Serving predict"):
            pass
    assert span.trace_id == CALLER_TRACE  # the access log still names the caller's trace
    traced.shutdown()  # flushes: had anything been exported, it has arrived by now
    assert receiver.spans == [] and receiver.exports == {"grpc": 0, "http/protobuf": 0}


def test_service_name_from_the_environment(receiver, otel_env):
    traced = traced_to(receiver, "grpc", otel_env, OTEL_SERVICE_NAME="qa-east",
                       OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test")
    with traced.request("POST /predict"):
        pass
    traced.shutdown()
    (span,) = receiver.wait_for_count(1)
    assert span.resource["service.name"] == "qa-east"
    assert span.resource["deployment.environment"] == "test"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_exporter_settings_are_the_sdks_own(receiver, otel_env, protocol):
    """Compression and headers come from OTEL_EXPORTER_OTLP_* as the exporters read them, not from us."""
    traced = traced_to(receiver, protocol, otel_env, OTEL_EXPORTER_OTLP_COMPRESSION="gzip",
                       OTEL_EXPORTER_OTLP_HEADERS="x-tenant=qa")
    with traced.request("POST /predict"):
        pass
    traced.shutdown()
    assert [span.protocol for span in receiver.wait_for_count(1)] == [protocol]
    headers = receiver.export_headers[-1]
    assert headers.get("x-tenant") == "qa"
    if protocol == "http/protobuf":  # (gRPC's compression is below what its handlers see)
        assert headers.get("content-encoding") == "gzip"


@pytest.mark.parametrize("variables, arrives_over", [
    ({}, "http/protobuf"),  # the specification's default
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, "grpc"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": " HTTP/Protobuf "},
     "http/protobuf"),
], ids=["default", "general", "traces-over-general", "traces-over-general-any-case"])
def test_protocol_choice(receiver, otel_env, variables, arrives_over):
    otel_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT",
                    receiver.grpc_endpoint if arrives_over == "grpc" else receiver.http_endpoint)
    for name, value in variables.items():
        otel_env.setenv(name, value)
    traced = tracing.from_environment()
    assert traced.protocol == arrives_over
    with traced.request("POST /predict"):
        pass
    traced.shutdown()
    assert [span.protocol for span in receiver.wait_for_count(1)] == [arrives_over]


UNREACHABLE_SCRIPT = """
import time
from bert_squad.front import tracing
traced = tracing.from_environment()
with traced.request("POST /predict"):
    pass
started = time.monotonic()
traced.shutdown(timeout_s=0.5)
print(time.monotonic() - started)
"""


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_stop_is_bounded_when_the_collector_is_unreachable(otel_env, protocol):
    """shutdown() and then the process's exit do not wait out the exporter's retries (the 1.27 gRPC exporter's
    take 63 s, and the SDK's own exit hook would wait for them)."""
    pytest.importorskip(f"opentelemetry.exporter.otlp.proto.{protocol.split('/')[0]}",
                        reason="the tracing extras (setup.cfg: server, test) are not installed here")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environ = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    environ.update(OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
                   OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", UNREACHABLE_SCRIPT], cwd=REPO, env=environ, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.splitlines()[-1]) < 2
    assert time.monotonic() - started < 15, done.stderr


OFF_SCRIPT = """
import json, sys
from bert_squad.front import tracing
result = tracing.from_environment()
print(json.dumps({"off": result is None,
                  "imported": sorted(name for name in sys.modules if name.split(".")[0] == "opentelemetry")}))
"""


@pytest.mark.parametrize("variables", [
    {}, {"OTEL_TRACES_EXPORTER": ""}, {"OTEL_TRACES_EXPORTER": "none"}, {"OTEL_TRACES_EXPORTER": " None "},
    {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"},
], ids=["unset", "empty", "none", "none-any-case", "sdk-disabled"])
def test_off_imports_nothing_and_sends_nothing(receiver, variables):
    environ = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    # everything else points at the receiver, so a tracer started by mistake would show there
    environ.update(receiver.environment("http/protobuf"))
    del environ["OTEL_TRACES_EXPORTER"]
    environ.update(variables)
    done = subprocess.run([sys.executable, "-c", OFF_SCRIPT], cwd=REPO, env=environ, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"off": True, "imported": []}
    assert receiver.exports == {"grpc": 0, "http/protobuf": 0}


@pytest.mark.parametrize("variable, value, allowed", [
    ("OTEL_TRACES_EXPORTER", "zipkin", ("otlp", "none")),
    ("OTEL_TRACES_EXPORTER", "console", ("otlp", "none")),
    ("OTEL_TRACES_EXPORTER", "otlp,console", ("otlp", "none")),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", ("grpc", "http/protobuf")),
    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp", ("grpc", "http/protobuf")),
])
def test_unsupported_settings_fail_clearly(otel_env, variable, value, allowed):
    otel_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    otel_env.setenv(variable, value)
    with pytest.raises(TracingError) as raised:
        tracing.from_environment()
    message = str(raised.value)
    assert variable in message and repr(value) in message, message
    assert all(name in message for name in allowed), message


def test_exporter_settings_the_sdk_refuses_fail_clearly(otel_env):
    pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc",
                        reason="the tracing extras (setup.cfg: server, test) are not installed here")
    otel_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    otel_env.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "lz4")
    with pytest.raises(TracingError, match="grpc trace exporter.*lz4"):
        tracing.from_environment()


def test_attribute_helpers():
    assert tracing.grpc_attributes("/inference.GRPCInferenceService/ModelInfer") == {
        "rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService", "rpc.method": "ModelInfer"}
    assert tracing.http_attributes("GET", "/v2/health/ready") == {
        "http.request.method": "GET", "url.path": "/v2/health/ready", "url.scheme": "http"}
