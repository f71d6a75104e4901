"""Request IDs and the access log (bert_squad/front/access.py): the ID's rules and the JSON line's fields in
process, then a real server with --log-format json: IDs given and generated over MindSpore Serving's REST API and
the Open Inference Protocol's REST and gRPC, found in the response, the error body and the access line."""
from __future__ import annotations

import json
import logging
import re
import time
import uuid
from datetime import datetime

import pytest

from bert_squad.contract import logs
from bert_squad.front import access
GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    access.configure("text")  # back to the defaults (access lines on, no request text), then the handlers
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.pure
@pytest.mark.parametrize("given, kept", [
    ("abc-123", True), ("A.b_c:d-9", True), ("x" * 128, True),
    ("x" * 129, False), ("", False), (None, False), ("has space", False), ("semi;colon", False), ("ünï", False),
])
def test_a_request_id_is_the_callers_when_it_has_the_allowed_form_else_a_new_one(given, kept):
    got = access.request_id(given)
    assert got == given if kept else (GENERATED.fullmatch(got) and got != access.request_id(given))


@pytest.mark.pure
def test_json_access_lines_carry_the_fields_and_rfc3339_utc_time(capsys, restore_logging):
    access.configure("json")
    started = time.perf_counter() - 0.25
    access.log_request(started, request_id="r-1", protocol="oip_rest", model="bert_squad", version="1",
                       method="predict", status=400, questions=2, client="127.0.0.1:5", error="bad \"input\"\n")
    logs.say("bert-squad-serve: stopped")
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert {k: first[k] for k in ("level", "logger", "request_id", "protocol", "model", "version", "method", "status",
                                  "questions", "client", "error")} == {
        "level": "INFO", "logger": "bert_squad.access", "request_id": "r-1", "protocol": "oip_rest",
        "model": "bert_squad", "version": "1", "method": "predict", "status": 400, "questions": 2,
        "client": "127.0.0.1:5", "error": "bad \"input\"\n"}
    assert 250 <= first["duration_ms"] < 5000
    assert datetime.fromisoformat(first["time"]).utcoffset().total_seconds() == 0
    assert second["message"] == "bert-squad-serve: stopped" and "fresh_line" not in second
    with pytest.raises(TypeError):
        access.log_request(started, question="private text")  # not a field: no way to log text by accident


@pytest.mark.pure
def test_text_lines_keep_the_serve_commands_form_and_errors_go_to_stderr(capsys, restore_logging):
    access.configure("text")
    logs.say("bert-squad-serve: ready grpc=x", fresh_line=True)
    access.log_request(time.perf_counter(), request_id="r-2", protocol="rest", status=200)
    logs.say("bert-squad-serve: error: it broke", error=True)
    out, err = capsys.readouterr()
    lines = out.split("\n")
    assert lines[:2] == ["", "bert-squad-serve: ready grpc=x"]
    assert re.fullmatch(r"bert-squad-serve: access request_id=r-2 protocol=rest status=200 duration_ms=[\d.]+",
                        lines[2])
    assert err == "bert-squad-serve: error: it broke\n"


@pytest.mark.pure
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_access_log_off_writes_no_access_line_but_keeps_the_serve_commands_own(capsys, restore_logging, log_format):
    access.configure(log_format, access_lines=False)
    access.log_request(time.perf_counter(), request_id="r-3", protocol="rest", status=200)
    logs.say("bert-squad-serve: stopped")
    out = capsys.readouterr().out
    assert "r-3" not in out and "bert-squad-serve: stopped" in out
    access.configure(log_format)
    access.log_request(time.perf_counter(), request_id="r-4", protocol="rest", status=200)
    assert "r-4" in capsys.readouterr().out


@pytest.mark.pure
def test_request_text_reaches_the_access_line_only_when_asked_for(capsys, restore_logging):
    from bert_squad_client import protocol

    instances = [{"question": "Which capital?", "context": "Paris is in France.", "top_k": 3}]
    served = protocol.make_request("bert_squad", "predict", 0, instances[:1]).instances
    assert access.request_text(instances) == access.request_text(served) == [
        {"question": "Which capital?", "context": "Paris is in France."}]
    access.configure("json")
    assert not access.wants_text()
    access.log_request(time.perf_counter(), request_id="r-5", text=access.request_text(instances))
    access.configure("json", request_text=True)
    assert access.wants_text()
    access.log_request(time.perf_counter(), request_id="r-6", text=access.request_text(instances))
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert "text" not in first and "Paris" not in json.dumps(first)
    assert second["text"] == [{"question": "Which capital?", "context": "Paris is in France."}]


# ---------------------------------------------------------------- a real server, --log-format json

@pytest.fixture(scope="module")
def json_server(oracle_servable, tmp_path_factory):
    from harness import Server

    with Server(tmp_path_factory.mktemp("json-log"), oracle_servable["servable_dir"],
                extra_args=["--log-format", "json"]) as server:
        yield server


def access_lines(server) -> dict:
    """request_id -> its access line, from the server's output (JSON lines; Serving's own lines are not JSON)."""
    found = {}
    for line in server.log_path.read_text(errors="replace").splitlines():
        start = line.find('{"level"')
        if start < 0:
            continue
        record = json.loads(line[start:])
        if record["logger"] == "bert_squad.access":
            found[record["request_id"]] = record
    return found


QUESTION = {"question": "Which capital?", "context": "The city of Paris is the capital of France, they say."}
OIP_BODY = {"inputs": [{"name": name, "datatype": "BYTES", "shape": [2], "data": [QUESTION[name]] * 2}
                       for name in ("question", "context")]}


def test_request_ids_reach_the_response_the_error_body_and_the_json_access_line(json_server):
    import wire

    given = f"client-{uuid.uuid4().hex[:8]}"
    rest = json_server.rest_address
    status, headers, _ = wire.rest_exchange(rest, "/model/bert_squad:predict", {"instances": [QUESTION]},
                                            headers={"X-Request-ID": given})
    assert status == 200 and headers["x-request-id"] == given
    status, headers, _ = wire.rest_exchange(rest, "/v2/models/bert_squad/infer", OIP_BODY,
                                            headers={"X-Request-ID": "not valid!"})
    generated = headers["x-request-id"]
    assert status == 200 and GENERATED.fullmatch(generated)
    status, headers, data = wire.rest_exchange(rest, "/v2/models/bert_squad/infer", {"inputs": []})
    refused = headers["x-request-id"]
    assert status == 400 and json.loads(data)["request_id"] == refused
    status, headers, data = wire.rest_exchange(rest, "/model/nope:predict", {"instances": [QUESTION]})
    assert status == 404 and json.loads(data)["request_id"] == headers["x-request-id"]
    missing = headers["x-request-id"]
    grpc_given, grpc_trailing = f"grpc-{uuid.uuid4().hex[:8]}", oip_grpc_call(json_server, "bert_squad")
    assert GENERATED.fullmatch(grpc_trailing["x-request-id"])
    assert oip_grpc_call(json_server, "bert_squad", grpc_given)["x-request-id"] == grpc_given
    unknown = oip_grpc_call(json_server, "nope", "grpc-unknown")
    assert unknown["code"] == "NOT_FOUND" and unknown["x-request-id"] == "grpc-unknown"

    deadline, lines = time.monotonic() + 10, {}
    while time.monotonic() < deadline and not {given, generated, refused, missing, grpc_given} <= set(lines):
        time.sleep(0.2)
        lines = access_lines(json_server)
    rest_line, oip_line, bad_line = lines[given], lines[generated], lines[refused]
    assert {k: rest_line[k] for k in ("protocol", "model", "version", "method", "status", "questions")} == {
        "protocol": "rest", "model": "bert_squad", "version": "1", "method": "predict", "status": 200,
        "questions": 1}
    assert {k: oip_line[k] for k in ("protocol", "model", "version", "status", "questions")} == {
        "protocol": "oip_rest", "model": "bert_squad", "version": "1", "status": 200, "questions": 2}
    assert bad_line["status"] == 400 and "inputs" in bad_line["error"]
    assert lines[missing]["status"] == 404 and lines[missing]["model"] == "nope"
    grpc_line = lines[grpc_given]
    assert (grpc_line["protocol"], grpc_line["status"], grpc_line["questions"]) == ("oip_grpc", "OK", 1)
    assert lines["grpc-unknown"]["status"] == "NOT_FOUND"
    for line in (rest_line, oip_line, grpc_line):
        assert line["client"].startswith(("127.0.0.1:", "ipv4:127.0.0.1:")) and line["duration_ms"] > 0
        assert datetime.fromisoformat(line["time"]).utcoffset().total_seconds() == 0
        assert "Paris" not in json.dumps(line)  # no question or context text in the log


def oip_grpc_call(server, model: str, request_id: str | None = None) -> dict:
    """One ModelInfer with our stubs: its trailing metadata and status code name."""
    import grpc

    from bert_squad.front.oip.stubs import pb, pb_grpc

    request = pb.ModelInferRequest(model_name=model)
    for name in ("question", "context"):
        request.inputs.add(name=name, datatype="BYTES", shape=[1]).contents.bytes_contents.append(
            QUESTION[name].encode())
    metadata = [("x-request-id", request_id)] if request_id else None
    with grpc.insecure_channel(server.oip_grpc_address) as channel:
        try:
            _, call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(request, metadata=metadata,
                                                                                     timeout=30)
            code, trailing = "OK", call.trailing_metadata()
        except grpc.RpcError as error:
            code, trailing = error.code().name, error.trailing_metadata()
    return {"code": code, **dict(trailing)}


def test_the_rest_clients_errors_carry_the_request_id_of_the_access_line(json_server):
    from bert_squad_client import RequestError, RestClient

    with RestClient(json_server.rest_address, timeout=30) as client:
        with pytest.raises(RequestError) as refused_question:
            client.answer("", "The city of Paris is the capital of France.")  # a refused question, in a 200
    with RestClient(json_server.rest_address, servable="nope", timeout=30) as client:
        with pytest.raises(RequestError) as refused_request:
            client.answer("Which capital?", "Paris.")  # a refused request, a 404
    question, request = refused_question.value, refused_request.value
    assert question.server_message.endswith("question is empty; send the text of the question")
    assert request.code == 404 and request.server_message.startswith("Request servable(nope)")
    for error in (question, request):
        assert GENERATED.fullmatch(error.request_id) and f"[request id {error.request_id}]" in str(error)
    deadline, lines = time.monotonic() + 10, {}
    while time.monotonic() < deadline and not {question.request_id, request.request_id} <= set(lines):
        time.sleep(0.2)
        lines = access_lines(json_server)
    assert (lines[question.request_id]["status"], lines[request.request_id]["status"]) == (200, 404)


def test_servings_grpc_api_through_the_front_door_carries_the_request_id_to_the_client_and_the_access_line(
        json_server):
    """MindSpore Serving's gRPC API is the front door's too: the ID comes back in trailing metadata, the gRPC
    client's errors carry it, and each call has its access line, with protocol grpc."""
    import grpc
    import wire
    from mindspore_serving.proto import ms_service_pb2_grpc as pb_grpc

    from bert_squad_client import Client, RequestError, protocol

    given = f"grpc-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(json_server.grpc_address) as channel:
        reply, call = pb_grpc.MSServiceStub(channel).Predict.with_call(
            wire.make_request("predict", [QUESTION]), metadata=[("x-request-id", given)], timeout=30)
        assert wire.read_reply(reply)[0]["answer"] and dict(call.trailing_metadata())["x-request-id"] == given
        with pytest.raises(grpc.RpcError) as garbage:
            channel.unary_unary(protocol.PREDICT_PATH)(b"\xff\xff\xff", timeout=30)
    assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "PredictRequest" in garbage.value.details()
    garbage_id = dict(garbage.value.trailing_metadata())["x-request-id"]
    with Client(json_server.grpc_address, timeout=30, retry=None) as client:
        with pytest.raises(RequestError) as refused_question:
            client.answer("", "The city of Paris is the capital of France.")
    with Client(json_server.grpc_address, timeout=30, retry=None, version=7) as client:
        with pytest.raises(RequestError) as refused_request:
            client.answer("Which capital?", "Paris.")
    question, request = refused_question.value, refused_request.value
    for error in (question, request):
        assert GENERATED.fullmatch(error.request_id) and f"[request id {error.request_id}]" in str(error)
    assert GENERATED.fullmatch(garbage_id)

    wanted = {given, garbage_id, question.request_id, request.request_id}
    deadline, lines = time.monotonic() + 10, {}
    while time.monotonic() < deadline and not wanted <= set(lines):
        time.sleep(0.2)
        lines = access_lines(json_server)
    line = lines[given]
    assert {k: line[k] for k in ("protocol", "model", "version", "method", "status", "questions")} == {
        "protocol": "grpc", "model": "bert_squad", "version": "1", "method": "predict", "status": "OK",
        "questions": 1}
    assert line["client"].startswith("ipv4:127.0.0.1:") and "Paris" not in json.dumps(line)
    assert lines[garbage_id]["status"] == "INVALID_ARGUMENT" and "PredictRequest" in lines[garbage_id]["error"]
    assert lines[question.request_id]["questions"] == 1 and "error" not in lines[question.request_id]
    assert lines[request.request_id]["version"] == "7"
    assert lines[request.request_id]["error"] == request.server_message  # Serving's refusal, in a reply with OK
