"""The Open Inference Protocol codecs without a server: the tensor table and metadata, the bad-input matrix over
REST and gRPC (same status, same message), nesting bombs, and how a refused question is reported."""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from bert_squad import settings
from bert_squad.front.oip import grpc_codec, models, rest_codec
from bert_squad.front.oip.models import OipError
from bert_squad.front.oip.stubs import pb

pytestmark = pytest.mark.pure

TABLE = models.models()
QA = TABLE[settings.SERVABLE_NAME]
CONTEXT = "Ada wrote it in 1843."


def rest_body(inputs: list, **extra) -> bytes:
    """A JSON inference request of inputs (name, datatype, shape, data)."""
    return json.dumps({"inputs": [{"name": n, "datatype": d, "shape": s, "data": v} for n, d, s, v in inputs],
                       **extra}).encode()


def grpc_request(inputs: list, model: str = QA.name, version: str = ""):
    """The same inputs as a ModelInferRequest, in typed contents."""
    message = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, kind, shape, data in inputs:
        entry = message.inputs.add(name=name, datatype=kind, shape=shape)
        if kind == "BYTES":
            entry.contents.bytes_contents.extend(v.encode() for v in data)
        elif kind == "INT32":
            entry.contents.int_contents.extend(data)
        else:
            entry.contents.fp32_contents.extend(data)
    return message


def rest_error(body: bytes, header=None, model=QA) -> OipError:
    with pytest.raises(OipError) as caught:
        rest_codec.parse_infer(body, header, model)
    return caught.value


def grpc_error(message) -> OipError:
    with pytest.raises(OipError) as caught:
        grpc_codec.parse_infer(message, TABLE, "1")
    return caught.value


GOOD = [("question", "BYTES", [1], ["Who wrote it?"]), ("context", "BYTES", [1], [CONTEXT])]

# (case, inputs, status, words the message must hold): each sent over REST (JSON) and gRPC (contents).
MATRIX = [
    ("datatype", [("question", "FP32", [1], [1.0]), GOOD[1]], 400, ["datatype 'FP32'", "send BYTES"]),
    ("shape", [("question", "BYTES", [1, 2], ["a", "b"]), GOOD[1]], 400, ["shape [1, 2]", "[N] or [N, 1]"]),
    ("missing input", [GOOD[0]], 400, ["needs input context", "send question (BYTES)"]),
    ("unknown input", [*GOOD, ("answer", "BYTES", [1], ["x"])], 400, ["no input 'answer'", "question, context"]),
    ("twice", [*GOOD, GOOD[0]], 400, ["sent twice"]),
    ("N mismatch", [("question", "BYTES", [2], ["a", "b"]), GOOD[1]], 400, ["question has 2", "context 1"]),
    ("count", [("question", "BYTES", [2], ["a"]), GOOD[1]], 400, ["holds 2 elements", "its data has 1"]),
    ("no questions", [("question", "BYTES", [0], []), ("context", "BYTES", [0], [])], 400, ["at least one"]),
    ("top_k range", [*GOOD, ("top_k", "INT32", [1], [0])], 400, ["'top_k' holds 0", f"1 to {settings.MAX_TOP_K}"]),
    ("top_k count", [*GOOD, ("top_k", "INT32", [2], [1, 2])], 400, ["2 elements for 1 questions"]),
    ("token shape", [("input_ids", "INT32", [3], [1, 2, 3])], 400, ["shape [3]", "[N, seq]"]),
]


@pytest.mark.parametrize("case, inputs, status, words", MATRIX, ids=[case[0] for case in MATRIX])
def test_bad_input_matrix_same_over_rest_and_grpc(case, inputs, status, words):
    model = TABLE["bert_squad_features"] if inputs[0][0] == "input_ids" else QA
    over_rest = rest_error(rest_body(inputs), model=model)
    over_grpc = grpc_error(grpc_request(inputs, model.name))
    assert (over_rest.status, over_rest.message) == (over_grpc.status, over_grpc.message) == (
        status, over_rest.message)
    for word in words:
        assert word in over_rest.message
    assert grpc_codec.status_code(over_grpc) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("body, words", [
    (b"", ["empty"]), (b"{", ["not valid JSON"]), (b"[1]", ["JSON array, not an object"]),
    (b'{"inputs": {}}', ["'inputs' of the request is a JSON object; send a JSON array"]),
    (b'{"inputs": []}', ["'inputs' is empty"]), (b'\xff{}', ["not valid"]),
    (rest_body([("question", "BYTES", [1], [7]), GOOD[1]]), ["holds a integer", "strings"]),
    (rest_body([("question", "BYTES", [1], [["a"]]), GOOD[1]]), ["nests deeper than its shape"]),
    (rest_body([*GOOD, ("top_k", "INT32", [1], [2**31])]), ["INT32 data is JSON integers"]),
    (b'{"inputs": [{"name": "question", "datatype": "BYTES", "shape": [1]}]}', ["has no data"]),
    (rest_body(GOOD, outputs=[{"name": "answers"}]), ["no output 'answers'", "top_answers"]),
    (rest_body(GOOD, id=7), ["'id' is a JSON integer"]),
])
def test_rest_body_errors_say_what_to_send(body, words):
    error = rest_error(body)
    assert error.status == 400
    for word in words:
        assert word in error.message, error.message


@pytest.mark.parametrize("body", [
    b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"instances": ' + b"[" * 100_000,
    b"{" + b'"a": {' * 100_000,
])
def test_nesting_bomb_is_a_400_not_a_recursion_error(body):
    started = time.perf_counter()
    error = rest_error(body)
    assert error.status == 400 and "JSON" in error.message
    assert time.perf_counter() - started < 1.0


def binary_body(parts: list, sizes=None, extra: bytes = b"") -> tuple:
    """A binary-extension body: each part (name, datatype, shape, raw bytes) after the JSON header."""
    header = json.dumps({"inputs": [
        {"name": n, "datatype": d, "shape": s,
         "parameters": {"binary_data_size": len(b) if sizes is None else sizes[i]}}
        for i, (n, d, s, b) in enumerate(parts)]}).encode()
    return header + b"".join(b for *_, b in parts) + extra, str(len(header))


def prefixed(*texts: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(t)) + t for t in texts)


def test_binary_request_decodes_length_prefixed_bytes_and_int32():
    body, header = binary_body([("question", "BYTES", [2], prefixed(b"Who?", "Wer?".encode())),
                                ("context", "BYTES", [2, 1], prefixed(CONTEXT.encode(), "Ada schrieb es.".encode())),
                                ("top_k", "INT32", [2], np.array([3, 1], "<i4").tobytes())])
    request = rest_codec.parse_infer(body, header, QA).request
    assert request.method == "predict_with_options"
    assert [(i["question"], i["context"], int(i["top_k"]), int(i["max_answer_length"])) for i in request.instances] == [
        ("Who?", CONTEXT, 3, settings.MAX_ANSWER_LENGTH), ("Wer?", "Ada schrieb es.", 1, settings.MAX_ANSWER_LENGTH)]


@pytest.mark.parametrize("parts, sizes, extra, header, words", [
    ([("question", "BYTES", [1], prefixed(b"Who?"))], [50], b"", None, ["goes past the end of the body"]),
    ([("question", "BYTES", [1], prefixed(b"Who?"))], None, b"xx", None, ["add up to"]),
    ([("question", "BYTES", [2], prefixed(b"Who?"))], None, b"", None, ["holds 2 elements", "its data has 1"]),
    ([("question", "BYTES", [1], struct.pack("<I", 9) + b"Who?")], None, b"", None, ["says 9 bytes but only 4"]),
    ([("question", "BYTES", [1], b"\x01\x00")], None, b"", None, ["ends inside the 4-byte length"]),
    ([("top_k", "INT32", [1], b"\x01\x00")], None, b"", None, ["is 2 bytes", "takes 4"]),
    ([("question", "BYTES", [1], prefixed(b"Who?"))], None, b"", "12345678", ["Inference-Header-Content-Length"]),
    ([("question", "BYTES", [1], prefixed(b"Who?"))], None, b"", "0", ["raw binary request"]),
])
def test_binary_sizes_that_do_not_add_up_are_a_400(parts, sizes, extra, header, words):
    body, length = binary_body(parts, sizes, extra)
    error = rest_error(body, header or length)
    assert error.status == 400
    for word in words:
        assert word in error.message, error.message


def test_grpc_raw_input_contents_and_their_errors():
    message = pb.ModelInferRequest(model_name=QA.name)
    message.inputs.add(name="question", datatype="BYTES", shape=[1])
    message.inputs.add(name="context", datatype="BYTES", shape=[1])
    message.raw_input_contents.extend([prefixed(b"Who?"), prefixed(CONTEXT.encode())])
    parsed = grpc_codec.parse_infer(message, TABLE, "1")
    assert parsed.request.instances == [{"question": "Who?", "context": CONTEXT}]
    del message.raw_input_contents[1]
    assert "raw_input_contents has 1 entries for 2 inputs" in grpc_error(message).message
    message.raw_input_contents.append(prefixed(b"a", b"b"))
    assert "holds 1 elements, but its data has 2" in grpc_error(message).message


@pytest.mark.parametrize("model, version, words", [
    ("bert", "", ["no model 'bert'", "bert_squad, bert_squad_features"]),
    (QA.name, "2", ["no version '2'", "serves version 1"]),
])
def test_unknown_model_or_version_is_404_not_found(model, version, words):
    error = grpc_error(grpc_request(GOOD, model, version))
    assert error.status == 404 and grpc_codec.status_code(error) == grpc.StatusCode.NOT_FOUND
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    with pytest.raises(OipError) as over_rest:
        rest_codec.parse_path(path, TABLE, "1")
    assert over_rest.value.message == error.message
    for word in words:
        assert word in error.message


def test_paths_and_metadata():
    assert rest_codec.parse_path("/v2/models/bert_squad", TABLE, "1") == (QA, "metadata")
    assert rest_codec.parse_path("/v2/models/bert_squad/versions/1/ready", TABLE, "1") == (QA, "ready")
    assert rest_codec.parse_path("/v2/models/bert_squad_features/infer", TABLE, "1")[1] == "infer"
    assert QA.metadata("1") == {
        "name": "bert_squad", "versions": ["1"], "platform": "mindspore_serving",
        "inputs": [{"name": "question", "datatype": "BYTES", "shape": [-1]},
                   {"name": "context", "datatype": "BYTES", "shape": [-1]},
                   {"name": "top_k", "datatype": "INT32", "shape": [-1]},
                   {"name": "max_answer_length", "datatype": "INT32", "shape": [-1]}],
        "outputs": [{"name": "answer", "datatype": "BYTES", "shape": [-1]},
                    {"name": "score", "datatype": "FP32", "shape": [-1]},
                    {"name": "start", "datatype": "INT32", "shape": [-1]},
                    {"name": "end", "datatype": "INT32", "shape": [-1]},
                    {"name": "top_answers", "datatype": "BYTES", "shape": [-1, -1]},
                    {"name": "top_starts", "datatype": "INT32", "shape": [-1, -1]},
                    {"name": "top_ends", "datatype": "INT32", "shape": [-1, -1]},
                    {"name": "top_scores", "datatype": "FP32", "shape": [-1, -1]},
                    {"name": "error", "datatype": "BYTES", "shape": [-1]}]}
    from bert_squad.serving import servable_glue  # the servable's own output names: each has its tensor
    assert set(servable_glue.ANSWER_OUTPUTS) <= {t.name for t in QA.outputs}
    grpc_metadata = grpc_codec.model_metadata(TABLE["bert_squad_features"], "1")
    assert [(t.name, t.datatype, list(t.shape)) for t in grpc_metadata.inputs] == [
        ("input_ids", "INT32", [-1, -1]), ("input_mask", "INT32", [-1, -1]), ("token_type_id", "INT32", [-1, -1])]
    assert [t.name for t in grpc_metadata.outputs] == ["start_logits", "end_logits", "error"]


def answer(text: str, start: int, top: list) -> dict:
    """One answered instance as Serving replies it (servable_glue.postprocess's types)."""
    return {"answer": text, "score": np.float32(top[0][2]), "start": np.int32(start),
            "end": np.int32(start + len(text)), "top_starts": np.array([s for s, _, _ in top], np.int32),
            "top_ends": np.array([e for _, e, _ in top], np.int32),
            "top_scores": np.array([p for _, _, p in top], np.float32)}


def test_a_refused_question_is_reported_in_the_error_output_not_silently():
    body = rest_body([("question", "BYTES", [3], ["Who?", "", "When?"]), ("context", "BYTES", [3], [CONTEXT] * 3)],
                     outputs=[{"name": "answer"}, {"name": "top_answers"}])
    parsed = rest_codec.parse_infer(body, None, QA)
    outcomes = [answer("Ada", 0, [(0, 3, 0.75), (4, 9, 0.25)]), ValueError("question is empty; send a question"),
                answer("1843", 16, [(16, 20, 0.5)])]
    reply, headers = rest_codec.response(parsed, models.to_outputs(parsed.request, outcomes), "1")
    assert headers == {"Content-Type": "application/json"}
    assert json.loads(reply)["outputs"] == [
        {"name": "answer", "datatype": "BYTES", "shape": [3], "data": ["Ada", "", "1843"]},
        {"name": "top_answers", "datatype": "BYTES", "shape": [3, 2], "data": ["Ada", "wrote", "", "", "1843", ""]},
        {"name": "error", "datatype": "BYTES", "shape": [3], "data": ["", "question is empty; send a question", ""]}]
    grpc_reply = grpc_codec.response(parsed, models.to_outputs(parsed.request, outcomes), "1")
    assert [o.name for o in grpc_reply.outputs] == ["answer", "top_answers", "error"]
    assert grpc_reply.raw_output_contents[2] == prefixed(b"", b"question is empty; send a question", b"")


def test_every_question_refused_refuses_the_request_with_each_reason():
    parsed = rest_codec.parse_infer(rest_body([("question", "BYTES", [2], ["", ""]),
                                               ("context", "BYTES", [2], [CONTEXT, CONTEXT])]), None, QA)
    with pytest.raises(OipError) as caught:
        models.to_outputs(parsed.request, [ValueError("empty"), ValueError("too long")])
    assert (caught.value.status, caught.value.message) == (400, "question 0: empty; question 1: too long")


def test_binary_outputs_when_asked_for_per_output_or_for_all():
    parsed = rest_codec.parse_infer(rest_body(GOOD, outputs=[{"name": "start", "parameters": {"binary_data": True}},
                                                             {"name": "answer"}]), None, QA)
    outputs = models.to_outputs(parsed.request, [answer("Ada", 0, [(0, 3, 0.5)])])
    reply, headers = rest_codec.response(parsed, outputs, "1")
    size = int(headers[rest_codec.HEADER_LENGTH])
    head = json.loads(reply[:size])
    assert head["outputs"][0] == {"name": "start", "datatype": "INT32", "shape": [1],
                                  "parameters": {"binary_data_size": 4}}
    assert head["outputs"][1]["data"] == ["Ada"] and reply[size:] == struct.pack("<i", 0)
    every = rest_codec.parse_infer(rest_body(GOOD, parameters={"binary_data_output": True}), None, QA)
    reply, headers = rest_codec.response(every, outputs, "1")
    assert all("data" not in o for o in json.loads(reply[:int(headers[rest_codec.HEADER_LENGTH])])["outputs"])


def test_features_model_maps_windows_to_predict_features():
    ids = [[101, 2040, 102], [101, 2043, 102]]
    inputs = [("input_ids", "INT32", [2, 3], sum(ids, [])), ("input_mask", "INT32", [2, 3], [1] * 6),
              ("token_type_id", "INT32", [2, 3], [0] * 6)]
    parsed = grpc_codec.parse_infer(grpc_request(inputs, "bert_squad_features"), TABLE, "1")
    assert parsed.request.method == "predict_features"
    assert [i["input_ids"].tolist() for i in parsed.request.instances] == ids
    logits = [{"start_logits": np.array([0.5, 1.5, -2], np.float32), "end_logits": np.zeros(3, np.float32)},
              ValueError("input_mask has no 1")]
    outputs = models.to_outputs(parsed.request, logits)
    assert outputs["start_logits"].tolist() == [[0.5, 1.5, -2], [0, 0, 0]]
    assert outputs["error"].tolist() == [b"", b"input_mask has no 1"]


@pytest.mark.parametrize("status, code", [(400, "INVALID_ARGUMENT"), (404, "NOT_FOUND"), (413, "RESOURCE_EXHAUSTED"),
                                          (429, "RESOURCE_EXHAUSTED"), (503, "UNAVAILABLE"), (500, "INTERNAL")])
def test_status_codes(status, code):
    assert grpc_codec.status_code(OipError(status, "x")) == getattr(grpc.StatusCode, code)
    assert rest_codec.error_response(OipError(status, "x", retry_after=1)) == (
        status, b'{"error": "x"}', {"Content-Type": "application/json", "Retry-After": "1"})


DOCS = Path(__file__).resolve().parent.parent / "docs" / "oip.md"


def test_docs_tensor_tables_are_the_models():
    """docs/oip.md's two tables list each model's tensors with their datatypes and directions."""
    rows = [line.split("|")[1:4] for line in DOCS.read_text().splitlines() if line.startswith("| `")]
    documented = [(name.strip(" `"), kind.strip(), datatype.strip()) for name, kind, datatype in rows]
    expected = [(t.name, "optional input" if t.optional else "input", t.datatype) if t in m.inputs
                else (t.name, "output", t.datatype) for m in TABLE.values() for t in (*m.inputs, *m.outputs)]
    assert documented == expected


def test_docs_curl_request_is_one_the_codec_takes():
    text = DOCS.read_text()
    body = text[text.index("-d '", text.index("```shell\ncurl")) + 4:]
    parsed = rest_codec.parse_infer(body[:body.index("'")].encode(), None, QA)
    assert parsed.id == "1" and [n for n, _ in parsed.outputs] == ["answer", "start", "end", "top_answers"]
    assert [(i["question"], int(i["top_k"])) for i in parsed.request.instances] == [("Who wrote Hamlet?", 2),
                                                                                   ("What is Paris the capital of?", 2)]


def test_docs_python_examples_compile_and_use_the_documented_names():
    """The examples need a server to run (the front door's tests run them); here: they parse, and every tensor
    they name is one of the models'."""
    import re

    text = DOCS.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 3
    names = {t.name for m in TABLE.values() for t in (*m.inputs, *m.outputs)}
    for block in blocks:
        compile(block, "docs/oip.md", "exec")
        assert set(re.findall(r'Infer(?:Input|RequestedOutput)\("(\w+)"', block)) <= names
        assert set(re.findall(r'as_numpy\("(\w+)"\)', block)) <= names


def test_serving_request_is_the_one_the_mindspore_client_sends_for_the_same_questions():
    from bert_squad.front.oip import serving
    from bert_squad_client import protocol
    from bert_squad_client.results import answer_request, logits_request

    pairs = [("Who wrote it?", CONTEXT), ("When?", "In 1843.")]
    for top_k, extra in ((1, []), (3, [("top_k", "INT32", [1], [3])])):
        body = rest_body([("question", "BYTES", [2], [q for q, _ in pairs]),
                          ("context", "BYTES", [2], [c for _, c in pairs]), *extra])
        ours = serving.predict_request(rest_codec.parse_infer(body, None, QA).request, "bert_squad", 0)
        asked = [answer_request(q, c, top_k, None) for q, c in pairs]
        theirs = protocol.make_request("bert_squad", asked[0][0], 0, [inputs for _, inputs in asked])
        assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
    ids = [[101, 7, 102], [101, 9, 102]]
    tokens = [("input_ids", "INT32", [2, 3], sum(ids, [])), ("input_mask", "INT32", [2, 3], [1] * 6),
              ("token_type_id", "INT32", [2, 3], [0] * 6)]
    parsed = grpc_codec.parse_infer(grpc_request(tokens, "bert_squad_features"), TABLE, "1")
    instances, _ = logits_request(np.array(ids), np.ones((2, 3), int), np.zeros((2, 3), int))
    theirs = protocol.make_request("bert_squad", "predict_features", 2, instances)
    assert serving.predict_request(parsed.request, "bert_squad", 2).SerializeToString(
        deterministic=True) == theirs.SerializeToString(deterministic=True)


def serving_reply(instances: list, errors: list = ()):
    """A PredictReply: each instance a dict of outputs; errors (code, text) per instance or for the request."""
    from bert_squad_client import protocol

    reply = protocol.PredictReply()  # a reply's instances are of the request's Instance type
    reply.instances.extend(protocol.make_request("bert_squad", "predict", 0, instances).instances)
    for code, text in errors:
        reply.error_msg.add(error_code=code, error_msg=text.encode())
    return reply


def test_serving_reply_outcomes_and_whole_request_failures():
    from bert_squad.front.oip import serving

    two = rest_codec.parse_infer(rest_body([("question", "BYTES", [2], ["Who wrote it?", ""]),
                                            ("context", "BYTES", [2], [CONTEXT] * 2)]), None, QA).request
    answered = answer("Ada", 0, [(0, 3, 0.75)])
    got = serving.outcomes(serving_reply([answered, {}], [(0, ""), (3, "the question is empty")]), two)
    assert got[0]["answer"] == "Ada" and got[1].server_message == "the question is empty"
    outputs = models.to_outputs(two, got)
    assert outputs["answer"].tolist() == [b"Ada", b""] and outputs["error"].tolist() == [b"", b"the question is empty"]
    every = serving.outcomes(serving_reply([], [(3, "text too long")]), two)
    with pytest.raises(OipError) as refused:
        models.to_outputs(two, every)
    assert (refused.value.status, refused.value.message) == (400, "question 0: text too long; question 1: text too "
                                                                  "long")
    for errors, status, retry in (([(1, "enqueued requests count exceeds the limit")], 429, 1),
                                  ([(5, "servable is not available")], 503, 1),
                                  ([(0, ""), (4, "worker is restarting")], 503, 1)):
        with pytest.raises(OipError) as failed:
            serving.outcomes(serving_reply([answered] * (len(errors) - 1 and 2), errors), two)
        assert (failed.value.status, failed.value.retry_after) == (status, retry), failed.value.message
    with pytest.raises(OipError) as short:
        serving.outcomes(serving_reply([answered]), two)
    assert short.value.status == 502
