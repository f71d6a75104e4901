"""Answers through real MindSpore Serving (Lite CPU) over gRPC and REST, with a model whose answer is known.

The oracle checkpoint (tests/oracle.py) scores the start at the word "paris" and the end
at the word "france", wherever they are, so the expected answer of every context is
context[index of Paris : end of France], computed here from the text alone.
"""
import numpy as np
import pytest

from wire import rest_post

FILLER = "The committee met again on a rainy day to talk about roads, bridges and trains. "


def expected(context: str):
    start = context.lower().index("paris")
    end = context.lower().index("france") + len("france")
    return context[start:end], start, end


CASES = {
    "plain": "The city of Paris is the capital of France, they say.",
    "punctuation": "Cities: «Paris»—(France); nothing else.",
    "accents": "Ünïcödé façade café: naïve Paris, près de la France métropolitaine.",
    "chinese": "东京和大阪都很大。Paris 是 France 的首都。",
    "past_first_window": FILLER * 30 + "Later Paris became the capital of France again. " + FILLER * 3,
    "deep_in_long_context": FILLER * 80 + "Paris in France. " + FILLER * 2,
}


@pytest.fixture(params=["oracle_server", "oracle_lite_server"], ids=["bucket-models", "lite-direct"])
def any_server(request):
    """Both runtimes: Serving's per-bucket models, and one Lite model at each window's exact length."""
    return request.getfixturevalue(request.param)


def rest(server, method, instances):
    return rest_post(server.rest_address, f"/model/bert_squad:{method}", {"instances": instances}, timeout=60)


@pytest.mark.parametrize("case", sorted(CASES))
def test_answer_is_the_exact_context_substring_over_rest(any_server, case):
    context = CASES[case]
    reply = rest(any_server, "predict", [{"question": "Which capital?", "context": context}])
    result = reply["instances"][0]
    text, start, end = expected(context)
    assert (result["answer"], result["start"], result["end"]) == (text, start, end)
    assert context[result["start"]:result["end"]] == result["answer"]
    assert 0.5 < result["score"] <= 1.0


def test_two_instances_in_one_request_get_their_own_answers_over_grpc(any_server):
    from mindspore_serving.client import Client

    contexts = [CASES["plain"], "Paris, France.", CASES["past_first_window"]]
    client = Client(any_server.grpc_address, "bert_squad", "predict")
    replies = client.infer([{"question": "Which capital?", "context": c} for c in contexts])
    for context, reply in zip(contexts, replies):
        text, start, end = expected(context)
        assert (reply["answer"], int(reply["start"]), int(reply["end"])) == (text, start, end)


def test_a_bad_instance_fails_alone(any_server):
    good = CASES["plain"]
    reply = rest(any_server, "predict", [
        {"question": "Which capital?", "context": good},
        {"question": "   ", "context": good},
        {"question": "Which capital?", "context": "Paris, France."},
    ])["instances"]
    assert reply[0]["answer"] == expected(good)[0]
    assert "question is empty" in reply[1]["error_msg"]
    assert reply[2]["answer"] == "Paris, France"


def test_top_k_lists_are_ranked_and_cut_from_the_context(any_server):
    context = CASES["accents"]
    reply = rest(any_server, "predict_with_options",
                 [{"question": "Which capital?", "context": context, "top_k": 5, "max_answer_length": 30}])
    result = reply["instances"][0]
    assert len(result["top_starts"]) == len(result["top_ends"]) == len(result["top_scores"]) == 5
    assert (result["top_starts"][0], result["top_ends"][0]) == expected(context)[1:]
    assert result["top_scores"] == sorted(result["top_scores"], reverse=True)
    assert sum(result["top_scores"]) <= 1.0 + 1e-6
    assert len({(s, e) for s, e in zip(result["top_starts"], result["top_ends"])}) == 5


def test_max_answer_length_rules_out_long_spans(any_server):
    context = "Paris " + "and then " * 20 + "France."  # the oracle span is ~42 tokens long
    reply = rest(any_server, "predict_with_options",
                 [{"question": "Which capital?", "context": context, "top_k": 1, "max_answer_length": 30}])
    result = reply["instances"][0]
    assert result["end"] - result["start"] < len(expected(context)[0])
    assert len(context[result["start"]:result["end"]].split()) <= 30


def test_served_features_match_mindspore_in_process_for_every_bucket(oracle_server, oracle_model):
    """predict_features runs each bucket's MindIR under Lite; MindSpore in-process is the reference."""
    import mindspore as ms

    from mindspore_serving.client import Client

    net, config, buckets = oracle_model
    client = Client(oracle_server.grpc_address, "bert_squad", "predict_features")
    rng = np.random.RandomState(7)
    for bucket in buckets:
        length = bucket - 3  # runs in this bucket, not the smaller one
        ids = rng.randint(1000, config.vocab_size, size=length).astype(np.int32)
        mask = np.ones(length, np.int32)
        segment = (np.arange(length) > length // 3).astype(np.int32)
        served = client.infer([{"input_ids": ids, "input_mask": mask, "token_type_id": segment}])[0]
        start, end = net(ms.Tensor(ids[None]), ms.Tensor(mask[None]), ms.Tensor(segment[None]))
        np.testing.assert_allclose(served["start_logits"], start.asnumpy()[0], atol=1e-4)
        np.testing.assert_allclose(served["end_logits"], end.asnumpy()[0], atol=1e-4)


def test_model_time_log_has_one_line_per_model_batch_shorter_than_the_round_trip(any_server):
    import time

    from mindspore_serving.client import Client

    from bert_squad.serving.servable_glue import read_model_times
    from conftest import MODEL_TIMES_FILE

    log = any_server.workdir / MODEL_TIMES_FILE
    _, offset = read_model_times(log)
    length = 57
    client = Client(any_server.grpc_address, "bert_squad", "predict_features")
    ids = np.random.RandomState(3).randint(1000, 20000, length).astype(np.int32)
    t = time.perf_counter()
    reply = client.infer([{"input_ids": ids, "input_mask": np.ones(length, np.int32),
                           "token_type_id": np.zeros(length, np.int32)}])
    round_trip = time.perf_counter() - t
    assert "error" not in reply[0], reply
    lines, offset = read_model_times(log, offset)
    assert len(lines) == 1 and lines[0]["lengths"] == [length]
    assert 0 < lines[0]["seconds"] < round_trip
    assert lines[0]["pid"] != any_server.process.pid  # written by the worker, not the serve command

    rest(any_server, "predict", [{"question": "Which capital?", "context": CASES["past_first_window"]}])
    lines, _ = read_model_times(log, offset)
    assert len(lines) == 1 and len(lines[0]["lengths"]) > 1  # one model batch held all windows of the question
    assert all(0 < n <= 384 for n in lines[0]["lengths"])
