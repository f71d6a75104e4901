"""The Open Inference Protocol (KServe v2) against a real server (the oracle model), through the clients people
use: tritonclient.http (binary and JSON inputs, binary outputs asked for) in this process, tritonclient.grpc and
kserve's REST and gRPC clients in a subprocess (they register their own copies of the protocol's messages, which
our stubs share: tests/test_oip_clients.py says why). Every answer is compared with the MindSpore Serving API's
answer to the same question (bert_squad_client over Serving's gRPC), so nothing here is copied from our codec.
Then the bad-input matrix over OIP REST and gRPC, the nesting bomb on every JSON route, and the metrics.

The clients are installed in the Python 3.11 venv only (setup.cfg [reference]): the module runs there.
"""
from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from bert_squad_client import Client
from harness import run_python

pytestmark = pytest.mark.pure
triton_http = pytest.importorskip("tritonclient.http",
                                  reason="tritonclient is in setup.cfg [reference] (Python 3.11 venv)")
triton_utils = pytest.importorskip("tritonclient.utils")

QUESTION = "Which capital?"
CONTEXTS = [
    "The city of Paris is the capital of France, they say.",
    "Ünïcödé façade café: naïve Paris, près de la France métropolitaine.",
    "东京和大阪都很大。Paris 是 France 的首都。",
    "The committee met again. " * 40 + "Later Paris became the capital of France again.",
]
BAD = {"": "question is empty; send the text of the question",
       "why " * 600: "question has 2400 characters, more than the limit of 2000; shorten it"}


@pytest.fixture(scope="module")
def reference(oracle):
    """The MindSpore Serving API's answers (gRPC, bert_squad_client) to QUESTION about each context, top 3."""
    with Client(oracle.grpc_address, timeout=60) as client:
        return {context: client.answer(QUESTION, context, top_k=3) for context in CONTEXTS}


def answers(result, names=("answer", "start", "end", "score")) -> list:
    """Rows of (answer, start, end, score) from a tritonclient result."""
    columns = [result.as_numpy(name).reshape(-1).tolist() for name in names]
    return [tuple(v.decode() if isinstance(v, bytes) else v for v in row) for row in zip(*columns)]


def expected(reference, contexts) -> list:
    return [(r.text, r.start, r.end, float(np.float32(r.score))) for r in (reference[c] for c in contexts)]


def texts(module, name: str, values: list, binary: bool = True, shape=None):
    tensor = module.InferInput(name, shape or [len(values)], "BYTES")
    array = np.array([v.encode() for v in values], dtype=np.object_).reshape(shape or [len(values)])
    if module is triton_http:
        tensor.set_data_from_numpy(array, binary_data=binary)
    else:
        tensor.set_data_from_numpy(array)
    return tensor


# ---------------------------------------------------------------- tritonclient.http, in this process

@pytest.mark.parametrize("binary_inputs", [True, False], ids=["binary inputs", "JSON inputs"])
@pytest.mark.parametrize("binary_outputs", [True, False], ids=["binary outputs", "JSON outputs"])
@pytest.mark.parametrize("n", [1, 4])
def test_tritonclient_http_answers_as_the_mindspore_serving_api(oracle, reference, binary_inputs, binary_outputs, n):
    client = triton_http.InferenceServerClient(oracle.rest_address)
    contexts = CONTEXTS[:n]
    inputs = [texts(triton_http, "question", [QUESTION] * n, binary_inputs),
              texts(triton_http, "context", contexts, binary_inputs)]
    outputs = [triton_http.InferRequestedOutput(name, binary_data=binary_outputs) for name in ("answer", "start", "end",
                                                                                         "score")]
    result = client.infer("bert_squad", inputs, outputs=outputs, request_id="r-1")
    assert answers(result) == expected(reference, contexts)
    assert result.get_response()["id"] == "r-1" and result.get_response()["model_version"] == "1"


def test_tritonclient_http_top_k_and_per_question_errors(oracle, reference):
    client = triton_http.InferenceServerClient(oracle.rest_address)
    questions = [QUESTION, *BAD, QUESTION]
    contexts = [CONTEXTS[0], CONTEXTS[0], CONTEXTS[0], CONTEXTS[2]]
    top_k = triton_http.InferInput("top_k", [1], "INT32")
    top_k.set_data_from_numpy(np.array([3], np.int32))
    result = client.infer("bert_squad", [texts(triton_http, "question", questions), texts(triton_http, "context", contexts, shape=[
        4, 1]), top_k])
    errors = [e.decode() for e in result.as_numpy("error")]
    assert errors == ["", *BAD.values(), ""]  # the stage's own words, without Serving's "Call Function ..." wrapper
    rows = answers(result)
    assert [rows[0], rows[3]] == expected(reference, [CONTEXTS[0], CONTEXTS[2]])
    assert rows[1] == rows[2] == ("", -1, -1, 0.0)  # a refused question's outputs hold nothing
    for row, context in ((0, CONTEXTS[0]), (3, CONTEXTS[2])):
        top = [(a.text, a.start, a.end, float(np.float32(a.score))) for a in reference[context].top_k]
        got = list(zip(*(result.as_numpy(name)[row].tolist() for name in ("top_answers", "top_starts", "top_ends",
                                                                          "top_scores"))))
        assert [(t.decode(), s, e, score) for t, s, e, score in got][:len(top)] == top


def test_tritonclient_http_health_and_metadata(oracle):
    client = triton_http.InferenceServerClient(oracle.rest_address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("bert_squad") and client.is_model_ready("bert_squad_features", "1")
    assert not client.is_model_ready("bert_squad", "7")
    server = client.get_server_metadata()
    assert server["name"] == "bert_squad" and "binary_tensor_data" in server["extensions"]
    metadata = client.get_model_metadata("bert_squad")
    assert metadata["versions"] == ["1"]
    assert {t["name"]: (t["datatype"], t["shape"]) for t in metadata["inputs"]} == {
        "question": ("BYTES", [-1]), "context": ("BYTES", [-1]), "top_k": ("INT32", [-1]),
        "max_answer_length": ("INT32", [-1])}


def test_the_features_model_answers_as_predict_features(oracle):
    ids = np.array([[101, 2029, 3007, 102, 3000, 2003, 1996, 3007, 1997, 2605, 102],
                    [101, 2054, 102, 3000, 102, 0, 0, 0, 0, 0, 0]], np.int32)
    mask = (ids != 0).astype(np.int32)
    segments = np.zeros_like(ids)
    with Client(oracle.grpc_address, timeout=60) as grpc_client:
        logits = grpc_client.logits(ids, mask, segments)
    client = triton_http.InferenceServerClient(oracle.rest_address)
    inputs = []
    for name, array in (("input_ids", ids), ("input_mask", mask), ("token_type_id", segments)):
        inputs.append(triton_http.InferInput(name, list(array.shape), "INT32"))
        inputs[-1].set_data_from_numpy(array)
    result = client.infer("bert_squad_features", inputs)
    assert np.array_equal(result.as_numpy("start_logits"), logits.start_logits)
    assert np.array_equal(result.as_numpy("end_logits"), logits.end_logits)


# ---------------------------------------------------------------- API keys, with tritonclient

KEYED_GRPC = """
import json, sys
import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

address, key, question, context = sys.argv[1:5]
client = triton.InferenceServerClient(address)
inputs = []
for name, text in (("question", question), ("context", context)):
    tensor = triton.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
    inputs.append(tensor)
seen = {"live": client.is_server_live(), "ready": client.is_server_ready()}
for name, headers in (("none", None), ("wrong", {"authorization": "Bearer " + "w" * 20}),
                      ("right", {"authorization": "Bearer " + key})):
    try:
        seen[name] = client.infer("bert_squad", inputs, headers=headers).as_numpy("answer")[0].decode()
    except InferenceServerException as e:
        seen[name] = [e.status(), e.message()]
print(json.dumps(seen))
"""


def test_tritonclient_sends_the_api_key_over_http_and_grpc(oracle_servable_dir, reference, tmp_path):
    """With --api-key-file, tritonclient's requests need headers={"Authorization": "Bearer KEY"}; the probes do
    not."""
    from harness import Server

    key = "k" * 16 + "-tritonclient"
    (tmp_path / "keys").write_text(key + "\n")
    with Server(tmp_path / "run", oracle_servable_dir, extra_args=["--api-key-file", str(tmp_path / "keys")]) as server:
        client = triton_http.InferenceServerClient(server.rest_address)
        assert client.is_server_live() and client.is_server_ready()
        inputs = [texts(triton_http, "question", [QUESTION]), texts(triton_http, "context", CONTEXTS[:1])]
        with pytest.raises(triton_utils.InferenceServerException) as refused:
            client.infer("bert_squad", inputs)
        assert refused.value.status() == "401" and "Authorization: Bearer" in refused.value.message()
        result = client.infer("bert_squad", inputs, headers={"Authorization": f"Bearer {key}"})
        want = reference[CONTEXTS[0]].text  # the MindSpore Serving API's answer, from the server without keys
        assert result.as_numpy("answer")[0].decode() == want
        seen = run_python(KEYED_GRPC, server.oip_grpc_address, key, QUESTION, CONTEXTS[0], timeout=180)
    assert seen["live"] is seen["ready"] is True
    assert seen["none"][0] == seen["wrong"][0] == "StatusCode.UNAUTHENTICATED"
    assert "not one of this server's keys" in seen["wrong"][1]
    assert seen["right"] == want


# ---------------------------------------------------------------- gRPC clients and kserve, in a subprocess

def run_client(script: str, *args) -> dict:
    return run_python(SCRIPTS[script], *args, timeout=180)


def as_rows(seen: dict) -> list:
    return [tuple(row) for row in zip(seen["answer"], seen["start"], seen["end"], seen["score"])]


def test_tritonclient_grpc(oracle, reference):
    seen = run_client("tritonclient.grpc", oracle.oip_grpc_address, json.dumps(CONTEXTS), QUESTION)
    assert seen["live"] is seen["ready"] is seen["model_ready"] is True
    assert seen["server"]["name"] == "bert_squad" and seen["metadata"]["versions"] == ["1"]
    assert as_rows(seen["one"]) == expected(reference, CONTEXTS[:1])
    assert as_rows(seen["all"]) == expected(reference, CONTEXTS)
    assert seen["not_found"][0] == "StatusCode.NOT_FOUND" and "serves bert_squad" in seen["not_found"][1]


def test_kserve_clients(oracle, reference):
    seen = run_client("kserve", oracle.rest_address, oracle.oip_grpc_address, json.dumps(CONTEXTS), QUESTION)
    want = expected(reference, CONTEXTS)
    for form in ("rest binary", "rest json", "grpc"):
        assert as_rows(seen[form]) == want, form
    assert seen["rest health"] == [True, True, True] and seen["grpc health"] == [True, True, True]


SCRIPTS = {
    "tritonclient.grpc": """
import json, sys
import numpy as np
import tritonclient.grpc as g
from tritonclient.utils import InferenceServerException
from test_oip_server import texts

address, contexts, question = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
client = g.InferenceServerClient(address)
seen = {"live": client.is_server_live(), "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("bert_squad"), "server": client.get_server_metadata(as_json=True),
        "metadata": client.get_model_metadata("bert_squad", as_json=True)}

def ask(batch):
    result = client.infer("bert_squad", [texts(g, "question", [question] * len(batch)), texts(g, "context", batch)])
    return {name: [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy(name).tolist()]
            for name in ("answer", "start", "end", "score")}

seen["one"], seen["all"] = ask(contexts[:1]), ask(contexts)
try:
    client.infer("bert", [texts(g, "question", [question]), texts(g, "context", contexts[:1])])
except InferenceServerException as error:
    seen["not_found"] = [error.status(), error.message()]
print(json.dumps(seen))
""",
    "kserve": """
import asyncio, json, sys
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

rest, grpc_address, contexts, question = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]

def rows(response):
    got = {o.name: o.as_numpy() for o in response.outputs}
    return {name: [v.decode() if isinstance(v, bytes) else v for v in got[name].tolist()]
            for name in ("answer", "start", "end", "score")}

def request(binary):
    inputs = [InferInput("question", [len(contexts)], "BYTES"), InferInput("context", [len(contexts)], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([question.encode()] * len(contexts), np.object_), binary_data=binary)
    inputs[1].set_data_from_numpy(np.array([c.encode() for c in contexts], np.object_), binary_data=binary)
    return InferRequest("bert_squad", inputs)

async def main():
    seen = {}
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    base = f"http://{rest}"
    seen["rest health"] = [await client.is_server_live(base), await client.is_server_ready(base),
                           await client.is_model_ready(base, "bert_squad")]
    for form, binary in (("rest binary", True), ("rest json", False)):
        seen[form] = rows(await client.infer(base, request(binary), model_name="bert_squad"))
    await client.close()
    async with InferenceGRPCClient(grpc_address, timeout=60) as grpc_client:
        seen["grpc health"] = [await grpc_client.is_server_live(), await grpc_client.is_server_ready(),
                               await grpc_client.is_model_ready("bert_squad")]
        seen["grpc"] = rows(await grpc_client.infer(request(False)))
    print(json.dumps(seen))

asyncio.run(main())
""",
}


# ---------------------------------------------------------------- bad input over OIP REST

def exchange(address: str, path: str, payload, timeout: float = 5.0, method: str = "POST", headers=None):
    """One HTTP request of our own (no client's checks in the way): (status, raw body)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


INFER = "/v2/models/bert_squad/infer"


def body(*inputs, **extra) -> dict:
    return {"inputs": list(inputs), **extra}


def tensor(name, data, datatype="BYTES", shape=None) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape if shape is not None else [len(data)], "data": data}


BINARY_HEAD = (b'{"inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], "parameters": '
               b'{"binary_data_size": 99}}]}')
GOOD_INPUTS = (tensor("question", [QUESTION]), tensor("context", [CONTEXTS[0]]))
REST_BAD = {  # body (JSON or raw bytes, with an Inference-Header-Content-Length or not) -> status, message part
    "not JSON": (b"{not json", None, 400, "the request body is not valid JSON"),
    "empty body": (b"", None, 400, "the request body is empty"),
    "no inputs": ({"outputs": []}, None, 400, "the request has no 'inputs'"),
    "datatype": (body(tensor("question", [1.5], "FP32"), GOOD_INPUTS[1]), None, 400,
                 "input 'question' has datatype 'FP32'; send BYTES"),
    "shape": (body(tensor("question", ["a", "b"], shape=[1, 2]), GOOD_INPUTS[1]), None, 400,
              "input 'question' has shape [1, 2]; send shape [N] or [N, 1]"),
    "missing input": (body(GOOD_INPUTS[0]), None, 400, "model 'bert_squad' needs input context"),
    "N mismatch": (body(tensor("question", [QUESTION, QUESTION]), GOOD_INPUTS[1]), None, 400,
                   "question has 2 elements and context 1"),
    "data and shape": (body(tensor("question", ["a", "b"], shape=[3]), GOOD_INPUTS[1]), None, 400,
                       "input 'question' has shape [3], which holds 3 elements, but its data has 2"),
    "unknown output": (body(*GOOD_INPUTS, outputs=[{"name": "answers"}]), None, 400,
                       "model 'bert_squad' has no output 'answers'"),
    "every question refused": (body(tensor("question", [""]), GOOD_INPUTS[1]), None, 400, "question is empty"),
    "header past the body": (b'{"inputs": []}', "500", 400, "Inference-Header-Content-Length is '500'"),
    "binary sizes": (BINARY_HEAD + b"\x03\x00\x00\x00abc", str(len(BINARY_HEAD)), 400,
                     "binary_data_size 99 goes past the end of the body"),
    "nesting bomb": (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, 400, "nests JSON too deeply"),
    "option out of range": (body(*GOOD_INPUTS, tensor("top_k", [99], "INT32")), None, 400,
                            "input 'top_k' holds 99; send values from 1 to 20"),
}


@pytest.mark.parametrize("case", sorted(REST_BAD))
def test_a_bad_oip_rest_request_is_refused_within_a_second_with_the_reason(oracle, case):
    payload, header, status, message = REST_BAD[case]
    headers = {"Inference-Header-Content-Length": header} if header else None
    started = time.monotonic()
    got, reply = exchange(oracle.rest_address, INFER, payload, headers=headers)
    assert time.monotonic() - started < 1.0
    assert got == status and message in json.loads(reply)["error"], reply[:500]


@pytest.mark.parametrize("path, method, status, message", [
    ("/v2/models/bert/infer", "POST", 404, "no model 'bert'; this server serves bert_squad, bert_squad_features"),
    ("/v2/models/bert_squad/versions/2/infer", "POST", 404, "has no version '2'; it serves version 1"),
    ("/v2/models/bert_squad/versions/2", "GET", 404, "has no version '2'"),
    ("/v2/models/bert_squad/infer", "GET", 405, "send the inference request with POST"),
    ("/v2/repository/models/bert/load", "POST", 404, "no model 'bert'; this server serves bert_squad"),
    ("/v2/repository/models/bert_squad/load", "POST", 400, "load takes no parameters here"),
    ("/v2/repository/models/bert_squad/reload", "POST", 404, "no /v2/repository/models/bert_squad/reload here"),
])
def test_oip_paths_get_their_status_codes(oracle, path, method, status, message):
    got, reply = exchange(oracle.rest_address, path, body(*GOOD_INPUTS), method=method)
    assert got == status and message in json.loads(reply)["error"], reply


def test_an_oip_rest_body_over_the_limit_is_413(oracle):
    big = body(tensor("question", [QUESTION]), tensor("context", ["x" * (65 << 20)]))
    got, reply = exchange(oracle.rest_address, INFER, big, timeout=60)
    assert got == 413 and "(--max-message-mb); send fewer or shorter questions" in json.loads(reply)["error"]


def test_the_nesting_bomb_is_400_on_the_mindspore_serving_rest_route_too(oracle):
    bomb = b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, reply = exchange(oracle.rest_address, "/model/bert_squad:predict", bomb)
    assert status == 400 and "nests JSON too deeply" in json.loads(reply)["error_msg"]


def test_500_bad_oip_requests_at_once_leave_the_server_answering(oracle, reference):
    bad = body(tensor("question", [1], "INT32"), GOOD_INPUTS[1])
    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(lambda _: exchange(oracle.rest_address, INFER, bad, timeout=30)[0],
                                 range(500)))
    assert statuses == [400] * 500
    client = triton_http.InferenceServerClient(oracle.rest_address)
    result = client.infer("bert_squad", [texts(triton_http, "question", [QUESTION]),
                                         texts(triton_http, "context", CONTEXTS[:1])])
    assert answers(result) == expected(reference, CONTEXTS[:1])


# ---------------------------------------------------------------- bad input over OIP gRPC (our stubs)

def grpc_infer(address, request, timeout=5.0):
    import grpc

    from bert_squad.front.oip.stubs import pb_grpc

    with grpc.insecure_channel(address) as channel:
        return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=timeout)


def grpc_request(model="bert_squad", **inputs):
    from bert_squad.front.oip.stubs import pb

    request = pb.ModelInferRequest(model_name=model)
    for name, (datatype, shape, values) in inputs.items():
        entry = request.inputs.add(name=name, datatype=datatype, shape=shape)
        field = entry.contents.bytes_contents if datatype == "BYTES" else entry.contents.fp32_contents
        field.extend(values)
    return request


GRPC_GOOD = {"question": ("BYTES", [1], [QUESTION.encode()]), "context": ("BYTES", [1], [CONTEXTS[0].encode()])}
GRPC_BAD = {
    "datatype": ({**GRPC_GOOD, "question": ("FP32", [1], [1.0])}, "INVALID_ARGUMENT",
                 "input 'question' has datatype 'FP32'; send BYTES"),
    "shape": ({**GRPC_GOOD, "question": ("BYTES", [1, 1, 1], [b"q"])}, "INVALID_ARGUMENT",
              "input 'question' has shape [1, 1, 1]"),
    "missing input": ({"question": GRPC_GOOD["question"]}, "INVALID_ARGUMENT", "needs input context"),
    "N mismatch": ({**GRPC_GOOD, "question": ("BYTES", [2], [b"q", b"r"])}, "INVALID_ARGUMENT",
                   "question has 2 elements and context 1"),
    "data and shape": ({**GRPC_GOOD, "question": ("BYTES", [2], [b"q"])}, "INVALID_ARGUMENT",
                       "which holds 2 elements, but its data has 1"),
    "every question refused": ({**GRPC_GOOD, "question": ("BYTES", [1], [b""])}, "INVALID_ARGUMENT",
                               "question is empty; send the text of the question"),
}


@pytest.mark.parametrize("case", sorted(GRPC_BAD))
def test_a_bad_oip_grpc_request_is_refused_within_a_second_with_the_reason(oracle, case):
    import grpc

    inputs, code, message = GRPC_BAD[case]
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        grpc_infer(oracle.oip_grpc_address, grpc_request(**inputs))
    assert time.monotonic() - started < 1.0
    assert refused.value.code().name == code and message in refused.value.details()


def test_oip_grpc_unknown_model_raw_sizes_and_size_limit(oracle):
    import grpc

    with pytest.raises(grpc.RpcError) as unknown:
        grpc_infer(oracle.oip_grpc_address, grpc_request("bert", **GRPC_GOOD))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    raw = grpc_request(**GRPC_GOOD)
    for entry in raw.inputs:
        entry.ClearField("contents")
    raw.raw_input_contents.extend([b"\x09\x00\x00\x00short", b"\x01\x00\x00\x00x"])
    with pytest.raises(grpc.RpcError) as sizes:
        grpc_infer(oracle.oip_grpc_address, raw)
    assert sizes.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "element 0 says 9 bytes" in sizes.value.details()
    huge = grpc_request(**{**GRPC_GOOD, "context": ("BYTES", [1], [b"x" * (65 << 20)])})
    with pytest.raises(grpc.RpcError) as large:
        grpc_infer(oracle.oip_grpc_address, huge, timeout=60)
    assert large.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# ---------------------------------------------------------------- metrics

def test_requests_are_counted_by_protocol(oracle):
    def counts() -> dict:
        _, text = exchange(oracle.rest_address, "/metrics", b"", method="GET")
        found = {}
        for line in text.decode().splitlines():
            if line.startswith("bert_squad_requests_total{"):
                name, value = line.rsplit(" ", 1)
                found[name] = float(value)
        return found

    before = counts()
    client = triton_http.InferenceServerClient(oracle.rest_address)
    for _ in range(2):
        client.infer("bert_squad", [texts(triton_http, "question", [QUESTION]),
                                    texts(triton_http, "context", CONTEXTS[:1])])
    exchange(oracle.rest_address, INFER, body(tensor("question", [1], "INT32")))
    grpc_infer(oracle.oip_grpc_address, grpc_request(**GRPC_GOOD))
    after = counts()

    def delta(protocol, outcome):
        key = f'bert_squad_requests_total{{method="predict",outcome="{outcome}",protocol="{protocol}"}}'
        other = f'bert_squad_requests_total{{method="other",outcome="{outcome}",protocol="{protocol}"}}'
        return sum(after.get(k, 0) - before.get(k, 0) for k in (key, other))

    assert (delta("oip_rest", "ok"), delta("oip_rest", "bad_request"), delta("oip_grpc", "ok")) == (2, 1, 1)


# ---------------------------------------------------------------- the docs' examples, run as written

OIP_PAGE = Path(__file__).parent.parent / "docs" / "oip.md"
README = OIP_PAGE.parent.parent / "README.md"
DOC_PAIRS = [("Who wrote Hamlet?", "Hamlet was written by William Shakespeare."),
             ("What is Paris the capital of?", "Paris is the capital of France.")]
DOC_ADDRESSES = {"rest": "127.0.0.1:1500", "oip_grpc": "127.0.0.1:8001"}  # the defaults the page shows


def doc_examples() -> list:
    """(language, code) of every ```python block and every ```shell block that calls curl on docs/oip.md, and the
    README's OIP example."""
    found = []
    for page in (OIP_PAGE, README):
        blocks = re.findall(r"^```(python|shell)\n(.*?)^```$", page.read_text(encoding="utf-8"), re.S | re.M)
        found += [(language, code) for language, code in blocks
                  if (language == "python" or "curl " in code) and (page == OIP_PAGE or "tritonclient" in code)]
    return found


@pytest.mark.parametrize("index", range(len(doc_examples())))
def test_the_oip_page_examples_run_and_print_the_mindspore_serving_apis_answers(oracle, index):
    language, code = doc_examples()[index]
    code = (code.replace(DOC_ADDRESSES["rest"], oracle.rest_address)
            .replace(DOC_ADDRESSES["oip_grpc"], oracle.oip_grpc_address))
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c", code]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    with Client(oracle.grpc_address, timeout=60) as client:
        wanted = [client.answer(q, c).text for q, c in DOC_PAIRS if q in code]
    assert any(wanted) and all(text in done.stdout for text in wanted), (wanted, done.stdout[-2000:])
