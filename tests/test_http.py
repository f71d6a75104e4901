"""The HTTP front door (bert_squad/front/http.py, rest.py) against MindSpore Serving's own REST server.

One real Serving (master + worker, oracle model) serves gRPC and, for comparison only, its own REST
API; the front door runs in this process and forwards to the same gRPC endpoint. For good requests
both must answer the same bytes: existing REST clients see no difference.
"""
import asyncio
import base64
import json
import os
import threading
import time

import numpy as np
import pytest

import wire
from bert_squad.front import health, http, rest
from bert_squad.front.upstream import Upstream
from bert_squad_client import protocol
from harness import PY39, TOY_SERVE, Server, free_port
from bert_squad.runtimes.lite_lib import with_lite_on_library_path

PARIS = "The city of Paris is the capital of France, they say."
QUESTION = {"question": "Which capital?", "context": PARIS}
IDS = [101, 2054, 3007, 102, 3000, 2003, 1999, 2605, 102]


def b64(array) -> dict:
    array = np.asarray(array)
    return {"b64": base64.b64encode(array.astype(array.dtype.newbyteorder("<")).tobytes()).decode(),
            "type": array.dtype.name, "shape": list(array.shape)}


GOOD_REQUESTS = [  # (method, body): every value form Serving's REST API takes
    ("predict", {"instances": [QUESTION]}),
    ("predict", {"instances": QUESTION}),  # one instance as an object
    ("predict", {"instances": [QUESTION, {"question": "", "context": PARIS}, QUESTION]}),  # a per-instance error
    ("predict", {"instances": [{"question": {"b64": base64.b64encode(b"Which capital?").decode()},
                                "context": {"b64": base64.b64encode(PARIS.encode()).decode(), "type": "str"}}]}),
    ("predict", {"instances": [{"question": ["Which capital?"], "context": [PARIS]}]}),
    ("predict", {"instances": [{"question": "😀 ما capital 東京?", "context": "Paris\x00 and\x1f \"France\" \u200b."}]}),
    ("predict_with_options", {"instances": [{**QUESTION, "top_k": 5, "max_answer_length": 30}]}),
    ("predict_with_options", {"instances": [{**QUESTION, "top_k": b64(np.int32(3)), "max_answer_length": b64(
        np.int64(12))}]}),
    ("predict_with_options", {"instances": [{**QUESTION, "top_k": 1.5, "max_answer_length": 30}]}),
    ("predict_features", {"instances": [{"input_ids": IDS, "input_mask": [1] * 9, "token_type_id": [0] * 4 + [1] * 5}]}),
    ("predict_features", {"instances": [{"input_ids": b64(np.array(IDS, np.int32)),
                                         "input_mask": b64(np.ones(9, np.int64)),
                                         "token_type_id": [[0] * 4 + [1] * 5]}]}),
    ("predict_features", {"instances": [{"input_ids": [101.0, 102.0], "input_mask": [True, False],
                                         "token_type_id": [0, 0]}]}),
]


@pytest.fixture(scope="module")
def serving(oracle_servable, tmp_path_factory):
    """Serving with its own REST server (tests/servables/serve_toy.py runs any servable)."""
    workdir = tmp_path_factory.mktemp("serving-rest")
    grpc_port, rest_port = free_port(), free_port()
    command = [str(PY39), str(TOY_SERVE), "--servable-dir", str(oracle_servable["servable_dir"]), "--name",
               "bert_squad", "--grpc-address", f"127.0.0.1:{grpc_port}", "--rest-address", f"127.0.0.1:{rest_port}"]
    env = with_lite_on_library_path({"LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH", "")})
    with Server(workdir, command=command, grpc_port=grpc_port, rest_port=rest_port, env=env) as server:
        yield server


class FrontDoorThread:
    """The front door on a free loopback port, served by uvicorn on an event loop of its own."""

    def __init__(self, grpc_address: str, phase: str = health.SERVING, max_body: int = 64 << 20,
                 availability=None, cors=()):
        state = health.HealthState(lambda: None, 1.0, alive=lambda: True)
        state.phase = phase
        upstream = Upstream(grpc_address, "bert_squad", 1, max_body, 30.0)
        door = http.FrontDoor(upstream, state,
                              availability or (lambda: None if state.phase == health.SERVING else "restarting"),
                              lambda: {"openapi": "3.1.0"})
        self.address = f"127.0.0.1:{free_port()}"
        self.server = http.HttpServer(http.with_cors(door.app, cors), self.address)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the front door did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.stop()
        self.thread.join(30)


@pytest.fixture(scope="module")
def door(serving):
    with FrontDoorThread(serving.grpc_address) as front:
        yield front


@pytest.mark.parametrize("index", range(len(GOOD_REQUESTS)))
def test_good_requests_get_the_bytes_servings_own_rest_server_sends(serving, door, index):
    method, body = GOOD_REQUESTS[index]
    path = f"/model/bert_squad:{method}"
    theirs = wire.rest_exchange(serving.rest_address, path, body, timeout=30)
    ours = wire.rest_exchange(door.address, path, body, timeout=30)
    assert ours[0] == theirs[0] == 200
    assert ours[1]["content-type"] == "application/json"
    assert ours[2] == theirs[2]
    answer = json.loads(ours[2])  # a real reply, or the one instance's own error; not a refusal both sent
    assert answer.get("instances") or "Call Function" in answer["error_msg"]


def test_versioned_paths_and_a_thousand_instances_match_too(serving, door):
    contexts = [f"Report {i}: the city of Paris is the capital of France, year {1000 + i}." for i in range(1000)]
    body = {"instances": [{"question": "Which capital?", "context": c} for c in contexts]}
    for path in ("/model/bert_squad/version/1:predict", "/model/bert_squad:predict"):
        assert wire.rest_exchange(door.address, path, body)[2] == wire.rest_exchange(serving.rest_address, path,
                                                                                     body)[2]


def test_not_serving_is_503_with_retry_after_and_never_forwarded(serving):
    with FrontDoorThread(serving.grpc_address, phase=health.RESTARTING) as front:
        status, headers, data = wire.rest_exchange(front.address, "/model/bert_squad:predict",
                                                   {"instances": [QUESTION]}, timeout=5)
        assert (status, headers["retry-after"]) == (503, str(http.RETRY_AFTER_S))
        assert json.loads(data) == {"error_msg": "restarting", "request_id": headers["x-request-id"]}


OIP_BODY = {"inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], "data": ["Which capital?"]},
                       {"name": "context", "datatype": "BYTES", "shape": [1], "data": [PARIS]}]}


def test_oip_while_restarting_is_503_with_retry_after_and_the_ready_probes_say_so(serving):
    with FrontDoorThread(serving.grpc_address, phase=health.RESTARTING) as front:
        status, headers, data = wire.rest_exchange(front.address, "/v2/models/bert_squad/infer", OIP_BODY, timeout=5)
        assert (status, headers["retry-after"]) == (503, str(http.RETRY_AFTER_S))
        assert json.loads(data) == {"error": "restarting", "request_id": headers["x-request-id"]}
        assert wire.rest_exchange(front.address, "/v2/health/live", b"", method="GET", timeout=5)[0] == 200
        for path in ("/v2/health/ready", "/v2/models/bert_squad/ready"):
            status, _, data = wire.rest_exchange(front.address, path, b"", method="GET", timeout=5)
            assert status == 503 and json.loads(data)["ready"] is False, path


def test_oip_to_a_master_that_is_down_is_503_with_retry_after_at_once():
    with FrontDoorThread(f"127.0.0.1:{free_port()}") as front:  # nothing listens there
        t0 = time.perf_counter()
        status, headers, data = wire.rest_exchange(front.address, "/v2/models/bert_squad/infer", OIP_BODY, timeout=40)
        assert status == 503 and headers["retry-after"] == str(http.RETRY_AFTER_S)
        assert "Serving's gRPC endpoint is unavailable" in json.loads(data)["error"]
        assert time.perf_counter() - t0 < 25


def test_a_failure_inside_the_front_door_is_a_500_in_json_and_the_door_keeps_answering():
    def broken():
        raise RuntimeError("state file unreadable")

    with FrontDoorThread(f"127.0.0.1:{free_port()}", availability=broken) as front:
        for _ in range(2):
            status, headers, data = wire.rest_exchange(front.address, "/model/bert_squad:predict",
                                                       {"instances": [QUESTION]}, timeout=10)
            assert (status, headers["content-type"]) == (500, "application/json")
            assert json.loads(data) == {"error_msg": "the front door failed: RuntimeError: state file unreadable; "
                                                     "see the server log", "request_id": headers["x-request-id"]}
        assert wire.rest_exchange(front.address, "/livez", b"", method="GET", timeout=10)[0] == 200


def test_a_master_that_is_down_is_503_with_retry_after_at_once():
    with FrontDoorThread(f"127.0.0.1:{free_port()}") as front:  # nothing listens there
        t0 = time.perf_counter()
        status, headers, data = wire.rest_exchange(front.address, "/model/bert_squad:predict",
                                                   {"instances": [QUESTION]}, timeout=40)
        assert status == 503 and headers["retry-after"] == str(http.RETRY_AFTER_S)
        assert "Serving's gRPC endpoint is unavailable" in json.loads(data)["error_msg"]
        assert time.perf_counter() - t0 < 25  # gRPC's first connect attempt fails fast on a closed port


def reply(*instances, errors=()):
    message = protocol.PredictReply()
    for outputs in instances:
        instance = message.instances.add()
        for name, value in outputs.items():
            protocol.fill_tensor(instance.items[name], value)
    for code, text in errors:
        message.error_msg.add(error_code=code, error_msg=text.encode())
    return message


@pytest.mark.parametrize("code, text, status, retry", [
    (2, "enqueued requests count exceeds the limit 64", 429, 1),
    (5, "Request servable(bert_squad) method(predict) , servable is not available", 503, 1),
    (2, "Request servable(bert_squad) method(x) , method is not available", 404, None),
    (2, "Cannot find input context in instance input", 400, None),
    (1, "something else went wrong", 500, None),
])
def test_whole_request_failures_from_serving_get_real_status_codes(code, text, status, retry):
    with pytest.raises(rest.RestError) as refused:
        rest.reply_body(reply(errors=[(code, text)]), 1)
    assert (refused.value.status, refused.value.message, refused.value.retry_after) == (status, text, retry)


def test_the_error_of_a_single_instance_stays_a_200_as_serving_writes_it():
    """Serving sends no instance and one error when the only instance failed in a stage (code 3)."""
    text = "Call Function 'bert_squad.preprocess' Failed, method: 'predict', ...: question is empty"
    assert rest.reply_body(reply(errors=[(rest.STAGE_FAILED, text)]), 1) == rest.dumps({"error_msg": text})


def test_replies_are_written_as_nlohmann_json_writes_them():
    values = {"score": np.float32(0.1), "text": "a\"b\\c\n\x01é😀", "ids": np.arange(6, dtype=np.int32).reshape(2, 3),
              "big": np.array([1e16, 2e15, -2.5e-7, 3.0, -17.0117340087890625], np.float64), "flag": np.array([True, False]),
              "odd": np.array([np.nan, np.inf, 1.0], np.float32)}
    body = rest.reply_body(reply(values, {"score": np.float32(1)}, errors=[(0, ""), (2, "bad instance")]), 2)
    # -17.0117340087890625 lies exactly between two 17-digit texts: repr takes the even one, Grisu2 the larger
    assert body == ('{"instances":[{"big":[1e+16,2e+15,-2.5e-07,3.0,-17.011734008789063],"flag":[true,false],'
                    '"ids":[[0,1,2],[3,4,5]],"odd":[null,null,1.0],"score":0.10000000149011612,'
                    '"text":["a\\"b\\\\c\\n\\u0001é😀"]},{"error_msg":"bad instance"}]}').encode()


# ---------------------------------------------------------------- CORS (--cors-allow-origin)

ALLOWED, OTHER = "https://qa.example.com", "https://elsewhere.example.org"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}


@pytest.mark.parametrize("path, body", [("/model/bert_squad:predict", {"instances": [QUESTION]}),
                                        ("/v2/models/bert_squad/infer", OIP_BODY)])
def test_cors_lets_an_allowed_origin_call_every_protocol_and_no_other(serving, path, body):
    with FrontDoorThread(serving.grpc_address, cors=[ALLOWED]) as front:
        status, headers, _ = wire.rest_exchange(front.address, path, b"", method="OPTIONS",
                                                headers={"Origin": ALLOWED, **PREFLIGHT}, timeout=10)
        assert status == 200 and headers["access-control-allow-origin"] == ALLOWED
        assert "POST" in headers["access-control-allow-methods"]
        assert "access-control-allow-credentials" not in headers
        status, headers, _ = wire.rest_exchange(front.address, path, b"", method="OPTIONS",
                                                headers={"Origin": OTHER, **PREFLIGHT}, timeout=10)
        assert status == 400 and "access-control-allow-origin" not in headers
        status, headers, data = wire.rest_exchange(front.address, path, body, headers={"Origin": ALLOWED}, timeout=30)
        assert status == 200 and headers["access-control-allow-origin"] == ALLOWED and json.loads(data)
        status, headers, _ = wire.rest_exchange(front.address, path, body, headers={"Origin": OTHER}, timeout=30)
        assert status == 200 and "access-control-allow-origin" not in headers  # the browser keeps it from the page
        status, headers, _ = wire.rest_exchange(front.address, "/readyz", b"", method="GET",
                                                headers={"Origin": ALLOWED}, timeout=10)
        assert headers["access-control-allow-origin"] == ALLOWED


def test_without_cors_origins_no_cors_header_is_sent_and_preflight_is_not_answered(door):
    for path, body in (("/model/bert_squad:predict", {"instances": [QUESTION]}),
                       ("/v2/models/bert_squad/infer", OIP_BODY)):
        status, headers, _ = wire.rest_exchange(door.address, path, body, headers={"Origin": ALLOWED}, timeout=30)
        assert status == 200 and not [h for h in headers if h.startswith("access-control-")]
        status, headers, _ = wire.rest_exchange(door.address, path, b"", method="OPTIONS",
                                                headers={"Origin": ALLOWED, **PREFLIGHT}, timeout=10)
        assert status == 405 and not [h for h in headers if h.startswith("access-control-")]
