"""The benchmark's load generators against real Serving (the oracle: every answer spans "Paris" .. "France").

Both ways of sending the stream must ask every question once, keep the input order, hold exactly the
level's number of requests in flight, and report the CPU the load generator took.
"""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import serving  # noqa: E402

FILLER = "Trains left the station on time while the rain went on. "
QUESTIONS = [{"id": f"q{i}", "question": "Which capital?",
              "context": FILLER * (i % 4) + f"Paris {i} is in France." + FILLER * (i % 3)} for i in range(9)]


def in_flight_most(level: dict) -> int:
    """The largest number of requests open at one instant, from each request's end and latency."""
    events = sorted([(end - latency, 1) for end, latency in zip(level["ends"], level["latencies"])]
                    + [(end, -1) for end in level["ends"]])
    most = open_now = 0
    for _, step in events:
        open_now += step
        most = max(most, open_now)
    return most


@pytest.mark.parametrize("stream", serving.STREAMS)
@pytest.mark.parametrize("concurrency", [1, 3])
def test_stream_answers_every_question_in_order_with_that_many_in_flight(oracle_lite_server, stream, concurrency):
    level = serving.sweep("official", oracle_lite_server.grpc_address, QUESTIONS, concurrency, stream)
    assert level["errors"] == 0 and level["ids"] == [q["id"] for q in QUESTIONS]
    for q in QUESTIONS:
        start = q["context"].index("Paris")
        end = q["context"].index("France") + len("France")
        assert level["answers"][q["id"]] == [q["context"][start:end], start, end]
    assert in_flight_most(level) == concurrency
    # this process's CPU while the stream ran: some, and at most all the cores for that long
    assert 0 < level["client_cpu_s"] < level["wall_s"] * os.cpu_count() + 0.05
    assert 0 < max(level["latencies"]) <= level["wall_s"]


def test_aio_stream_reports_a_server_that_refuses_as_errors_not_answers(oracle_lite_server):
    bad = [{"id": "empty", "question": "  ", "context": "Paris, France."}, QUESTIONS[0]]
    level = serving.sweep("official", oracle_lite_server.grpc_address, bad, 2, "aio")
    assert level["errors"] == 1 and "question is empty" in level["error_examples"][0]
    assert list(level["answers"]) == ["q0"]


def test_the_oip_clients_and_protocol_passes_answer_as_the_oracle(oracle_lite_server):
    from types import SimpleNamespace

    from bench import oip
    from bert_squad.front.health import ready_fields

    internal = ready_fields(oracle_lite_server.ready_line)["internal"]
    server = SimpleNamespace(address=oracle_lite_server.grpc_address, rest_address=oracle_lite_server.rest_address,
                             oip_grpc_address=oracle_lite_server.oip_grpc_address,
                             internal_address=serving.unix_target(internal, oracle_lite_server.workdir))
    spans = [q["context"][q["context"].index("Paris"):q["context"].index("France") + len("France")]
             for q in QUESTIONS]
    pairs = [(q["question"], q["context"]) for q in QUESTIONS]
    for client in (oip.OipGrpc(server.oip_grpc_address, 30), oip.OipRest(server.rest_address, 30)):
        assert client.ask(pairs) == spans and client.answer(*pairs[0]) == spans[0]
        with pytest.raises(oip.Refused):
            client.answer(" ", "x")
        client.close()
    passed = serving.transport_pass(server, QUESTIONS[:2], rounds=2)
    assert passed["ids"] == ["q0", "q1"] * 2
    assert {name: len(passed[name]) for name in serving.TRANSPORTS} == dict.fromkeys(serving.TRANSPORTS, 4)
    batch = serving.batch_pass(server, QUESTIONS, 3)  # raises when a batched answer differs from the single one
    assert batch["questions"] == 9 and min(batch["qps"].values()) > 0
