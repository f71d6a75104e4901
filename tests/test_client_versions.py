"""Results that say which model version produced them (Result.model_version, Logits.model_version) and
bert-squad-predict's record of it (OUTPUT.versions.json), against stand-in servers that answer like the front door:
the version in gRPC trailing metadata / the X-Model-Version header, switched by the test on cue. The real front door
and a real switch: tests/test_predict_versions.py.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import pytest

from bert_squad_client import AsyncClient, Client, Result, RestClient, protocol
from bert_squad_client import predict as predict_command

pytestmark = pytest.mark.pure

QUESTION = "Which city?"
CONTEXTS = ["Paris is in France", "Rome lies in Italy", "London is in England"]


def span(context: str, version: int | None) -> tuple[int, int]:
    """What the stand-in answers: the first word of the context for version 1 (and a server that does not say), the
    last word for any other version, so every answer shows which version gave it."""
    if version in (None, 1):
        return 0, context.index(" ")
    return context.rindex(" ") + 1, len(context)


class Versions:
    """The version the stand-in answers with now (None: it sends no version at all, like an older server), or a
    switch from `first` to `then` after `after` requests; every (context, version) it answered, in order."""

    def __init__(self, version: int | None = 1):
        self.version, self.switch, self.count, self.answered = version, None, 0, []
        self.lock = threading.Lock()

    def switch_after(self, after: int, first: int, then: int) -> None:
        self.switch, self.count = (after, first, then), 0

    def next(self) -> int | None:
        with self.lock:
            self.count += 1
            if self.switch:
                after, first, then = self.switch
                return first if self.count <= after else then
            return self.version


def answer_outputs(context: str, version: int | None) -> dict:
    start, end = span(context, version)
    return {"answer": context[start:end], "score": np.float32(0.9), "start": np.int32(start), "end": np.int32(end),
            "top_starts": np.array([start], np.int32), "top_ends": np.array([end], np.int32),
            "top_scores": np.array([0.9], np.float32)}


def logits_outputs(seq: int, version: int | None) -> dict:
    return {"start_logits": np.full(seq, float(version or 0), np.float32), "end_logits": np.zeros(seq, np.float32)}


@pytest.fixture
def grpc_server():
    """A gRPC MSService.Predict stand-in on a free port; its `versions` says which version answers."""
    versions = Versions()

    def predict(data: bytes, context) -> bytes:
        request = protocol.PredictRequest.FromString(data)
        version = versions.next()
        reply = protocol.PredictReply()
        for instance in request.instances:
            if request.servable_spec.method_name == "predict_features":
                outputs = logits_outputs(instance.items["input_ids"].shape.dims[-1], version)
            else:
                text = instance.items["context"].bytes_val[0].decode()
                outputs = answer_outputs(text, version)
                with versions.lock:
                    versions.answered.append((text, version))
            item = reply.instances.add()
            for name, value in outputs.items():
                protocol.fill_tensor(item.items[name], value)
        metadata = [(protocol.REQUEST_ID_HEADER, "r1")]
        if version is not None:
            metadata.append((protocol.MODEL_VERSION_HEADER, str(version)))
        context.set_trailing_metadata(tuple(metadata))
        return reply.SerializeToString()

    service, method = protocol.PREDICT_PATH.strip("/").split("/")
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(predict)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    server.address, server.versions = f"127.0.0.1:{port}", versions
    yield server
    server.stop(None)


class RestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        instances = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["instances"]
        version = self.server.versions.next()
        if self.path.endswith(":predict_features"):
            replies = [logits_outputs(instance["input_ids"]["shape"][-1], version) for instance in instances]
        else:
            replies = [answer_outputs(instance["context"], version) for instance in instances]
        body = json.dumps({"instances": [{k: v if isinstance(v, str) else np.asarray(v).tolist() for k, v in r.items()}
                                         for r in replies]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if version is not None:
            self.send_header("X-Model-Version", str(version))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def rest_server():
    """A MindSpore Serving REST stand-in; its `versions` says which version answers."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), RestHandler)
    server.daemon_threads = True
    server.versions = Versions()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.address = f"127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


WINDOW = (np.array([101, 7, 8, 102]), np.ones(4, np.int64), np.zeros(4, np.int64))


def blocking_results(client) -> dict:
    """The version each blocking call's result names: answer, answer_many, answer_as_completed, logits."""
    pairs = [(QUESTION, c) for c in CONTEXTS]
    return {"answer": client.answer(QUESTION, CONTEXTS[0]).model_version,
            "top_k": client.answer(QUESTION, CONTEXTS[0], top_k=2).model_version,
            "answer_many": {r.model_version for r in client.answer_many(pairs, max_in_flight=2)},
            "as_completed": {o.model_version for _, o in client.answer_as_completed(pairs)},
            "logits": client.logits(*WINDOW).model_version,
            "logits_batch": client.logits(*(np.stack([a, a]) for a in WINDOW)).model_version}


def expected_results(version) -> dict:
    return {"answer": version, "top_k": version, "answer_many": {version}, "as_completed": {version},
            "logits": version, "logits_batch": version}


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_blocking_results_name_the_version_the_server_said_and_follow_a_switch(transport, grpc_server, rest_server):
    server, make = (grpc_server, Client) if transport == "grpc" else (rest_server, RestClient)
    with make(server.address, timeout=10) as client:
        server.versions.version = 1
        assert blocking_results(client) == expected_results(1)
        result = client.answer(QUESTION, CONTEXTS[1])
        assert isinstance(result.model_version, int) and result.text == "Rome"
        server.versions.version = 2  # the server switched: the next answers say so
        assert blocking_results(client) == expected_results(2)
        assert client.answer(QUESTION, CONTEXTS[1]).text == "Italy"
        server.versions.version = None  # a server that does not send the version (older than the header)
        assert blocking_results(client) == expected_results(None)


def test_async_results_name_the_version_the_server_said(grpc_server):
    async def run(version):
        grpc_server.versions.version = version
        async with AsyncClient(grpc_server.address, timeout=10) as client:
            one = await client.answer(QUESTION, CONTEXTS[0])
            many = await client.answer_many([(QUESTION, c) for c in CONTEXTS], top_k=2)
            logits = await client.logits(*WINDOW)
            return one.model_version, {r.model_version for r in many}, logits.model_version

    assert asyncio.run(run(2)) == (2, {2}, 2)
    assert asyncio.run(run(None)) == (None, {None}, None)


def test_the_version_is_read_only_from_a_version_number():
    assert [protocol.model_version(text) for text in ("7", " 12 ", "0", None, "", "x", "-1", "1.5", "²")] == \
        [7, 12, 0, None, None, None, None, None, None]
    metadata = (("x-request-id", "abc"), (protocol.MODEL_VERSION_HEADER, "5"))
    assert (protocol.version_in(metadata), protocol.version_in(metadata[:1]), protocol.version_in(None)) == \
        (5, None, None)
    # code that builds results itself keeps working: the version is last and optional
    assert Result("Paris", 0.9, 0, 5).model_version is None


def lines_file(path, count: int):
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": QUESTION, "context": CONTEXTS[i % 3]}) + "\n"
                            for i in range(count)), encoding="utf-8")
    return path


def test_predict_records_the_version_of_each_answer_across_a_switch(grpc_server, tmp_path, capsys):
    questions = lines_file(tmp_path / "q.jsonl", 30)
    output = tmp_path / "predictions.json"
    grpc_server.versions.switch_after(12, first=1, then=2)
    code = predict_command.main([str(questions), "-o", str(output), "--nbest", str(tmp_path / "nbest.json"),
                                 "--server", grpc_server.address, "--concurrency", "3", "--quiet"])
    assert code == 0, capsys.readouterr().err
    predictions = json.loads(output.read_text(encoding="utf-8"))
    versions = json.loads((tmp_path / "predictions.json.versions.json").read_text(encoding="utf-8"))
    # the predictions stay the official {id: answer}; the versions file has the same ids in the same order
    assert list(predictions) == list(versions) == [f"q{i}" for i in range(30)]
    assert all(isinstance(answer, str) for answer in predictions.values())
    assert sorted(set(versions.values())) == [1, 2] and list(versions.values()).count(1) == 12
    for i in range(30):  # each answer is the one its version gives, and the stand-in answered it with that version
        context = CONTEXTS[i % 3]
        start, end = span(context, versions[f"q{i}"])
        assert predictions[f"q{i}"] == context[start:end]
    nbest = json.loads((tmp_path / "nbest.json").read_text(encoding="utf-8"))
    assert set(nbest["q0"][0]) == {"text", "score", "start", "end"}  # --nbest's format is unchanged
    err = capsys.readouterr().err
    assert "30 answers written" in err and "model versions 1 (12 answers), 2 (18 answers)" in err
    assert str(tmp_path / "predictions.json.versions.json") in err


def test_predict_keeps_the_versions_of_a_resumed_run_and_says_when_the_server_did_not(grpc_server, tmp_path,
                                                                                       capsys):
    questions = lines_file(tmp_path / "q.jsonl", 4)
    output = tmp_path / "p.json"
    args = [str(questions), "-o", str(output), "--server", grpc_server.address, "--quiet"]
    journal = tmp_path / "p.json.journal.jsonl"
    header = {"format": predict_command.JOURNAL_FORMAT,
              "input_sha256": hashlib.sha256(questions.read_bytes()).hexdigest(),
              "servable": "bert_squad", "version": 0, "top_k": 1, "max_answer_length": None}
    earlier = [{"id": "q0", "answer": "Paris", "nbest": [], "model_version": 7},
               {"id": "q1", "answer": "Rome", "nbest": []}]  # a line of a journal older than the versions
    journal.write_text("".join(json.dumps(line) + "\n" for line in [header, *earlier]))
    grpc_server.versions.version = None
    assert predict_command.main(args) == 0, capsys.readouterr().err
    versions = json.loads((tmp_path / "p.json.versions.json").read_text())
    assert versions == {"q0": 7, "q1": None, "q2": None, "q3": None}
    assert "(2 of them from the journal of an earlier run); model versions 7 (1 answer), not said by the server " \
           "(3)" in capsys.readouterr().err
