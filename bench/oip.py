"""Open Inference Protocol clients of the benchmark: the smallest that speak each form (the protocol's generated
gRPC stubs with tritonclient's raw BYTES encoding, oip/raw.py's; JSON tensors over one kept-alive HTTP/1.1
connection), so a pass measures the server's path, not a client library's. They run in the Python 3.9 venv beside
the MindSpore Serving clients they are paired with (tritonclient and kserve are in the 3.11 venv, where the tests
use them)."""
from __future__ import annotations

import http.client
import json
from typing import List, Sequence, Tuple

import numpy as np

MODEL = "bert_squad"


class Refused(Exception):
    """The server refused the whole request (HTTP 4xx / a gRPC status)."""


class OipGrpc:
    def __init__(self, address: str, timeout: float):
        import grpc

        from bert_squad.front.oip import raw
        from bert_squad.front.oip.stubs import pb, pb_grpc

        self._grpc, self._pb, self._raw, self.timeout = grpc, pb, raw, timeout
        self._channel = grpc.insecure_channel(address)
        self._infer = pb_grpc.GRPCInferenceServiceStub(self._channel).ModelInfer

    def ask(self, pairs: Sequence[Tuple[str, str]]) -> List[str]:
        """The answers to N (question, context) pairs, asked in one request."""
        request = self._pb.ModelInferRequest(model_name=MODEL)
        for name in ("question", "context"):
            request.inputs.add(name=name, datatype="BYTES", shape=[len(pairs)])
        request.outputs.add(name="answer")
        request.raw_input_contents.extend(self._raw.encode("BYTES", np.array([text.encode() for text in column],
                                                                            dtype=np.object_))
                                          for column in zip(*pairs))  # tritonclient.grpc's form
        try:
            reply = self._infer(request, timeout=self.timeout)
        except self._grpc.RpcError as error:
            raise Refused(f"{error.code().name}: {error.details()}") from None
        answer = reply.outputs[0]
        return [element.decode() for element in self._raw.decode("BYTES", reply.raw_output_contents[0], answer.name,
                                                                  list(answer.shape))]

    def answer(self, question: str, context: str) -> str:
        return self.ask([(question, context)])[0]

    def close(self) -> None:
        self._channel.close()


# A kept connection the server closed meanwhile fails like this on reuse (as bert_squad_client.rest knows too)
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class OipRest:
    def __init__(self, address: str, timeout: float):
        host, port = address.rsplit(":", 1)
        self._connection = http.client.HTTPConnection(host, int(port), timeout=timeout)

    def ask(self, pairs: Sequence[Tuple[str, str]]) -> List[str]:
        body = json.dumps({"inputs": [
            {"name": "question", "datatype": "BYTES", "shape": [len(pairs)], "data": [q for q, _ in pairs]},
            {"name": "context", "datatype": "BYTES", "shape": [len(pairs)], "data": [c for _, c in pairs]}],
            "outputs": [{"name": "answer"}]}).encode()
        try:
            response = self._post(body)
        except _STALE:  # the server closed the kept connection while it was idle (--http-keep-alive-s): once more
            self._connection.close()
            response = self._post(body)
        data = response.read()
        if response.status != 200:
            raise Refused(f"{response.status}: {data[:300]!r}")
        return json.loads(data)["outputs"][0]["data"]

    def _post(self, body: bytes) -> http.client.HTTPResponse:
        self._connection.request("POST", f"/v2/models/{MODEL}/infer", body, {"Content-Type": "application/json"})
        return self._connection.getresponse()

    def answer(self, question: str, context: str) -> str:
        return self.ask([(question, context)])[0]

    def close(self) -> None:
        self._connection.close()
