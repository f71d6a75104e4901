"""bert_squad_client against real MindSpore Serving processes: every API path over gRPC (blocking and asyncio)
and REST, errors, deadlines, retries, TLS and message sizes.

The `bert_squad` servable runs the oracle model (tests/oracle.py): its answer spans from the word "Paris" to
the word "France", so every expected answer is computed from the context text alone. The toy servable
(tests/servables/toy_qa) is used where a test needs the server to misbehave on cue: sleep, crash, lie.
Marked `pure`: this process imports no MindSpore (servers run under the py39 venv), so it also runs on 3.11.
"""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from bert_squad_client import (PREDICT_MAX_ANSWER_LENGTH, Answer, AsyncClient, BertSquadError, Client,
                               DeadlineExceeded, InvalidResponse, RequestError, RestClient, Result,
                               Retry, ServerUnavailable, Tls)
from harness import Server, free_port, make_tls, toy_server
from oracle import read_vocab, uncased_vocab_file

pytestmark = pytest.mark.pure

QUESTION = "Which capital?"
FILLER = "The committee met again on a rainy day to talk about roads, bridges and trains. "
CONTEXTS = [
    "The city of Paris is the capital of France, they say.",
    "Cities: «Paris»—(France); nothing else.",
    "Ünïcödé façade café: naïve Paris, près de la France métropolitaine.",
    "东京和大阪都很大。Paris 是 France 的首都。",
    FILLER * 30 + "Later Paris became the capital of France again. " + FILLER * 3,
]


def expected(context: str) -> tuple[str, int, int]:
    start = context.lower().index("paris")
    end = context.lower().index("france") + len("france")
    return context[start:end], start, end


def assert_known_answer(result: Result, context: str) -> None:
    assert isinstance(result, Result)
    assert (result.text, result.start, result.end) == expected(context)
    assert result.text == context[result.start:result.end]
    assert 0.5 < result.score <= 1.0
    assert result.top_k[0] == Answer(result.text, result.score, result.start, result.end)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    with toy_server(tmp_path_factory.mktemp("toy")) as server:
        yield server


@pytest.fixture(scope="module")
def client(oracle):
    with Client(oracle.grpc_address, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def rest(oracle):
    with RestClient(oracle.rest_address, timeout=60) as c:
        yield c


# --- answers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(CONTEXTS)))
def test_answer_is_the_known_span_with_offsets_into_the_context(client, index):
    assert_known_answer(client.answer(QUESTION, CONTEXTS[index]), CONTEXTS[index])


def test_top_k_answers_are_ranked_and_cut_from_the_context(client):
    context = CONTEXTS[2]
    result = client.answer(QUESTION, context, top_k=5)
    assert_known_answer(result, context)
    assert len(result.top_k) == 5 and len(set(result.top_k)) == 5
    scores = [a.score for a in result.top_k]
    assert scores == sorted(scores, reverse=True)
    assert all(a.text == context[a.start:a.end] and a.text for a in result.top_k)


def test_the_client_defaults_are_the_servers(client):
    from bert_squad import settings  # pure Python; the client package itself must not import it
    from bert_squad_client import results

    assert PREDICT_MAX_ANSWER_LENGTH == settings.MAX_ANSWER_LENGTH
    assert results.SERVABLE == settings.SERVABLE_NAME
    assert (results.DEFAULT_GRPC_ADDRESS, results.DEFAULT_REST_ADDRESS) == (settings.DEFAULT_GRPC_ADDRESS,
                                                                            settings.DEFAULT_REST_ADDRESS)
    # "Paris" and "France" ~40 tokens apart: the server's `predict` cannot span them, and neither can
    # predict_with_options given the client's default length
    context = "Paris " + "and the old town " * 10 + "is in France."
    default = client.answer(QUESTION, context)
    assert default.text != context
    assert client.answer(QUESTION, context, top_k=2).top_k[0] == default.top_k[0]
    longer = client.answer(QUESTION, context, max_answer_length=64)
    assert (longer.text, longer.start) == (context[:-1], 0)


def test_answer_many_keeps_input_order(client):
    pairs = [(QUESTION, CONTEXTS[i % len(CONTEXTS)]) for i in range(23)]
    results = client.answer_many(pairs, max_in_flight=4)
    assert len(results) == len(pairs)
    for (_, context), result in zip(pairs, results):
        assert_known_answer(result, context)


def test_a_refused_question_names_its_position_and_carries_the_servers_text(client):
    pairs = [(QUESTION, CONTEXTS[0]), (QUESTION, CONTEXTS[1]), ("   ", CONTEXTS[2]), (QUESTION, CONTEXTS[3])]
    outcomes = client.answer_many(pairs, return_exceptions=True)
    assert isinstance(outcomes[2], RequestError)
    assert outcomes[2].instance == 2 and "question is empty" in outcomes[2].server_message
    assert "instance 2" in str(outcomes[2])
    for i in (0, 1, 3):
        assert_known_answer(outcomes[i], pairs[i][1])
    with pytest.raises(RequestError) as raised:
        client.answer_many(pairs)
    assert raised.value.instance == 2
    with pytest.raises(RequestError, match="question is empty"):
        client.answer("", CONTEXTS[0])


def test_answer_as_completed_reads_its_input_lazily(client):
    pulled = []

    def pairs():
        for i in range(40):
            pulled.append(i)
            yield QUESTION, CONTEXTS[i % len(CONTEXTS)]

    stream = client.answer_as_completed(pairs(), max_in_flight=3)
    index, first = next(stream)
    assert len(pulled) <= 4  # at most max_in_flight requests open (+1 read ahead)
    rest = dict(stream)
    rest[index] = first
    assert sorted(rest) == list(range(40)) and len(pulled) == 40


def test_bad_arguments_fail_in_the_client_with_a_clear_message(client):
    with pytest.raises(TypeError, match="question and context must be str"):
        client.answer(b"bytes", "context")
    with pytest.raises(ValueError, match="top_k must be a positive"):
        client.answer("q", "c", top_k=0)
    with pytest.raises(ValueError, match="timeout must be a positive"):
        client.answer("q", "c", timeout=0)
    assert client.answer_many([]) == []


# --- token-level method ------------------------------------------------------------------------------


def _vocab() -> dict:
    return read_vocab(uncased_vocab_file())  # the uncased BERT vocabulary the oracle uses


def _window(words: str, question: str = "which capital ?", pad_to: int = 0):
    vocab = _vocab()
    q, c = [vocab[w] for w in question.split()], [vocab[w] for w in words.split()]
    ids = [vocab["[CLS]"], *q, vocab["[SEP]"], *c, vocab["[SEP]"]]
    types = [0] * (len(q) + 2) + [1] * (len(c) + 1)
    pad = max(pad_to - len(ids), 0)
    return (np.array(ids + [0] * pad), np.array([1] * len(ids) + [0] * pad), np.array(types + [0] * pad),
            len(q) + 2)


def test_logits_of_windows_the_caller_tokenized_peak_at_the_marked_words(client, rest):
    ids, mask, types, offset = _window("the city of paris is the capital of france .")
    for c in (client, rest):
        one = c.logits(ids, mask, types)
        assert one.start_logits.ndim == 1
        assert int(np.argmax(one.start_logits)) == offset + 3  # "paris"
        assert int(np.argmax(one.end_logits)) == offset + 8  # "france"
    rows = [_window("paris , france", pad_to=24), _window("in france , far from paris , is it ?", pad_to=24)]
    batch = client.logits(*(np.stack([r[i] for r in rows]) for i in range(3)))
    assert batch.start_logits.shape[0] == 2
    assert int(np.argmax(batch.start_logits[0])) == rows[0][3]
    assert int(np.argmax(batch.end_logits[1])) == rows[1][3] + 1


def test_a_refused_window_names_its_row(client):
    ids, mask, types, _ = _window("paris , france")
    bad_ids = ids.copy()
    bad_ids[1] = 10_000_000  # outside the vocabulary
    with pytest.raises(RequestError) as raised:
        client.logits(np.stack([ids, bad_ids]), np.stack([mask, mask]), np.stack([types, types]))
    assert raised.value.instance == 1 and "input_ids" in raised.value.server_message
    with pytest.raises(ValueError, match="one shape"):
        client.logits(ids, mask[:-1], types)


# --- asyncio and REST give the same results --------------------------------------------------------------


def test_async_client_matches_the_blocking_one(client, oracle):
    pairs = [(QUESTION, c) for c in CONTEXTS] + [("", CONTEXTS[0])]
    expected_results = client.answer_many(pairs, top_k=3, return_exceptions=True)
    ids, mask, types, _ = _window("paris is in france")

    async def run():
        async with AsyncClient(oracle.grpc_address, timeout=60) as aclient:
            one = await aclient.answer(QUESTION, CONTEXTS[0])
            many = await aclient.answer_many(pairs, top_k=3, max_in_flight=2, return_exceptions=True)
            with pytest.raises(RequestError) as raised:
                await aclient.answer_many(pairs, max_in_flight=2)
            logits = await aclient.logits(ids, mask, types)
            return one, many, raised.value, logits

    one, many, error, logits = asyncio.run(run())
    assert one == client.answer(QUESTION, CONTEXTS[0])
    assert many[:-1] == expected_results[:-1]
    assert many[-1].instance == error.instance == len(pairs) - 1
    assert np.array_equal(logits.start_logits, client.logits(ids, mask, types).start_logits)


def test_rest_client_returns_the_same_results(client, rest):
    pairs = [(QUESTION, c) for c in CONTEXTS] + [(" ", CONTEXTS[1])]
    over_grpc = client.answer_many(pairs, top_k=4, max_answer_length=20, return_exceptions=True)
    over_rest = rest.answer_many(pairs, top_k=4, max_answer_length=20, return_exceptions=True)
    for g, r in zip(over_grpc[:-1], over_rest[:-1]):
        assert len(g.top_k) == len(r.top_k) == 4
        for a, b in zip(g.top_k, r.top_k):
            assert (a.text, a.start, a.end) == (b.text, b.start, b.end)
            assert a.score == pytest.approx(b.score, rel=1e-6)
    assert isinstance(over_rest[-1], RequestError) and over_rest[-1].instance == len(pairs) - 1
    assert over_rest[-1].server_message == over_grpc[-1].server_message


def test_results_name_the_model_version_that_answered(client, rest, oracle):
    """The oracle server serves version 1: every result type of every client says so (the header / trailing
    metadata the front door sends; tests/test_client_versions.py covers other versions and a switch)."""
    ids, mask, types, _ = _window("paris is in france")
    pairs = [(QUESTION, c) for c in CONTEXTS[:3]]
    for c in (client, rest):
        assert c.answer(QUESTION, CONTEXTS[0]).model_version == 1
        assert {r.model_version for r in c.answer_many(pairs, top_k=2)} == {1}
        assert c.logits(ids, mask, types).model_version == 1

    async def run():
        async with AsyncClient(oracle.grpc_address, timeout=60) as aclient:
            return ((await aclient.answer(QUESTION, CONTEXTS[0])).model_version,
                    (await aclient.logits(ids, mask, types)).model_version)

    assert asyncio.run(run()) == (1, 1)


def test_rest_refusals_carry_the_servers_text(oracle):
    with pytest.raises(RequestError, match="servable is not available") as raised:
        RestClient(oracle.rest_address, "no_such_servable").answer(QUESTION, CONTEXTS[0])
    assert raised.value.instance is None
    with pytest.raises(ValueError, match="host:port"):
        RestClient("ftp://127.0.0.1:1")


# --- errors, deadlines, retries -----------------------------------------------------------------------


def test_an_unknown_servable_or_version_is_refused_at_once_not_retried(oracle):
    for kwargs in ({"servable": "no_such_servable"}, {"servable": "bert_squad", "version": 7}):
        started = time.monotonic()
        with pytest.raises(RequestError, match="servable is not available"):
            Client(oracle.grpc_address, timeout=30, **kwargs).answer(QUESTION, CONTEXTS[0])
        assert time.monotonic() - started < 2


def test_a_server_that_is_down_is_retried_until_the_deadline_then_explained():
    address = f"127.0.0.1:{free_port()}"  # nothing listens here
    started = time.monotonic()
    with pytest.raises(ServerUnavailable) as raised:
        Client(address, timeout=1.5).answer(QUESTION, CONTEXTS[0])
    elapsed = time.monotonic() - started
    assert 0.7 < elapsed < 4
    message = str(raised.value)
    assert address in message and "time(s) over" in message and "Check that the server is running" in message
    assert isinstance(raised.value, ConnectionError)
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match="tried 1 time"):
        Client(address, timeout=30, retry=None).answer(QUESTION, CONTEXTS[0])
    assert time.monotonic() - started < 2
    with pytest.raises(ServerUnavailable, match="REST server"):
        RestClient(address, timeout=1).answer(QUESTION, CONTEXTS[0])


def test_a_call_waits_for_a_server_that_is_still_starting(tmp_path):
    server = toy_server(tmp_path)
    outcome = {}

    def ask():
        with Client(server.grpc_address, timeout=120) as c:
            outcome["result"] = c.answer("q", "early bird")

    asker = threading.Thread(target=ask)
    asker.start()
    time.sleep(1.0)  # the first attempts find nothing listening
    with server:
        asker.join(120)
    assert outcome["result"].text == "early"


def test_deadlines_default_per_client_and_override_per_call(toy):
    slow = Client(toy.grpc_address, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        slow.answer("sleep:2 q", "late answer")
    assert time.monotonic() - started < 1.5
    assert slow.answer("sleep:1 q", "late answer", timeout=30).text == "late"
    with pytest.raises(DeadlineExceeded):
        Client(toy.grpc_address, timeout=30).answer("sleep:2 q", "late answer", timeout=0.3)


def test_a_busy_server_is_retried_with_backoff_until_it_takes_the_question(toy):
    with Client(toy.grpc_address, timeout=30) as c:
        assert c.answer("busy-times:3 one", "after backoff").text == "after"
        outcomes = c.answer_many([("q", "a"), ("busy-times:2 two", "b"), ("busy-times:1 three", "c")])
        assert [r.text for r in outcomes] == ["a", "b", "c"]
    with pytest.raises(ServerUnavailable,
                       match=r"tried 1 time.*enqueued requests count exceeds the limit \(toy\): asked 1 time"):
        Client(toy.grpc_address, retry=None).answer("busy-times:1 four", "d")
    # One attempt within the timeout (the next backoff is longer), so no attempt can straddle the deadline; with
    # timeout=0.3 a last attempt slowed by a loaded machine could end the call with DeadlineExceeded instead (this
    # test failed once that way or another in a loaded run, the message not kept).
    patient = Retry(initial_backoff=60, max_backoff=60)
    with pytest.raises(ServerUnavailable, match="tried 1 time.*enqueued requests count exceeds the limit"):
        RestClient(toy.rest_address, timeout=5, retry=patient).answer("busy-times:1000 five", "e")


def test_a_reply_that_contradicts_the_context_is_refused(toy):
    with pytest.raises(InvalidResponse, match="character offsets"):
        Client(toy.grpc_address).answer("q", "[bad-offsets] word")


def test_a_request_that_kills_the_worker_is_not_retried_but_the_next_ones_wait_for_the_restart(tmp_path):
    flag = tmp_path / "crashed"
    with toy_server(tmp_path / "server") as server, Client(server.grpc_address, timeout=60) as c:
        assert c.answer("q", "warm up").text == "warm"  # Serving restarts only workers that have served
        with pytest.raises(RequestError, match="not available"):
            c.answer(f"crash-once:{flag} q", "poison pill")
        assert flag.exists()
        # sent while Serving restarts the worker: refused with "unavailable" codes, retried, answered
        assert [r.text for r in c.answer_many([("q", "after crash")] * 4)] == ["after"] * 4
    assert server.running() == [], "no server or worker process outlives the test"


@pytest.mark.parametrize("flavour", ["blocking", "asyncio", "rest"])
def test_answers_continue_across_a_server_restart(flavour, oracle_servable_dir, tmp_path):
    pairs = [(QUESTION, CONTEXTS[i % len(CONTEXTS)]) for i in range(300)]
    results = {}

    def ask_blocking(address, kind=Client):
        with kind(address, timeout=120) as c:
            for index, outcome in c.answer_as_completed(pairs, max_in_flight=4):
                results[index] = outcome

    def ask_rest(address):
        ask_blocking(address, RestClient)

    def ask_asyncio(address):
        async def one(aclient, index):
            results[index] = await aclient.answer(*pairs[index])

        async def run():
            async with AsyncClient(address, timeout=120) as aclient:
                for start in range(0, len(pairs), 4):  # 4 in flight, like the blocking run
                    await asyncio.gather(*(one(aclient, i) for i in range(start, min(start + 4, len(pairs)))))

        asyncio.run(run())

    with Server(tmp_path, oracle_servable_dir) as server:
        ask = {"blocking": ask_blocking, "asyncio": ask_asyncio, "rest": ask_rest}[flavour]
        asker = threading.Thread(target=ask, args=(server.rest_address if flavour == "rest" else server.grpc_address,))
        asker.start()
        while len(results) < 50:
            time.sleep(0.005)
        first_pid = server.process.pid
        server.restart()
        asker.join(180)
        assert not asker.is_alive() and server.process.pid != first_pid
    assert server.running() == [], "no server or worker process outlives the test"
    assert sorted(results) == list(range(300))
    for index, (_, context) in enumerate(pairs):
        assert_known_answer(results[index], context)


def test_a_closed_client_refuses_calls(oracle):
    c = Client(oracle.grpc_address)
    c.close()
    with pytest.raises(BertSquadError, match="closed"):
        c.answer(QUESTION, CONTEXTS[0])


# --- sizes ---------------------------------------------------------------------------------------------


def test_a_context_near_the_servers_limit_is_answered(client, rest):
    from bert_squad import settings

    context = FILLER * ((settings.MAX_CONTEXT_CHARS - 200) // len(FILLER)) + "Paris, France."
    assert len(context) <= settings.MAX_CONTEXT_CHARS
    assert_known_answer(client.answer(QUESTION, context), context)
    assert_known_answer(rest.answer(QUESTION, context), context)


def test_messages_larger_than_grpcs_4_mb_default_pass_both_ways(toy):
    context = "first " + "x" * 6_000_000  # a 6 MB request
    assert Client(toy.grpc_address).answer("q", context).text == "first"
    assert RestClient(toy.rest_address).answer("q", context).text == "first"
    ids = np.arange(1_500_000) % 7  # a 12 MB reply
    logits = Client(toy.grpc_address).logits(ids, np.ones_like(ids), np.zeros_like(ids))
    assert np.array_equal(logits.start_logits, ids.astype(np.float32))


# --- TLS -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_tls(tmp_path_factory.mktemp("certs"))


def test_tls_with_the_server_certificate(oracle_servable_dir, certificates, tmp_path):
    tls = Tls(ca=certificates["ca"])
    with Server(tmp_path, oracle_servable_dir,
                extra_args=["--tls-cert", certificates["server_cert"], "--tls-key", certificates["server_key"]]
                ) as server:
        assert_known_answer(Client(server.grpc_address, tls=tls).answer(QUESTION, CONTEXTS[0]), CONTEXTS[0])
        assert_known_answer(RestClient(server.rest_address, tls=tls).answer(QUESTION, CONTEXTS[0]), CONTEXTS[0])
        named = Tls(ca=certificates["ca"], server_name="localhost")
        assert Client(server.grpc_address, tls=named).answer(QUESTION, CONTEXTS[1]).text == expected(CONTEXTS[1])[0]
        with pytest.raises(ServerUnavailable):  # plain text to a TLS port
            Client(server.grpc_address, timeout=1).answer(QUESTION, CONTEXTS[0])
        with pytest.raises(ServerUnavailable):  # a certificate the client does not trust
            Client(server.grpc_address, timeout=1, tls=Tls()).answer(QUESTION, CONTEXTS[0])
        with pytest.raises(BertSquadError, match="TLS"):
            RestClient(server.rest_address, tls=Tls()).answer(QUESTION, CONTEXTS[0])


def test_mutual_tls_needs_the_client_certificate(oracle_servable_dir, certificates, tmp_path):
    args = ["--tls-cert", certificates["server_cert"], "--tls-key", certificates["server_key"],
            "--tls-client-ca", certificates["ca"]]
    with Server(tmp_path, oracle_servable_dir, extra_args=args) as server:
        mutual = Tls(ca=certificates["ca"], cert=certificates["client_cert"], key=certificates["client_key"])
        assert_known_answer(Client(server.grpc_address, tls=mutual).answer(QUESTION, CONTEXTS[0]), CONTEXTS[0])
        assert_known_answer(RestClient(server.rest_address, tls=mutual).answer(QUESTION, CONTEXTS[2]),
                            CONTEXTS[2])
        with pytest.raises(ServerUnavailable):
            Client(server.grpc_address, timeout=1, tls=Tls(ca=certificates["ca"])).answer(QUESTION, CONTEXTS[0])


def test_tls_settings_are_checked_when_the_client_is_made(tmp_path):
    with pytest.raises(ValueError, match="both cert and key"):
        Tls(cert="client.pem")
    with pytest.raises(ValueError, match="cannot read TLS file"):
        Client("127.0.0.1:1", tls=Tls(ca=tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="says http but tls is set"):
        RestClient("http://127.0.0.1:1", tls=Tls())
