"""Traces from a real server (the oracle model) to a real OTLP receiver (tests/otlp_receiver.py): a request over
each of the four protocols, sent with a known W3C traceparent and request ID, gives a SERVER span in the caller's
trace with its parent, a CLIENT span for the call to Serving under it, the request's attributes, and its trace ID in
the JSON access line (with its text: --log-request-text); with OTEL_TRACES_EXPORTER unset nothing arrives."""
from __future__ import annotations

import json
import uuid

import pytest

from bert_squad.metadata import read_metadata

QUESTION = {"question": "Which capital?", "context": "The city of Paris is the capital of France, they say."}
SERVING_CALL = "mindspore.serving.proto.MSService/Predict"  # the front door's call to Serving's master


@pytest.fixture(scope="module")
def receiver():
    from otlp_receiver import OtlpReceiver

    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def traced(oracle_servable, receiver, tmp_path_factory):
    from harness import Server

    env = {**receiver.environment("grpc"), "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "qa-test"}
    with Server(tmp_path_factory.mktemp("traced"), oracle_servable["servable_dir"],
                extra_args=["--log-format", "json", "--log-request-text"], env=env) as server:
        yield server


def ask(server, protocol: str, traceparent: str, request_id: str) -> None:
    """One question over `protocol`, carrying the caller's trace and request ID."""
    import grpc

    import wire
    from bert_squad.front.oip.stubs import pb, pb_grpc
    from bert_squad_client import protocol as ms

    headers = {"traceparent": traceparent, "x-request-id": request_id}
    if protocol == "rest":
        status, _, _ = wire.rest_exchange(server.rest_address, "/model/bert_squad:predict", {"instances": [QUESTION]},
                                          headers=headers)
        assert status == 200
    elif protocol == "oip_rest":
        body = {"inputs": [{"name": n, "datatype": "BYTES", "shape": [1], "data": [QUESTION[n]]}
                           for n in ("question", "context")]}
        status, _, _ = wire.rest_exchange(server.rest_address, "/v2/models/bert_squad/infer", body, headers=headers)
        assert status == 200
    elif protocol == "grpc":
        with grpc.insecure_channel(server.grpc_address) as channel:
            call = channel.unary_unary(ms.PREDICT_PATH, request_serializer=ms.PredictRequest.SerializeToString,
                                       response_deserializer=ms.PredictReply.FromString)
            reply = call(ms.make_request("bert_squad", "predict", 0, [QUESTION]), metadata=list(headers.items()),
                         timeout=30)
        assert len(reply.instances) == 1
    else:
        request = pb.ModelInferRequest(model_name="bert_squad")
        for name in ("question", "context"):
            request.inputs.add(name=name, datatype="BYTES", shape=[1]).contents.bytes_contents.append(
                QUESTION[name].encode())
        with grpc.insecure_channel(server.oip_grpc_address) as channel:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=list(headers.items()), timeout=30)


@pytest.mark.parametrize("protocol", ["rest", "oip_rest", "grpc", "oip_grpc"])
def test_a_request_continues_the_callers_trace_with_a_child_span_for_serving(traced, receiver, oracle_servable,
                                                                              protocol):
    trace_id, parent, request_id = uuid.uuid4().hex, uuid.uuid4().hex[:16], f"traced-{uuid.uuid4().hex[:8]}"
    ask(traced, protocol, f"00-{trace_id}-{parent}-01", request_id)
    spans = receiver.wait_for(lambda got: len([s for s in got if s.trace_id == trace_id]) >= 2, timeout=20)
    spans = [s for s in spans if s.trace_id == trace_id]
    (server,) = [s for s in spans if s.kind == "SERVER"]
    (child,) = [s for s in spans if s.kind == "CLIENT"]
    assert server.parent_span_id == parent and child.parent_span_id == server.span_id
    assert child.name == SERVING_CALL and child.attributes["rpc.system"] == "grpc"
    meta = read_metadata(oracle_servable["servable_dir"] / "bert_squad" / "1")
    a = server.attributes
    assert (a["bert_squad.model"], a["bert_squad.version"], a["bert_squad.questions"]) == ("bert_squad", "1", 1)
    assert (a["bert_squad.runtime"], a["bert_squad.precision"]) == (meta.runtime, meta.precision)
    assert (a["bert_squad.request_id"], a["bert_squad.method"], a["bert_squad.outcome"]) == (request_id, "predict",
                                                                                             "ok")
    if protocol in ("rest", "oip_rest"):
        assert a["http.request.method"] == "POST" and a["http.response.status_code"] == 200
        assert server.name.startswith("POST /") and "{" in server.name  # the route, not the path
    else:
        assert a["rpc.system"] == "grpc" and a["rpc.grpc.status_code"] == 0 and "/" in server.name
    assert server.resource["service.name"] == "qa-test" and server.status != "ERROR"
    line = access_line(traced, request_id)
    assert line["trace_id"] == trace_id and line["protocol"] == protocol
    assert line["text"] == [QUESTION]  # --log-request-text


def access_line(server, request_id: str) -> dict:
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for text in server.log_path.read_text(errors="replace").splitlines():
            start = text.find('{"level"')
            if start >= 0 and f'"request_id": "{request_id}"' in text:
                record = json.loads(text[start:])
                if record["logger"] == "bert_squad.access":
                    return record
        time.sleep(0.2)
    raise AssertionError(f"no access line for {request_id}")


def test_a_refused_request_is_traced_and_a_server_fault_marks_the_span_failed(traced, receiver):
    """A caller's mistake (400) is a span without error status; a request Serving cannot answer is not tested here
    (the oracle answers everything): the 400's outcome and status are on its span."""
    trace_id = uuid.uuid4().hex
    import wire

    status, _, _ = wire.rest_exchange(traced.rest_address, "/v2/models/bert_squad/infer", {"inputs": []},
                                      headers={"traceparent": f"00-{trace_id}-{'1' * 16}-01"})
    assert status == 400
    spans = receiver.wait_for(lambda got: any(s.trace_id == trace_id for s in got), timeout=20)
    (span,) = [s for s in spans if s.trace_id == trace_id]  # refused before Serving: no child
    assert span.attributes["bert_squad.outcome"] == "bad_request" and span.status != "ERROR"
    assert span.attributes["http.response.status_code"] == 400


def test_with_tracing_off_nothing_arrives(oracle_servable, receiver, tmp_path):
    from harness import Server

    env = {**receiver.environment("grpc"), "OTEL_TRACES_EXPORTER": "none", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    before = dict(receiver.exports)
    with Server(tmp_path, oracle_servable["servable_dir"], env=env) as server:
        assert " traces=off " in server.ready_line
        for protocol in ("rest", "oip_rest", "grpc", "oip_grpc"):
            ask(server, protocol, f"00-{uuid.uuid4().hex}-{'2' * 16}-01", f"off-{protocol}")
    assert dict(receiver.exports) == before
