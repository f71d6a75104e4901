"""The Open Inference Protocol codecs against the protocol's real clients, without a bert_squad server:
tritonclient.http's own request bodies and result parser, tritonclient.grpc and kserve's gRPC client against our
GRPCInferenceService (grpc.aio, on a loopback port), kserve's REST client through an httpx transport that runs our
REST codec. The servable is a stand-in here (`servable` below: it answers the i-th word of the context), so these
tests prove the encoding; answers of the real model through these clients are the front door's tests.

tritonclient.grpc and kserve register their own copies of the protocol's messages in protobuf's default pool,
which our stubs share: they run in a subprocess (this file's CLIENTS scripts), exchanging results as JSON.
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import threading

import numpy as np
import pytest

from bert_squad.front.oip import models, rest_codec
from bert_squad.front.oip.models import OipError
from harness import run_python

pytestmark = pytest.mark.pure

TABLE = models.models()
CONTEXT = "Ada wrote it in 1843."
WORDS = ["Ada", "wrote", "it", "in", "1843"]
BUSY = "(busy)"  # a question the stand-in refuses as Serving does with a full queue


def servable(method: str, instances: list) -> list:
    """A stand-in for the servable's methods, with their output types: the best answer to a question of w words
    is the context's w-th word, the next top_k - 1 words follow with halving scores; an empty question is
    refused, as the servable refuses it. predict_features: start logits ids / 2, end logits the mask."""
    if any(i.get("question") == BUSY for i in instances):
        raise OipError(429, "enqueued requests count exceeds the limit", retry_after=1)
    outcomes = []
    for instance in instances:
        if method == "predict_features":
            mask = instance["input_mask"]
            outcomes.append({"start_logits": (instance["input_ids"] / 2).astype(np.float32),
                             "end_logits": mask.astype(np.float32)} if mask.any()
                            else ValueError("input_mask has no 1: mark the real tokens of the window with 1"))
            continue
        if not instance["question"]:
            outcomes.append(ValueError("the question is empty; send a question"))
            continue
        spans = [m.span() for m in re.finditer(r"\w+", instance["context"])]
        first = (len(instance["question"].split()) - 1) % len(spans)
        top = spans[first:first + int(instance.get("top_k", 1))]
        scores = np.array([0.5 ** (i + 1) for i in range(len(top))], np.float32)
        outcomes.append({"answer": instance["context"][slice(*top[0])], "score": scores[0],
                         "start": np.int32(top[0][0]), "end": np.int32(top[0][1]),
                         "top_starts": np.array([s for s, _ in top], np.int32),
                         "top_ends": np.array([e for _, e in top], np.int32), "top_scores": scores})
    return outcomes


def answer_rest(body: bytes, header) -> tuple:
    """Our REST codec's answer to a body, as the front door gives it: (status, body, headers)."""
    try:
        model, _ = rest_codec.parse_path("/v2/models/bert_squad/infer", TABLE, "1")
        parsed = rest_codec.parse_infer(body, header, model)
        return (200, *rest_codec.response(parsed, models.to_outputs(
            parsed.request, servable(parsed.request.method, parsed.request.instances)), "1"))
    except OipError as error:
        return rest_codec.error_response(error)


# ---------------------------------------------------------------- tritonclient.http, in this process

@pytest.mark.parametrize("binary_inputs", [True, False], ids=["binary inputs", "JSON inputs"])
@pytest.mark.parametrize("binary_outputs", [True, False, None], ids=["binary outputs", "JSON outputs", "default"])
def test_tritonclient_http_request_and_result(binary_inputs, binary_outputs):
    http = pytest.importorskip("tritonclient.http")
    questions = np.array([b"Who wrote it?", b"", "Wann?".encode()], dtype=np.object_)
    inputs = [http.InferInput("question", [3], "BYTES"), http.InferInput("context", [3, 1], "BYTES"),
              http.InferInput("top_k", [1], "INT32")]
    inputs[0].set_data_from_numpy(questions, binary_data=binary_inputs)
    inputs[1].set_data_from_numpy(np.array([[CONTEXT.encode()]] * 3, np.object_), binary_data=binary_inputs)
    inputs[2].set_data_from_numpy(np.array([2], np.int32), binary_data=binary_inputs)
    names = ["answer", "start", "end", "top_answers", "top_scores"]
    outputs = None if binary_outputs is None else [http.InferRequestedOutput(n, binary_data=binary_outputs)
                                                   for n in names]
    body, json_size = http.InferenceServerClient.generate_request_body(inputs, outputs=outputs, request_id="q-7")
    status, reply, headers = answer_rest(body, None if json_size is None else str(json_size))
    assert status == 200, reply
    size = headers.get(rest_codec.HEADER_LENGTH)
    assert (size is not None) == (binary_outputs is not False)  # tritonclient asks for binary when it names none
    result = http.InferResult.from_response_body(reply, header_length=None if size is None else int(size))
    assert result.get_response()["id"] == "q-7"
    # question 1 was refused: `error` comes back though not asked for
    assert [o["name"] for o in result.get_response()["outputs"]] == (names + ["error"] if outputs else
                                                                     [t.name for t in TABLE["bert_squad"].outputs])
    assert text(result.as_numpy("answer")) == ["it", "", "Ada"]
    assert result.as_numpy("start").tolist() == [10, -1, 0] and result.as_numpy("end").tolist() == [12, -1, 3]
    assert text(result.as_numpy("top_answers")) == [["it", "in"], ["", ""], ["Ada", "wrote"]]
    assert result.as_numpy("top_scores").tolist() == [[0.5, 0.25], [0, 0], [0.5, 0.25]]
    assert text(result.as_numpy("error")) == ["", "the question is empty; send a question", ""]


def text(array: np.ndarray) -> list:
    """A BYTES output as str (tritonclient gives bytes from binary data, str from JSON)."""
    return np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v, otypes=[object])(array).tolist()


def test_tritonclient_http_features_model():
    http = pytest.importorskip("tritonclient.http")
    ids = np.array([[101, 7, 102], [101, 9, 0]], np.int32)
    inputs = []
    for name, value in (("input_ids", ids), ("input_mask", np.array([[1, 1, 1], [1, 1, 0]], np.int32)),
                        ("token_type_id", np.zeros((2, 3), np.int32))):
        inputs.append(http.InferInput(name, [2, 3], "INT32"))
        inputs[-1].set_data_from_numpy(value)
    body, json_size = http.InferenceServerClient.generate_request_body(inputs)
    parsed = rest_codec.parse_infer(body, str(json_size), TABLE["bert_squad_features"])
    reply, headers = rest_codec.response(parsed, models.to_outputs(
        parsed.request, servable(parsed.request.method, parsed.request.instances)), "1")
    result = http.InferResult.from_response_body(reply, header_length=int(headers[rest_codec.HEADER_LENGTH]))
    assert result.as_numpy("start_logits").tolist() == (ids / 2).tolist()
    assert result.as_numpy("end_logits").tolist() == [[1, 1, 1], [1, 1, 0]]


def test_tritonclient_http_error_body():
    http = pytest.importorskip("tritonclient.http")
    question = http.InferInput("question", [1], "FP32")
    question.set_data_from_numpy(np.array([1], np.float32))
    body, json_size = http.InferenceServerClient.generate_request_body([question])
    status, reply, headers = answer_rest(body, str(json_size))
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert json.loads(reply) == {"error": "input 'question' has datatype 'FP32'; send BYTES (UTF-8 text) of shape "
                                          "[N] or [N, 1]"}


# ---------------------------------------------------------------- clients in a subprocess

def run_client(script: str, *args) -> dict:
    """Run one CLIENTS script under this interpreter; its last stdout line is JSON."""
    return run_python(CLIENTS[script], *args, timeout=120)


def need(module: str) -> None:
    if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (setup.cfg [reference], the Python 3.11 venv)")


@pytest.fixture(scope="module")
def grpc_port():
    """Our GRPCInferenceService on a loopback port, asking the stand-in servable."""
    from bert_squad.front import metrics
    from bert_squad.front.grpc_listen import Limits, start_server
    from bert_squad.front.oip.servicer import InferenceServicer, register

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def ask(request):
        return servable(request.method, request.instances), "1"

    async def live():
        return True

    async def ready():
        return True, {}

    async def start():
        servicer = InferenceServicer(TABLE, lambda: "1", "0.1.0", ask, live, ready, metrics.Meter("oip_grpc"))
        return await start_server(register(servicer), "127.0.0.1:0", Limits(max_message_bytes=4 << 20))

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    yield port
    asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)


def test_servicer_over_grpc_with_our_stubs(grpc_port):
    """The servicer under this venv's grpcio (1.47 next to the server), read with the generated stubs."""
    import grpc

    from bert_squad.front.oip.stubs import pb, pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest()).live and stub.ServerReady(pb.ServerReadyRequest()).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="bert_squad_features")).ready
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="bert_squad", version="1"))
        assert [t.name for t in metadata.inputs] == ["question", "context", "top_k", "max_answer_length"]
        request = pb.ModelInferRequest(model_name="bert_squad", id="g-1", outputs=[
            pb.ModelInferRequest.InferRequestedOutputTensor(name="answer")])
        for name, value in (("question", b"Who wrote it?"), ("context", CONTEXT.encode())):
            request.inputs.add(name=name, datatype="BYTES", shape=[1]).contents.bytes_contents.append(value)
        reply = stub.ModelInfer(request)
        assert (reply.id, [o.name for o in reply.outputs], list(reply.raw_output_contents)) == (
            "g-1", ["answer"], [b"\x02\x00\x00\x00it"])
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelReady(pb.ModelReadyRequest(name="bert_squad", version="9"))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        request.inputs[0].contents.bytes_contents[0] = BUSY.encode()
        with pytest.raises(grpc.RpcError) as busy:
            stub.ModelInfer(request)
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ("retry-after", "1") in busy.value.trailing_metadata()


def test_tritonclient_grpc(grpc_port):
    need("tritonclient.grpc")
    seen = run_client("tritonclient.grpc", grpc_port)
    assert seen["live"] is seen["ready"] is seen["model_ready"] is True
    assert seen["server"] == {"name": "bert_squad", "version": "0.1.0",
                              "extensions": ["binary_tensor_data", "model_repository"]}
    assert seen["metadata"]["inputs"][0] == {"name": "question", "datatype": "BYTES", "shape": ["-1"]}
    assert seen["answers"] == {"answer": ["it", "", "Ada"], "start": [10, -1, 0], "top_answers": [
        ["it", "in"], ["", ""], ["Ada", "wrote"]], "error": ["", "the question is empty; send a question", ""]}
    assert seen["one"] == {"answer": ["it"], "score": [0.5], "end": [12]}
    assert seen["features"] == [[50.5, 3.5], [1.0, 0.0]]
    assert seen["errors"] == {
        "datatype": ["StatusCode.INVALID_ARGUMENT",
                     "input 'question' has datatype 'FP32'; send BYTES (UTF-8 text) of shape [N] or [N, 1]"],
        "model": ["StatusCode.NOT_FOUND", "no model 'bert'; this server serves bert_squad, bert_squad_features"],
        "busy": ["StatusCode.RESOURCE_EXHAUSTED", "enqueued requests count exceeds the limit"],
        "all refused": ["StatusCode.INVALID_ARGUMENT", "the question is empty; send a question"]}


def test_kserve_grpc_client(grpc_port):
    need("kserve")
    seen = run_client("kserve.grpc", grpc_port)
    assert seen == {"live": True, "ready": True, "model_ready": True, "id": "k-1",
                    "answer": ["it", "Ada"], "top_starts": [[10, 13], [0, 4]], "score": [0.5, 0.5],
                    "not_found": "StatusCode.NOT_FOUND"}


def test_kserve_rest_client():
    need("kserve")
    seen = run_client("kserve.rest")
    assert seen == {"binary": {"answer": ["it", "Ada"], "end": [12, 3], "top_answers": [["it", "in"],
                                                                                        ["Ada", "wrote"]]},
                    "json": {"answer": ["it", "Ada"], "end": [12, 3], "top_answers": [["it", "in"],
                                                                                      ["Ada", "wrote"]]},
                    "error": [400, "input 'question' has shape [2, 2]; send shape [N] or [N, 1]"]}


CLIENTS = {
    "tritonclient.grpc": f"""
import json, sys
import numpy as np
import tritonclient.grpc as g
from tritonclient.utils import InferenceServerException

client = g.InferenceServerClient(f"127.0.0.1:{{sys.argv[1]}}")
seen = {{"live": client.is_server_live(), "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("bert_squad"),
        "server": client.get_server_metadata(as_json=True),
        "metadata": client.get_model_metadata("bert_squad", as_json=True)}}

def texts(name, values, shape=None):
    tensor = g.InferInput(name, shape or [len(values)], "BYTES")
    array = np.array([v.encode() for v in values], dtype=np.object_)
    tensor.set_data_from_numpy(array.reshape(shape or [len(values)]))
    return tensor

top_k = g.InferInput("top_k", [1], "INT32")
top_k.set_data_from_numpy(np.array([2], np.int32))
questions = texts("question", ["Who wrote it?", "", "Wann?"])
result = client.infer("bert_squad", [questions, texts("context", [{CONTEXT!r}] * 3), top_k])
seen["answers"] = {{name: result.as_numpy(name).tolist() for name in ("answer", "start", "top_answers", "error")}}
for name in ("answer", "top_answers", "error"):
    seen["answers"][name] = np.vectorize(bytes.decode)(result.as_numpy(name)).tolist()
one = [texts("question", ["Who wrote it?"], [1, 1]), texts("context", [{CONTEXT!r}], [1, 1])]
result = client.infer("bert_squad", one, outputs=[g.InferRequestedOutput(n) for n in ("answer", "score", "end")])
seen["one"] = {{"answer": [v.decode() for v in result.as_numpy("answer")],
               "score": result.as_numpy("score").tolist(), "end": result.as_numpy("end").tolist()}}
tokens = []
for name, value in (("input_ids", [[101, 7], [101, 9]]), ("input_mask", [[1, 1], [1, 0]]),
                    ("token_type_id", [[0, 0], [0, 0]])):
    tokens.append(g.InferInput(name, [2, 2], "INT32"))
    tokens[-1].set_data_from_numpy(np.array(value, np.int32))
result = client.infer("bert_squad_features", tokens)
seen["features"] = [result.as_numpy("start_logits")[0].tolist(), result.as_numpy("end_logits")[1].tolist()]
number = g.InferInput("question", [1], "FP32")
number.set_data_from_numpy(np.array([1], np.float32))
seen["errors"] = {{}}
for case, model, inputs in (("datatype", "bert_squad", [number, texts("context", ["c"])]),
                            ("model", "bert", [texts("question", ["q"]), texts("context", ["c"])]),
                            ("busy", "bert_squad", [texts("question", ["(busy)"]), texts("context", ["c"])]),
                            ("all refused", "bert_squad", [texts("question", [""]), texts("context", ["c"])])):
    try:
        client.infer(model, inputs)
    except InferenceServerException as error:
        seen["errors"][case] = [error.status(), error.message()]
print(json.dumps(seen))
""",
    "kserve.grpc": f"""
import asyncio, json, sys
import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest

async def main():
    seen = {{}}
    async with InferenceGRPCClient(f"127.0.0.1:{{sys.argv[1]}}", retries=2) as client:
        seen["live"], seen["ready"] = await client.is_server_live(), await client.is_server_ready()
        seen["model_ready"] = await client.is_model_ready("bert_squad")
        inputs = [InferInput("question", [2], "BYTES", ["Who wrote it?", "Wer?"]),
                  InferInput("context", [2], "BYTES", [{CONTEXT!r}] * 2),
                  InferInput("top_k", [1], "INT32", [2])]
        response = await client.infer(InferRequest("bert_squad", inputs, request_id="k-1"))
        outputs = {{o.name: o.as_numpy() for o in response.outputs}}
        seen["id"] = response.id
        seen["answer"] = [v.decode() if isinstance(v, bytes) else v for v in outputs["answer"].tolist()]
        seen["top_starts"], seen["score"] = outputs["top_starts"].tolist(), outputs["score"].tolist()
        try:
            await client.infer(InferRequest("bert", inputs))
        except grpc.RpcError as error:
            seen["not_found"] = str(error.code())
    print(json.dumps(seen))

asyncio.run(main())
""",
    "kserve.rest": """
import asyncio, json
import httpx
from kserve import InferInput, InferRequest, InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import RequestedOutput
from test_oip_clients import CONTEXT, answer_rest

def handler(request):
    status, body, headers = answer_rest(request.content, request.headers.get("inference-header-content-length"))
    return httpx.Response(status, content=body, headers=headers)

async def main():
    seen = {}
    client = InferenceRESTClient(RESTConfig(transport=httpx.MockTransport(handler), protocol="v2"))
    for form, binary in (("binary", True), ("json", False)):
        question, context, top_k = (InferInput("question", [2], "BYTES"), InferInput("context", [2], "BYTES"),
                                    InferInput("top_k", [1], "INT32"))
        import numpy as np
        question.set_data_from_numpy(np.array([b"Who wrote it?", b"Wer?"], np.object_), binary_data=binary)
        context.set_data_from_numpy(np.array([CONTEXT.encode()] * 2, np.object_), binary_data=binary)
        top_k.set_data_from_numpy(np.array([2], np.int32), binary_data=binary)
        outputs = [RequestedOutput(n, parameters={"binary_data": binary}) for n in ("answer", "end", "top_answers")]
        response = await client.infer("http://oip.test", InferRequest("bert_squad", [question, context, top_k],
                                      request_outputs=outputs), model_name="bert_squad")
        got = {o.name: o.as_numpy() for o in response.outputs}
        seen[form] = {"answer": [v.decode() if isinstance(v, bytes) else v for v in got["answer"].tolist()],
                      "end": got["end"].tolist(),
                      "top_answers": [[v.decode() if isinstance(v, bytes) else v for v in row]
                                      for row in got["top_answers"].tolist()]}
    bad = InferInput("question", [2, 2], "BYTES", ["a", "b", "c", "d"])
    try:
        await client.infer("http://oip.test", InferRequest("bert_squad", [bad]), model_name="bert_squad")
    except httpx.HTTPStatusError as error:
        seen["error"] = [error.response.status_code, error.response.json()["error"]]
    await client.close()
    print(json.dumps(seen))

asyncio.run(main())
""",
}
