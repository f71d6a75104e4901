"""The benchmark's arithmetic, report and stream driver (bench/stats.py, questions.py, report.py, reference.py).

The benchmark itself takes minutes on BERT-base; these check the parts that turn its
measurements into numbers, on made-up measurements whose right answers are worked out by hand.
"""
from __future__ import annotations

import json
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # bench/ is a folder of the repo, not an installed package

from bench import questions, reference, report, stats  # noqa: E402

pytestmark = pytest.mark.pure


def test_percentile_interpolates_between_ranks():
    assert stats.percentile([5, 1, 3, 2, 4], 50) == 3
    assert stats.percentile([10, 20, 30, 40], 25) == pytest.approx(17.5)  # rank 0.75: 10 + 0.75 * 10
    assert stats.percentile([10, 20, 30, 40], 0) == 10
    assert stats.percentile([10, 20, 30, 40], 100) == 40
    assert stats.percentile([7.0], 99) == 7.0


def test_percentile_agrees_with_numpy():
    rng = random.Random(1)
    values = [rng.expovariate(3.0) for _ in range(137)]
    for q in (50, 95, 99):
        assert stats.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


@pytest.mark.parametrize("values,q", [([], 50), ([1.0], -1), ([1.0], 101)])
def test_percentile_refuses_bad_input(values, q):
    with pytest.raises(ValueError):
        stats.percentile(values, q)


def test_summarize_gives_throughput_over_wall_time():
    s = stats.summarize([0.1, 0.2, 0.3, 0.4], wall_s=0.5)
    assert s["qps"] == pytest.approx(8.0)
    assert s["p50"] == pytest.approx(0.25)
    assert s["mean"] == pytest.approx(0.25)
    with pytest.raises(ValueError):
        stats.summarize([0.1], wall_s=0)


def test_a_level_measured_in_halves_counts_every_question_over_the_summed_wall_time():
    first = {"ids": ["a", "b"], "latencies": [0.1, 0.3], "wall_s": 0.4, "errors": 1, "error_examples": ["b: x"],
             "answers": {"a": "A"}, "stages": {"a": [1, 2, 3]}}
    second = {"ids": ["c", "d", "e"], "latencies": [0.2, 0.2, 0.2], "wall_s": 0.6, "errors": 0, "error_examples": [],
              "answers": {"c": "C", "d": "D", "e": "E"}, "stages": {"c": [4, 5, 6]}}
    level = stats.merge_rounds([first, second])
    assert level["ids"] == ["a", "b", "c", "d", "e"] and level["latencies"] == [0.1, 0.3, 0.2, 0.2, 0.2]
    assert level["errors"] == 1 and level["error_examples"] == ["b: x"]
    assert level["answers"] == {"a": "A", "c": "C", "d": "D", "e": "E"} and set(level["stages"]) == {"a", "c"}
    assert stats.summarize(level["latencies"], level["wall_s"])["qps"] == pytest.approx(5.0)  # 5 questions in 1.0 s
    assert first["ids"] == ["a", "b"]  # the rounds themselves are left as they were
    with pytest.raises(ValueError):
        stats.merge_rounds([])


def test_machine_load_over_halves_is_weighted_by_their_time():
    load = stats.merge_loads([{"seconds": 30, "our_cores": 2.0, "foreign_cores": 0.0, "load_avg_1m": 1.5},
                              {"seconds": 10, "our_cores": 1.0, "foreign_cores": 0.4, "load_avg_1m": 2.5,
                               "attempts": 2}])
    assert load["seconds"] == 40 and load["attempts"] == 3 and load["load_avg_1m"] == 2.5
    assert load["our_cores"] == pytest.approx(1.75) and load["foreign_cores"] == pytest.approx(0.1)


def test_bert_base_flops_at_384_tokens_match_the_issue():
    # Issue #6: "BERT-base at 384 tokens ~ 70.7 GFLOP".
    assert stats.bert_flops(384) / 1e9 == pytest.approx(70.7, abs=0.1)
    # Attention grows with the square of the length, the rest linearly.
    linear = stats.bert_flops(384) - 2 * 12 * 2 * 384 * 384 * 768
    assert stats.bert_flops(128) == pytest.approx(linear / 3 + 2 * 12 * 2 * 128 * 128 * 768)


def test_compare_answers_counts_offsets_not_only_text():
    a = {"q1": ["Paris", 10, 15], "q2": ["x", 0, 1], "q3": ["y", 2, 3]}
    b = {"q1": ["Paris", 10, 15], "q2": ["x", 5, 6], "q4": ["z", 0, 1]}
    got = stats.compare_answers(a, b)
    assert got == {"compared": 2, "identical": 1, "differ": ["q2"], "missing": ["q3", "q4"]}


@pytest.fixture(scope="module")
def dataset():
    head = REPO.parent / "shared" / "data" / "squad-v1.1-dev-head.json"
    assert head.is_file(), f"SQuAD dev head file missing: {head}"
    return questions.load_dataset(head)


def test_sample_is_deterministic_and_subset_keeps_exactly_those_questions(dataset):
    first = questions.sample(dataset, 10, seed=3)
    assert [q.id for q in first] == [q.id for q in questions.sample(dataset, 10, seed=3)]
    assert [q.id for q in first] != [q.id for q in questions.sample(dataset, 10, seed=4)]
    assert len({q.id for q in first}) == 10
    part = questions.subset(dataset, [q.id for q in first])
    kept = [q.id for q in questions.all_questions(part)]
    assert sorted(kept) == sorted(q.id for q in first)
    for q in first:  # each question still sits with its own context
        assert any(p["context"] == q.context and any(qa["id"] == q.id for qa in p["qas"])
                   for a in part["data"] for p in a["paragraphs"])
    with pytest.raises(ValueError, match="pick 1 to"):
        questions.sample(dataset, 0)


def serving_stack(e2e, model, null, buckets=(128, 256, 384)):
    ids = [f"q{i}" for i in range(len(e2e))]
    return {
        "label": f"serving {buckets}", "buckets": list(buckets), "cold_start_s": 12.0,
        "null_rtt": [null] * 5,
        "window_latency": {"384": [0.30 + 2 * null, 0.32 + 2 * null, 0.31 + 2 * null]},
        "window_model": {"384": [0.30, 0.32, 0.31]},
        "paired": {"ids": ids, "e2e": e2e, "model": model},
        "stages": {"tokenize": {q: 0.001 for q in ids}, "decode": {q: 0.002 for q in ids}},
        "levels": {"1": {"ids": ids, "latencies": e2e, "wall_s": sum(e2e), "errors": 0},
                   "4": {"ids": ids, "latencies": [3 * t for t in e2e], "wall_s": sum(e2e) / 2, "errors": 0}},
        "memory": {"rss_ready_bytes": 1.5e9, "rss_after_bytes": 1.6e9, "hwm_bytes": 1.7e9},
        "answers": {q: ["a", 0, 1] for q in ids}, "answers_stable": True,
        "cpu": {"1": {"seconds": 1.0, "our_cores": 1.9, "foreign_cores": 0.0, "load_avg_1m": 2.0}},
    }


def test_serving_breakdown_takes_the_workers_model_time_of_each_question():
    stack = serving_stack(e2e=[0.200, 0.100, 0.300], model=[0.160, 0.080, 0.280], null=0.010)
    b = stats.stage_breakdown(stack)
    # Per question overhead: 0.04, 0.02, 0.02.
    assert b["model"] == pytest.approx(0.16)
    assert b["overhead"] == pytest.approx(0.02)
    assert b["queue_transport"] == pytest.approx(0.02 - 0.003)  # overhead minus tokenize and decode
    assert b["queue_at_top"] == pytest.approx(3 * 0.2 - 0.2)
    assert b["top_concurrency"] == 4


def fake_results():
    ours = serving_stack(e2e=[0.150, 0.160, 0.170], model=[0.147, 0.157, 0.167], null=0.001)
    fixed = serving_stack(e2e=[0.33] * 3, model=[0.319] * 3, null=0.001, buckets=(384,))
    for c, level in fixed["levels"].items():
        level["wall_s"] = ours["levels"][c]["wall_s"] * 2.5  # the same stream, 2.5x slower than ours
    fixed["answers"]["q2"] = ["b", 3, 4]
    ort = {k: v for k, v in ours.items() if k not in ("null_rtt", "paired", "buckets")}
    in_process = [0.29, 0.30, 0.31]
    ort.update(label="onnxruntime", window_latency={"384": in_process}, window_model={"384": in_process},
               stages={**ours["stages"], "model": {q: 0.14 for q in ours["levels"]["1"]["ids"]}})
    ort["levels"] = {c: {**lv, "wall_s": lv["wall_s"] * 0.8} for c, lv in ours["levels"].items()}
    results = {
        "meta": {"started": "2026-01-01T00:00:00+00:00", "command": "python bench/run.py", "total_s": 100.0,
                 "machine": {"cpu": "test cpu", "cores": 2, "memory_gb": 24.0}, "threads": 2, "model": "base",
                 "weights": {"sha256": "ab" * 32, "config": {"hidden_size": 768, "num_hidden_layers": 12}},
                 "client": "test client", "foreign_cores_before": 0.01, "ours": "serving_buckets"},
        "windows": {"q0": [120], "q1": [200, 300], "q2": [384]},
        "roofline": {"flops_384": 70.7e9, "gflops": 200.0, "roofline_384_s": 70.7e9 / 200e9, "unset": [],
                     "runs": [{"python": "3.9", "numpy": "1", "kernel": "k", "gflops_best": 200.0,
                               "gflops_median": 190.0}]},
        "stacks": {"serving_buckets": ours, "serving_384": fixed, "onnxruntime": ort},
    }
    for s in results["stacks"].values():
        s["summary"] = stats.summaries(s)
        s["breakdown"] = stats.stage_breakdown(s)
    results["accuracy"] = {
        "em_f1": {name: {"exact_match": 0.0, "f1": 1.5} for name in results["stacks"]},
        "ours_vs_serving_384": stats.compare_answers(ours["answers"], fixed["answers"]),
        "ours_vs_onnxruntime": stats.compare_answers(ours["answers"], ort["answers"]),
    }
    results["goals"] = stats.goals(results)
    results["ratios"] = stats.ratios(results)
    return results


def test_goals_are_judged_against_the_issue_targets():
    goals = {g["goal"]: g for g in fake_results()["goals"]}
    vs_ort = goals["stream throughput vs ONNX Runtime (peak over concurrency)"]
    assert vs_ort["value"] == pytest.approx(0.8) and not vs_ort["met"]
    vs_fixed = goals["stream throughput vs fixed-384 servable"]
    assert vs_fixed["value"] == pytest.approx(2.5) and vs_fixed["met"]
    roof = goals["model time, one 384 window / roofline (p50)"]
    # p50 of the worker's model time at 384 (0.31 s; the round trips are longer) over 70.7 GFLOP / 200 GFLOP/s.
    assert roof["value"] == pytest.approx(0.31 / 0.3535) and roof["met"]
    overhead = goals["serving overhead p50 per question"]
    assert overhead["value"] == pytest.approx(3.0) and overhead["met"]  # ms: 0.150 - (0.148 - 0.001) s
    assert goals["worker RSS, every window length"]["met"] and goals["cold start"]["met"]
    same = goals["answers identical to fixed-384"]
    assert (same["value"], same["target"], same["met"]) == (2, 3, False)


def test_reduced_precision_goals_are_judged_per_served_stack_against_fp32_and_openvino():
    results = fake_results()
    ours = results["stacks"]["serving_buckets"]
    int8 = serving_stack(e2e=[0.050, 0.052, 0.054], model=[0.045, 0.047, 0.049], null=0.001)
    int8.update(ready_line="bert-squad-serve: ready precision=int8 runtime=openvino workers=1 threads=2",
                memory={"rss_ready_bytes": 0.7e9, "rss_after_bytes": 0.7e9, "hwm_bytes": 0.7e9}, cold_start_s=20.0)
    bf16 = serving_stack(e2e=[0.1] * 3, model=[0.09] * 3, null=0.001)
    bf16["ready_line"] = "bert-squad-serve: ready precision=bf16 runtime=openvino workers=2 threads=2"
    openvino = {k: v for k, v in int8.items() if k not in ("null_rtt", "paired", "buckets", "ready_line")}
    openvino["stages"] = {**int8["stages"], "model": {q: 0.045 for q in int8["paired"]["ids"]}}
    walls = {"1": 0.96, "4": 1.05}  # the in-process stack's wall time: 0.96x / 1.05x a third of ours
    for name, stack, scale in (("serving_int8", int8, {"1": 1 / 3, "4": 1 / 2.4}),
                               ("serving_bf16", bf16, {"1": 1 / 1.8, "4": 1 / 1.6}),
                               ("openvino_int8", openvino, None)):
        stack["levels"] = {c: {**level, "wall_s": level["wall_s"] * (scale[c] if scale else 1 / 3 * walls[c])}
                           for c, level in ours["levels"].items()}
        stack["summary"] = stats.summaries(stack)
        stack["breakdown"] = stats.stage_breakdown(stack)
        results["stacks"][name] = stack
    goals = {g["goal"]: g for g in stats.goals(results)}
    vs_fp32 = goals["serving_int8: throughput vs our fp32 default (lowest level)"]
    assert vs_fp32["value"] == pytest.approx(2.4) and not vs_fp32["met"]  # 3x at concurrency 1, 2.4x at 4
    bf16_goal = goals["serving_bf16: throughput vs our fp32 default (lowest level)"]
    assert bf16_goal["value"] == pytest.approx(1.6) and not bf16_goal["met"]
    c1 = goals["serving_int8: throughput vs OpenVINO int8 in-process, concurrency 1"]
    assert c1["value"] == pytest.approx(0.96) and c1["met"]  # both a third of ours, the in-process one 0.96x
    higher = goals["serving_int8: throughput vs OpenVINO int8 in-process, concurrency 2 and up (lowest)"]
    assert higher["value"] == pytest.approx((1.05 / 3) / (1 / 2.4)) and not higher["met"]
    assert higher["note"] == "at concurrency 4"
    overhead = goals["serving_int8: serving overhead p50 per question"]
    assert overhead["value"] == pytest.approx(5.0) and not overhead["met"]  # ms: 0.052 - 0.047
    assert goals["serving_int8: worker RSS"]["met"] and not goals["serving_int8: cold start"]["met"]
    assert not any(g.startswith("serving_bf16: serving overhead") for g in goals)  # judged on 1-worker int8 only
    assert not any(g.startswith("openvino_int8:") for g in goals)


def test_report_shows_goals_ratios_and_differing_answers():
    results = fake_results()
    text = report.render(results, "throughput.png")
    assert "| stream throughput vs fixed-384 servable | 2.50 x | ≥ 2.00 x | yes |" in text
    assert "| stream throughput vs ONNX Runtime (peak over concurrency) | 0.80 x | ≥ 1.00 x | **no** |" in text
    assert "![throughput and latency](throughput.png)" in text
    assert "2 of 3 answers identical (text, start, end); differ: q2." in text
    assert "| onnxruntime | 1 | 0.80x |" in text  # throughput ratio per concurrency level
    json.dumps(results)  # everything run.py writes to results.json is JSON
    lines = report.summary_lines(results)
    assert "serving_buckets / onnxruntime  at concurrency 4: throughput 0.80x" in lines


def test_stream_asks_every_question_once_in_parallel_and_keeps_input_order():
    import threading
    import time

    questions_ = [{"id": f"q{i}"} for i in range(12)]
    in_flight, peak, lock = [0], [0], threading.Lock()

    def make_ask():
        def ask(q):
            with lock:
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])
            time.sleep(0.02)
            with lock:
                in_flight[0] -= 1
            if q["id"] == "q5":
                raise ValueError("bad question")
            return q["id"].upper()
        return ask

    level = reference.stream(questions_, 3, make_ask)
    assert level["ids"] == [q["id"] for q in questions_]
    assert level["results"] == [None if i == 5 else f"Q{i}" for i in range(12)]
    assert level["errors"] == 1 and level["error_examples"] == ["q5: bad question"]
    assert peak[0] == 3 and all(t >= 0.02 for t in level["latencies"])


def test_stream_throughput_ends_at_the_last_answer_not_at_the_clients_teardown():
    import time

    class SlowToClose:
        """A client whose teardown, when its thread lets go of it, takes 0.3 s (as a gRPC channel's can)."""

        def __call__(self, q):
            time.sleep(0.01)
            return q["id"]

        def __del__(self):
            time.sleep(0.3)

    started = time.perf_counter()
    level = reference.stream([{"id": f"q{i}"} for i in range(6)], 2, SlowToClose)
    assert time.perf_counter() - started >= 0.3  # the teardown did run inside the level
    assert 0.03 <= level["wall_s"] < 0.2 and level["results"] == [f"q{i}" for i in range(6)]


def test_stream_gives_up_on_a_hanging_stack():
    import threading

    release = threading.Event()
    with pytest.raises(TimeoutError, match="requests still open"):
        reference.stream([{"id": "q"}], 1, lambda: lambda q: release.wait(5), lambda elapsed: 0.1)
    release.set()


def test_report_shows_each_protocol_paired_against_servings_grpc_at_the_master_and_the_oip_batches():
    results = fake_results()
    ours = results["stacks"]["serving_buckets"]
    ours["transport"] = {"ids": ["q0", "q1"], "serving": [0.100, 0.200], "grpc": [0.1001, 0.2003],
                         "rest": [0.101, 0.2015], "oip_grpc": [0.1002, 0.2004], "oip_rest": [0.1008, 0.2012],
                         "null_serving": [0.001, 0.001], "null_grpc": [0.0011, 0.0011],
                         "null_rest": [0.0016, 0.0018], "null_oip_grpc": [0.0012, 0.0012],
                         "null_oip_rest": [0.0015, 0.0015]}
    ours["oip_batch"] = {"n": 8, "questions": 64, "seconds": {"batched": [8.0], "concurrent": [10.0]},
                         "qps": {"batched": 8.0, "concurrent": 6.4}}
    text = report.render(results, "throughput.png")
    label = ours["label"]
    assert f"| {label} | serving | 150.0 | — | — |" in text
    assert f"| {label} | grpc | 150.2 | +0.20 | +0.10 |" in text  # medians of (0.1, 0.3) and (0.1, 0.1) ms
    assert f"| {label} | oip_grpc | 150.3 | +0.30 | +0.20 |" in text  # medians of (0.2, 0.4) and (0.2, 0.2) ms
    assert f"| {label} | oip_rest | 151.0 | +1.00 | +0.50 |" in text
    assert f"| {label} | 64 | 8 | 8.00 | 6.40 |" in text
    assert "## Protocols" not in report.render(fake_results(), "throughput.png")  # older results: no section


def test_before_serves_every_served_stack_again_right_after_it_with_the_earlier_checkouts_python(tmp_path):
    from bench import run, serving

    python = tmp_path / "old-venv-python"
    python.write_text("")
    args = run.parse_args(["--stacks", "serving_exact,openvino_int8", "--before", str(python)])
    args.before_config = tmp_path / "old-checkout" / "servable_config.py"  # main() finds it in that checkout
    args.before_config.parent.mkdir()
    args.before_config.write_text("# the earlier layout's glue\n")
    servable = tmp_path / "servable"
    (servable / "bert_squad" / "1").mkdir(parents=True)
    (servable / "bert_squad" / "servable_config.py").write_text("# this checkout's glue\n")
    (servable / "bert_squad" / "1" / "model.bin").write_bytes(b"weights")
    made = run.make_stacks(args, {"serving_exact": servable}, tmp_path / "weights", None, [], tmp_path / "scratch")
    assert [s.name for s in made] == ["serving_exact", "serving_exact_before", "openvino_int8"]
    assert (made[0].python, made[1].python) == (serving.FRONT, python)
    assert made[0].servable_dir == servable and made[1].workdir != made[0].workdir
    # the same model files (not copied), with the earlier checkout's servable_config.py; ours left as it was
    twin = made[1].servable_dir / "bert_squad"
    assert (twin / "1" / "model.bin").stat().st_ino == (servable / "bert_squad" / "1" / "model.bin").stat().st_ino
    assert (twin / "servable_config.py").read_text() == "# the earlier layout's glue\n"
    assert (servable / "bert_squad" / "servable_config.py").read_text() == "# this checkout's glue\n"


def test_before_refuses_an_interpreter_that_is_not_there(tmp_path, capsys):
    from bench import run

    with pytest.raises(SystemExit):
        run.parse_args(["--before", str(tmp_path / "missing" / "python")])
    assert "no such interpreter" in capsys.readouterr().err


def test_report_says_which_checkout_the_before_stacks_ran():
    results = fake_results()
    results["meta"]["before"] = {"python": "/tmp/old/bin/python", "code": "/tmp/old/bert_squad", "revision": "7533a49"}
    text = report.render(results, "throughput.png")
    assert "an earlier checkout, 7533a49 (/tmp/old/bert_squad), on /tmp/old/bin/python" in text
    assert "earlier checkout" not in report.render(fake_results(), "throughput.png")


@pytest.mark.parametrize("mode", ["aio", "sync"])
def test_the_bare_passthrough_forwards_servings_predict_bytes_both_ways(mode):
    from concurrent import futures

    import grpc

    from bench import serving

    seen = []

    def predict(request, context):
        seen.append(request)
        return b"reply to " + request

    upstream = grpc.server(futures.ThreadPoolExecutor(2))
    upstream.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "mindspore.serving.proto.MSService", {"Predict": grpc.unary_unary_rpc_method_handler(predict)}),))
    port = upstream.add_insecure_port("127.0.0.1:0")
    upstream.start()
    try:
        with serving.passthrough(Path(sys.executable), mode, f"127.0.0.1:{port}") as address:
            with grpc.insecure_channel(address) as channel:
                reply = channel.unary_unary("/mindspore.serving.proto.MSService/Predict")(b"\n\x03abc", timeout=10)
    finally:
        upstream.stop(None)
    assert (reply, seen) == (b"reply to \n\x03abc", [b"\n\x03abc"])


def test_report_lists_the_bare_passthroughs_beside_the_front_doors_protocols():
    results = fake_results()
    ours = results["stacks"]["serving_buckets"]
    ours["transport"] = {"ids": ["q0"], "serving": [0.100], "grpc": [0.1015], "bare_aio": [0.1010],
                         "bare_sync": [0.1008], "null_serving": [0.001], "null_grpc": [0.0025],
                         "null_bare_aio": [0.0020], "null_bare_sync": [0.0018]}
    text = report.render(results, "throughput.png")
    assert f"| {ours['label']} | bare_aio | 101.0 | +1.00 | +1.00 |" in text
    assert f"| {ours['label']} | bare_sync | 100.8 | +0.80 | +0.80 |" in text


def test_the_oip_rest_client_opens_a_new_connection_when_the_server_closed_the_kept_one():
    """The front door closes a connection idle for --http-keep-alive-s (5 s); a multi-window question on every
    other protocol in turn can take longer than that between two uses of the OIP REST one."""
    import socket
    import threading

    from bench import oip

    reply = json.dumps({"outputs": [{"name": "answer", "data": ["Paris"]}]}).encode()
    listener = socket.create_server(("127.0.0.1", 0))
    served = []

    def serve():  # answers one request per connection, then closes it the way an idle timeout does
        for _ in range(2):
            connection, _ = listener.accept()
            with connection:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += connection.recv(65536)
                head, body = request.split(b"\r\n\r\n", 1)
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                while len(body) < length:
                    body += connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                                   % len(reply) + reply)
                served.append(json.loads(body)["inputs"][0]["data"])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = oip.OipRest(f"127.0.0.1:{listener.getsockname()[1]}", 5.0)
    try:
        assert client.answer("Where?", "In Paris.") == "Paris"
        time.sleep(0.2)  # the server has closed that connection by now
        assert client.answer("Where else?", "In Paris.") == "Paris"
    finally:
        client.close()
        listener.close()
    thread.join(5)
    assert served == [["Where?"], ["Where else?"]]
