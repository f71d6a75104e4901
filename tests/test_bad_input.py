"""Malformed requests against a real server (oracle model, Lite CPU), over gRPC and REST.

Each bad instance travels between two good ones: the bad one gets an error that says what is
wrong, the good ones get their (known) answers, unless Serving itself refuses the whole
request, which the tests pin down as such. The worker process must survive the whole module.
"""
import base64
import time
from concurrent.futures import ThreadPoolExecutor

import json

import numpy as np
import pytest

import wire
from bert_squad import settings
from harness import Server

PARIS = "The city of Paris is the capital of France, they say."
GOOD = {"question": "Which capital?", "context": PARIS}
ANSWER = "Paris is the capital of France"
VOCAB_SIZE = 30522  # the oracle's vocabulary (uncased BERT)


@pytest.fixture(scope="module")
def server(oracle_servable, tmp_path_factory):
    with Server(tmp_path_factory.mktemp("bad-input"), oracle_servable["servable_dir"]) as server:
        server.first_workers = server.worker_pids()
        yield server
    assert server.process.returncode == 0, server.output()


@pytest.fixture(autouse=True)
def worker_survives(server):
    yield
    assert server.worker_pids() == server.first_workers, "a request killed the worker"


def oracle_answer(context: str) -> str:
    return context[context.lower().index("paris"):context.lower().index("france") + len("france")]


def grpc_sandwich(server, method, bad, good=GOOD):
    """gRPC [good, bad, good]; returns the bad instance's result after checking the good ones."""
    reply = wire.grpc_predict(server.grpc_address, method, [good, bad, good])
    return _middle(reply, good)


def rest_sandwich(server, method, bad, good=GOOD):
    reply = wire.rest_predict(server.rest_address, method, {"instances": [good, bad, good]})
    return _middle(reply, good)


def _middle(reply, good):
    if isinstance(reply, str):
        return reply  # the whole request failed
    assert len(reply) == 3
    for result in (reply[0], reply[2]):
        assert result.get("answer") == oracle_answer(good["context"]), result
    return reply[1]


def error_of(result) -> str:
    assert isinstance(result, dict) and "error" in result, f"expected a per-instance error, got {result!r}"
    return result["error"]


# ---------------------------------------------------------------- text inputs, both protocols

TEXT_CASES = {
    "empty question": ({"question": "", "context": PARIS}, "question is empty"),
    "empty context": ({"question": "Which?", "context": ""}, "context is empty"),
    "whitespace question": ({"question": " \t\n\u3000 ", "context": PARIS}, "question is empty"),
    "whitespace context": ({"question": "Which?", "context": "\n\n   \t"}, "context is empty"),
    "1 MB context": ({"question": "Which?", "context": "Paris, France. " * 70_000},
                     "context has 1050000 characters, more than the limit of 100000; shorten it"),
    "question over the character limit": ({"question": "why " * 600, "context": PARIS},
                                          "question has 2400 characters, more than the limit of 2000"),
    "control characters only": ({"question": "\x00\x01\x07\u200b\ufeff", "context": PARIS},
                                "question has no tokens (only control or invisible characters)"),
}


@pytest.mark.parametrize("case", sorted(TEXT_CASES))
@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_bad_text_fails_alone_with_a_clear_message(server, protocol, case):
    bad, message = TEXT_CASES[case]
    sandwich = grpc_sandwich if protocol == "grpc" else rest_sandwich
    assert message in error_of(sandwich(server, "predict", bad))


UNUSUAL_TEXT = {
    "emoji": ("😀 which capital 🇫🇷?", "😀 Paris 🇫🇷 sits in France 😀, they say."),
    "right to left": ("ما هي العاصمة؟", "باريس Paris عاصمة France فرنسا"),
    "CJK": ("哪个首都？", "东京和大阪都很大。Paris 是 France 的首都。"),
    "control characters inside": ("Which\x07 capital?", "Paris\x00 and\x1f France\u200b here."),
}


@pytest.mark.parametrize("case", sorted(UNUSUAL_TEXT))
@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_unusual_text_is_answered_with_offsets_into_the_same_string(server, protocol, case):
    question, context = UNUSUAL_TEXT[case]
    sandwich = grpc_sandwich if protocol == "grpc" else rest_sandwich
    result = sandwich(server, "predict", {"question": question, "context": context})
    assert result["answer"] == oracle_answer(context) == context[result["start"]:result["end"]]


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_a_question_longer_than_the_window_takes_is_cut_to_its_first_64_tokens(server, protocol):
    """Under the character limit but over MAX_QUERY_LENGTH tokens: cut as the reference SQuAD code does."""
    sandwich = grpc_sandwich if protocol == "grpc" else rest_sandwich
    result = sandwich(server, "predict", {"question": "which capital " * 100, "context": PARIS})
    assert result["answer"] == ANSWER


# ---------------------------------------------------------------- bytes that are not UTF-8

def test_non_utf8_string_tensor_over_grpc_fails_alone(server):
    bad = {"question": wire.text(b"\xff\xfe caf\xe9?"), "context": PARIS}
    assert "is not valid UTF-8; send UTF-8 text" in error_of(grpc_sandwich(server, "predict", bad))
    bad = {"question": "Which?", "context": wire.text(b"Paris \xc3\x28 France")}
    assert "is not valid UTF-8" in error_of(grpc_sandwich(server, "predict", bad))


def test_bytes_tensors_over_grpc_are_decoded_as_utf8(server):
    good = {"question": wire.text("Which capital?".encode(), wire.pb.MS_BYTES),
            "context": wire.text(PARIS.encode(), wire.pb.MS_BYTES)}
    assert grpc_sandwich(server, "predict", good)["answer"] == ANSWER
    bad = {"question": wire.text(b"\xff\xfe", wire.pb.MS_BYTES), "context": PARIS}
    assert "question is not valid UTF-8 (byte 0); send UTF-8 text" in error_of(grpc_sandwich(server, "predict", bad))


def test_non_utf8_over_rest(server):
    body = b'{"instances":[{"question":"\xff\xfe","context":"Paris, France."}]}'
    assert wire.rest_refusal(server.rest_address, "predict", body) == (
        400, "the request body is not valid UTF-8 (byte 27); send JSON in UTF-8")
    lone_surrogate = b'{"instances":[{"question":"\\ud800","context":"Paris, France."}]}'
    status, message = wire.rest_refusal(server.rest_address, "predict", lone_surrogate)
    assert status == 400 and "input 'question' holds a lone UTF-16 surrogate ('\\ud800')" in message
    as_str = {"b64": base64.b64encode(b"\xff\xfe caf\xe9").decode(), "type": "str"}
    bad = {"question": as_str, "context": PARIS}
    assert "is not valid UTF-8" in error_of(rest_sandwich(server, "predict", bad))
    as_bytes = {"b64": base64.b64encode("Which capital?".encode()).decode()}
    assert rest_sandwich(server, "predict", {"question": as_bytes, "context": PARIS})["answer"] == ANSWER


BAD_BASE64 = {  # Serving 2.0.2's own REST server left the first three unanswered until the client gave up
    "not base64 at all": ({"b64": "!!!notbase64", "type": "str"}, "b64 is not valid base64"),
    "padding only": ({"b64": "===="}, "b64 is not valid base64"),
    "characters >= U+00FC": ({"b64": "\u00fc\u00fd\u00fe\u00ff"}, "b64 holds '\\xfc', which is not a base64 character"),
    "missing padding": ({"b64": "YWJj ZA"}, "b64 is not valid base64"),
    "numbers as b64": ({"b64": 42}, "b64 is a JSON integer; it must be a base64 string"),
    "unknown type": ({"b64": "AAAA", "type": "complex"}, "has type 'complex'; use one of"),
    "size not the shape's": ({"b64": "AAAA", "type": "int32", "shape": [2]}, "b64 holds 3 bytes, but int32 of shape"),
}


@pytest.mark.parametrize("case", sorted(BAD_BASE64))
def test_malformed_base64_over_rest_is_refused_within_a_second_with_the_reason(server, case):
    value, message = BAD_BASE64[case]
    t0 = time.perf_counter()
    status, reply = wire.rest_refusal(server.rest_address, "predict",
                                      {"instances": [GOOD, {"question": value, "context": PARIS}]}, timeout=5)
    assert time.perf_counter() - t0 < 1.0
    assert status == 400 and reply.startswith("instance 1 input 'question'") and message in reply, reply


def test_raw_bytes_from_0x80_up_in_a_rest_body_are_refused_within_a_second(server):
    for byte in (0x80, 0xC0, 0xFC, 0xFF):
        body = b'{"instances":[{"question":{"b64":"' + bytes([byte]) * 8 + b'"},"context":"Paris"}]}'
        t0 = time.perf_counter()
        status, message = wire.rest_refusal(server.rest_address, "predict", body, timeout=5)
        assert time.perf_counter() - t0 < 1.0
        assert (status, message) == (400, "the request body is not valid UTF-8 (byte 34); send JSON in UTF-8")


def test_500_bad_requests_at_once_leave_the_server_answering(server):
    bad = b'{"instances":[{"question":{"b64":"!!!notbase64","type":"str"},"context":"x"}]}'
    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(lambda _: wire.rest_refusal(server.rest_address, "predict", bad, timeout=30)[0],
                                 range(500)))
    assert outcomes == [400] * 500
    assert wire.rest_predict(server.rest_address, "predict", {"instances": [GOOD]}, timeout=10)[0]["answer"] == ANSWER


# ---------------------------------------------------------------- fields and tensors

@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_a_missing_field_fails_the_whole_request(server, protocol):
    """Serving checks every instance for every input before any stage runs: no per-instance error here."""
    bad = {"question": "Which capital?"}
    message = "Cannot find input context in instance input , servable bert_squad, method predict"
    if protocol == "grpc":
        assert grpc_sandwich(server, "predict", bad) == message
    else:
        assert wire.rest_refusal(server.rest_address, "predict", {"instances": [GOOD, bad, GOOD]}) == (400, message)


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_an_extra_field_is_ignored(server, protocol):
    sandwich = grpc_sandwich if protocol == "grpc" else rest_sandwich
    assert sandwich(server, "predict", {**GOOD, "top_k": "five", "debug": "1"})["answer"] == ANSWER


GRPC_WRONG_TENSORS = [
    ("predict", {"question": np.float32(1.5), "context": PARIS}, "question must be a string, got ndarray float32"),
    ("predict", {"question": np.ones((2, 2), np.int32), "context": PARIS}, "question must be a string"),
    ("predict", {"question": "Which?", "context": np.zeros(3, np.float64)}, "context must be a string"),
    ("predict_with_options", {**GOOD, "top_k": np.float32(3), "max_answer_length": np.int32(30)},
     "top_k must be one integer (int32 scalar), got float32"),
    ("predict_with_options", {**GOOD, "top_k": np.array([1, 2], np.int32), "max_answer_length": np.int32(30)},
     "top_k must be one integer (int32 scalar), got int32 of shape (2,)"),
    ("predict_with_options", {**GOOD, "top_k": "3", "max_answer_length": np.int32(30)},
     "top_k must be one integer"),
    ("predict_with_options", {**GOOD, "top_k": np.int32(1), "max_answer_length": np.float64(30)},
     "max_answer_length must be one integer"),
    ("predict_features", {"input_ids": np.array([101, 2054, 102], np.float32), "input_mask": np.ones(3, np.int32),
                          "token_type_id": np.zeros(3, np.int32)},
     "input_ids must be a 1-D integer tensor (int32 [seq]), got float32 of shape (3,)"),
    ("predict_features", {"input_ids": np.array([[101, 2054, 102]], np.int32), "input_mask": np.ones(3, np.int32),
                          "token_type_id": np.zeros(3, np.int32)},
     "input_ids must be a 1-D integer tensor (int32 [seq]), got int32 of shape (1, 3)"),
    ("predict_features", {"input_ids": np.array([101, 2054, 102], np.int32), "input_mask": "1 1 1",
                          "token_type_id": np.zeros(3, np.int32)}, "input_mask must be a 1-D integer tensor"),
    ("predict_features", {"input_ids": np.array([101, 2054, 102], np.int32), "input_mask": np.ones(3, np.int32),
                          "token_type_id": np.zeros((3, 1), np.int32)}, "token_type_id must be a 1-D integer"),
    ("predict_features", {"input_ids": np.ones(500, np.int32), "input_mask": np.ones(500, np.int32),
                          "token_type_id": np.zeros(500, np.int32)}, "input_ids has 500 tokens; send 1 to 384"),
    ("predict_features", {"input_ids": np.ones(0, np.int32), "input_mask": np.ones(0, np.int32),
                          "token_type_id": np.zeros(0, np.int32)}, "input_ids has 0 tokens; send 1 to 384"),
    ("predict_features", {"input_ids": np.ones(4, np.int32), "input_mask": np.ones(4, np.int32),
                          "token_type_id": np.zeros(3, np.int32)}, "differ in length: [4, 4, 3]"),
    ("predict_features", {"input_ids": np.ones(4, np.int32), "input_mask": np.array([1, 1, 2, 0], np.int32),
                          "token_type_id": np.zeros(4, np.int32)}, "input_mask holds values outside [0, 2)"),
    ("predict_features", {"input_ids": np.ones(4, np.int32), "input_mask": np.zeros(4, np.int32),
                          "token_type_id": np.zeros(4, np.int32)}, "input_mask has no 1"),
    ("predict_features", {"input_ids": np.ones(4, np.int32), "input_mask": np.ones(4, np.int32),
                          "token_type_id": np.array([0, 0, 5, 0], np.int32)},
     "token_type_id holds values outside [0, 2)"),
]
FEATURES = {"input_ids": np.array([101, 2054, 3007, 102, 3000, 2003, 1999, 2605, 102], np.int32),
            "input_mask": np.ones(9, np.int32), "token_type_id": np.array([0] * 4 + [1] * 5, np.int32)}


def good_for(method):
    if method == "predict_features":
        return FEATURES
    if method == "predict_with_options":
        return {**GOOD, "top_k": np.int32(2), "max_answer_length": np.int32(30)}
    return GOOD


@pytest.mark.parametrize("method, bad, message", GRPC_WRONG_TENSORS,
                         ids=[f"{m}-{msg[:30]}" for m, _, msg in GRPC_WRONG_TENSORS])
def test_wrong_tensor_type_or_shape_over_grpc_fails_alone(server, method, bad, message):
    reply = wire.grpc_predict(server.grpc_address, method, [good_for(method), bad, good_for(method)])
    assert message in error_of(reply[1])
    for result in (reply[0], reply[2]):
        assert "error" not in result
        if method == "predict_features":
            assert len(result["start_logits"]) == len(FEATURES["input_ids"])
        else:
            assert result["answer"] == ANSWER


def test_a_tensor_whose_data_does_not_match_its_shape_fails_the_whole_request(server):
    ids = wire.array(np.array([101, 102, 103, 104], np.int32))
    ids.data = ids.data[:5]
    reply = wire.grpc_predict(server.grpc_address, "predict_features", [FEATURES, {**FEATURES, "input_ids": ids}])
    assert reply == "Instances input input_ids check failed, detail: Tensor check failed: input data size 5 invalid"


@pytest.mark.parametrize("dims, message", [
    ((2,), "bytes or string type shape batch size can only be 1"),
    ((1, 1), "bytes or string type input  shape can only be (1,) or empty"),
])
def test_a_string_tensor_of_several_strings_fails_the_whole_request(server, dims, message):
    question = wire.text("Which?", dims=dims)
    question.bytes_val.extend([b"again"] * (dims[0] - 1))
    assert message in wire.grpc_predict(server.grpc_address, "predict", [GOOD, {**GOOD, "question": question}])


REST_WRONG_TYPES = [
    ("predict", {"question": 42, "context": PARIS}, "question must be a string, got ndarray int32"),
    ("predict", {"question": "Which?", "context": 1.5}, "context must be a string"),
    ("predict_with_options", {**GOOD, "top_k": 1.5, "max_answer_length": 30},
     "top_k must be one integer (int32 scalar), got float32"),
    ("predict_with_options", {**GOOD, "top_k": "3", "max_answer_length": 30}, "top_k must be one integer"),
    ("predict_with_options", {**GOOD, "top_k": [1, 2], "max_answer_length": 30}, "got int32 of shape (2,)"),
    ("predict_with_options", {**GOOD, "top_k": 1, "max_answer_length": True}, "max_answer_length must be one"),
    ("predict_features", {"input_ids": [101.0, 2054.5, 102.0], "input_mask": [1, 1, 1], "token_type_id": [0, 0, 0]},
     "input_ids must be a 1-D integer tensor"),
    ("predict_features", {"input_ids": [[101, 2054, 102]], "input_mask": [1, 1, 1], "token_type_id": [0, 0, 0]},
     "got int32 of shape (1, 3)"),
    ("predict_features", {"input_ids": "101 102", "input_mask": [1, 1], "token_type_id": [0, 0]},
     "input_ids must be a 1-D integer tensor"),
]
REST_FEATURES = {k: v.tolist() for k, v in FEATURES.items()}


@pytest.mark.parametrize("method, bad, message", REST_WRONG_TYPES,
                         ids=[f"{m}-{msg[:30]}" for m, _, msg in REST_WRONG_TYPES])
def test_wrong_json_types_over_rest_fail_alone(server, method, bad, message):
    good = {"predict": GOOD, "predict_with_options": {**GOOD, "top_k": 2, "max_answer_length": 30},
            "predict_features": REST_FEATURES}[method]
    reply = wire.rest_predict(server.rest_address, method, {"instances": [good, bad, good]})
    assert message in error_of(reply[1])
    for result in (reply[0], reply[2]):
        assert "error" not in result
        if method == "predict_features":
            assert len(result["start_logits"]) == len(FEATURES["input_ids"])
        else:
            assert result["answer"] == ANSWER


def test_a_json_list_for_a_string_input_fails_the_whole_request(server):
    reply = wire.rest_refusal(server.rest_address, "predict",
                              {"instances": [GOOD, {"question": ["Which?", "Why?"], "context": PARIS}]})
    assert reply == (400, "instance 1 input 'question' is a list of 2 strings; a text or bytes input holds "
                          "exactly one")


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_token_ids_outside_the_vocabulary_fail_alone(server, protocol):
    for value in (VOCAB_SIZE, 10**6, -1):
        ids = FEATURES["input_ids"].copy()
        ids[3] = value
        bad = {**FEATURES, "input_ids": ids}
        if protocol == "grpc":
            reply = wire.grpc_predict(server.grpc_address, "predict_features", [FEATURES, bad, FEATURES])
        else:
            reply = wire.rest_predict(server.rest_address, "predict_features", {"instances": [
                REST_FEATURES, {k: v.tolist() for k, v in bad.items()}, REST_FEATURES]})
        assert f"input_ids holds values outside [0, {VOCAB_SIZE})" in error_of(reply[1])
        assert len(reply[0]["start_logits"]) == len(reply[2]["end_logits"]) == len(ids)


def test_an_int64_token_id_tensor_is_accepted(server):
    """Integer dtypes other than int32 are converted, not refused: the values are checked instead."""
    wide = {k: v.astype(np.int64) for k, v in FEATURES.items()}
    narrow, converted = wire.grpc_predict(server.grpc_address, "predict_features", [FEATURES, wide])
    assert narrow == converted


# ---------------------------------------------------------------- options

@pytest.mark.parametrize("field, value, message", [
    ("top_k", 0, "top_k is 0; use a value from 1 to 20"),
    ("top_k", -3, "top_k is -3; use a value from 1 to 20"),
    ("top_k", 1_000_000, "top_k is 1000000; use a value from 1 to 20"),
    ("max_answer_length", 0, "max_answer_length is 0; use a value from 1 to 384"),
    ("max_answer_length", -1, "max_answer_length is -1; use a value from 1 to 384"),
])
@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_out_of_range_options_fail_alone(server, protocol, field, value, message):
    good = {**GOOD, "top_k": 2, "max_answer_length": 30}
    bad = {**good, field: value}
    if protocol == "grpc":
        good, bad = ({k: np.int32(v) if k in ("top_k", "max_answer_length") else v for k, v in i.items()}
                     for i in (good, bad))
        reply = wire.grpc_predict(server.grpc_address, "predict_with_options", [good, bad, good])
    else:
        reply = wire.rest_predict(server.rest_address, "predict_with_options", {"instances": [good, bad, good]})
    assert message in error_of(reply[1])
    assert reply[0]["answer"] == reply[2]["answer"] == ANSWER and len(reply[0]["top_starts"]) == 2


def test_a_huge_int64_top_k_over_grpc_is_named_as_sent(server):
    good = {**GOOD, "top_k": np.int64(2), "max_answer_length": np.int32(30)}
    reply = wire.grpc_predict(server.grpc_address, "predict_with_options", [good, {**good, "top_k": np.int64(2**40)}])
    assert "top_k is 1099511627776; use a value from 1 to 20" in error_of(reply[1])
    assert reply[0]["answer"] == ANSWER


# ---------------------------------------------------------------- whole requests

@pytest.mark.parametrize("servable, method, version, message", [
    ("nope", "predict", None, "Request servable(nope) method(predict) , servable is not available"),
    ("bert_squad", "nope", None, "Request servable(bert_squad) method(nope) , method is not available"),
    ("bert_squad", "predict", 7,
     "Request servable(bert_squad) method(predict)  version(7) , servable is not available"),
])
def test_unknown_servable_method_or_version_fails_the_whole_request_over_grpc(server, servable, method, version,
                                                                              message):
    assert wire.grpc_predict(server.grpc_address, method, [GOOD], servable=servable, version=version or 0) == message


@pytest.mark.parametrize("servable, method, version, message", [
    ("nope", "predict", None, "Request servable(nope) method(predict) , servable is not available: this server "
                              "serves 'bert_squad' version 1 (version 0 or none: that one)"),
    ("bert_squad", "nope", None, "Request servable(bert_squad) method(nope) , method is not available"),
    ("bert_squad", "predict", 7, "Request servable(bert_squad) method(predict)  version(7) , servable is not "
                                 "available: this server serves 'bert_squad' version 1 (version 0 or none: that one)"),
])
def test_unknown_servable_method_or_version_is_404_over_rest(server, servable, method, version, message):
    assert wire.rest_refusal(server.rest_address, method, {"instances": [GOOD]}, servable=servable,
                             version=version) == (404, message)
    assert wire.rest_predict(server.rest_address, "predict", {"instances": [GOOD]}, version=1)[0]["answer"] == ANSWER


@pytest.mark.parametrize("body, message", [
    (b"{not json", "the request body is not valid JSON (Expecting property name enclosed in double quotes: "
                   "line 1 column 2 (char 1))"),
    (b"", "the request body is empty"),
    (b'{"question": "Which?"}', "the request has no 'instances' key"),
    (b'{"instances": []}', "'instances' is an empty list; send at least one instance"),
    (b'{"instances": [{}]}', "instance 0 is an empty object; each instance is an object of named inputs"),
    (b'{"instances": 3}', "'instances' is a JSON integer; it must be a list of objects"),
    (b'[1, 2, 3]', "the request body is a JSON array, not an object"),
    (b'{"instances": [{"question": NaN, "context": "x"}]}', "NaN is not JSON"),
    (b'{"instances": [{"question": null, "context": "x"}]}', "instance 0 input 'question' is null"),
    (b'{"instances": [{"question": [[1], [2, 3]], "context": "x"}]}', "is a ragged list"),
    (b'{"instances": [{"question": [1, 2.5], "context": "x"}]}', "mixes element types"),
    (b'{"instances": [{"question": 4294967296, "context": "x"}]}', "holds an integer outside int32"),
])
def test_a_rest_body_that_is_not_a_request_is_400_with_the_reason(server, body, message):
    status, reply = wire.rest_refusal(server.rest_address, "predict", body, timeout=5)
    assert status == 400 and message in reply, reply


def test_rest_paths_methods_and_sizes_get_their_status_codes(server):
    address = server.rest_address
    status, headers, data = wire.rest_exchange(address, "/model/bert_squad:predict", b"", method="GET")
    assert (status, json.loads(data)) == (405, {"error_msg": "GET is not allowed on /model/bert_squad:predict",
                                                "request_id": headers["x-request-id"]})
    status, _, data = wire.rest_exchange(address, "/model/bert_squad", {"instances": [GOOD]})
    assert status == 404 and "predict paths are POST /model/<servable>[/version/<n>]:<method>" in data.decode()
    status, _, data = wire.rest_exchange(address, "/model/bert_squad/version/x:predict", {"instances": [GOOD]})
    assert status == 404 and "version 'x'" in data.decode()
    huge = b'{"instances": [{"question": "' + b"a" * (settings.MAX_MESSAGE_MB << 20) + b'", "context": "x"}]}'
    status, _, data = wire.rest_exchange(address, "/model/bert_squad:predict", huge)
    assert status == 413 and f"larger than the limit of {settings.MAX_MESSAGE_MB << 20} bytes" in data.decode()


def test_a_grpc_request_without_instances_is_never_answered(server):
    """Serving 2.0.2 never replies to zero instances: only the caller's deadline ends the call
    (bert_squad_client refuses to send one). The server is unaffected."""
    import grpc

    with pytest.raises(grpc.RpcError) as error:
        wire.grpc_predict(server.grpc_address, "predict", [], timeout=2)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wire.grpc_predict(server.grpc_address, "predict", [GOOD])[0]["answer"] == ANSWER


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_a_thousand_instances_in_one_request_are_all_answered(server, protocol):
    contexts = [f"Report {i}: the city of Paris is the capital of France, year {1000 + i}." for i in range(1000)]
    instances = [{"question": "Which capital?", "context": c} for c in contexts]
    t0 = time.perf_counter()
    if protocol == "grpc":
        reply = wire.grpc_predict(server.grpc_address, "predict", instances)
    else:
        reply = wire.rest_predict(server.rest_address, "predict", {"instances": instances})
    took = time.perf_counter() - t0
    assert [r["answer"] for r in reply] == [oracle_answer(c) for c in contexts]
    print(f"\n1,000 instances over {protocol}: {took:.2f} s")
