"""bert-squad-predict against a real server (the oracle model, tests/oracle.py): SQuAD and JSON Lines input,
official output format, n-best, the evaluate gate, and resuming after the client or the server is stopped
half way through a run of a few hundred SQuAD dev questions (../shared/data).
Marked `pure`: the script and this process import no MindSpore, so this also runs under Python 3.11.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bert_squad_client import Client
from harness import REPO, Server, free_port

pytestmark = pytest.mark.pure

SQUAD_HEAD = REPO.parent / "shared" / "data" / "squad-v1.1-dev-head.json"
ARTICLES = ("Warsaw", "Normans")  # 359 questions
PREDICT = [sys.executable, "-m", "bert_squad_client.predict"]


def predict(*args, check: int | None = 0) -> subprocess.CompletedProcess:
    done = subprocess.run([*PREDICT, *map(str, args), "--quiet"], capture_output=True, text=True, timeout=600)
    if check is not None:
        assert done.returncode == check, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done


def journal_lines(output: Path) -> int:
    journal = output.with_name(output.name + ".journal.jsonl")
    return journal.read_bytes().count(b"\n") - 1 if journal.exists() else 0


@pytest.fixture(scope="module")
def dev_subset(tmp_path_factory) -> Path:
    """A SQuAD v1.1 file of a few hundred real dev questions."""
    data = json.loads(SQUAD_HEAD.read_text(encoding="utf-8"))
    data["data"] = [a for a in data["data"] if a["title"] in ARTICLES]
    path = tmp_path_factory.mktemp("data") / "dev-subset.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def ids_in_order(squad_file: Path) -> list[str]:
    data = json.loads(squad_file.read_text(encoding="utf-8"))
    return [qa["id"] for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]


@pytest.fixture(scope="module")
def clean_run(oracle, dev_subset, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("clean")
    done = predict(dev_subset, "-o", out / "predictions.json", "--nbest", out / "nbest.json", "--top-k", 3,
                   "--server", oracle.grpc_address)
    return {"stderr": done.stderr, "output": out / "predictions.json",
            "predictions": json.loads((out / "predictions.json").read_text(encoding="utf-8")),
            "nbest": json.loads((out / "nbest.json").read_text(encoding="utf-8"))}


def test_a_clean_run_writes_every_answer_in_the_official_format(clean_run, dev_subset, oracle):
    predictions, nbest = clean_run["predictions"], clean_run["nbest"]
    ids = ids_in_order(dev_subset)
    assert len(ids) == 359 and list(predictions) == ids and list(nbest) == ids
    assert all(isinstance(v, str) for v in predictions.values())
    assert not clean_run["output"].with_name("predictions.json.journal.jsonl").exists()
    assert "359 answers written" in clean_run["stderr"] and "0 of them from the journal" in clean_run["stderr"]
    data = json.loads(dev_subset.read_text(encoding="utf-8"))
    contexts = {qa["id"]: (qa["question"], p["context"]) for a in data["data"] for p in a["paragraphs"]
                for qa in p["qas"]}
    with Client(oracle.grpc_address, timeout=60) as client:
        for question_id in ids[::25]:
            question, context = contexts[question_id]
            result = client.answer(question, context, top_k=3)
            assert predictions[question_id] == result.text
            assert nbest[question_id] == [{"text": a.text, "score": a.score, "start": a.start, "end": a.end}
                                          for a in result.top_k]
    for question_id, best in nbest.items():
        context = contexts[question_id][1]
        assert best[0]["text"] == predictions[question_id]
        assert all(context[a["start"]:a["end"]] == a["text"] for a in best)


KNOWN = [  # id, question, context, the oracle's answer
    ("k1", "Which capital?", "The city of Paris is the capital of France, they say.", "Paris is the capital of France"),
    ("k2", "Where?", "Cities: «Paris»—(France); nothing else.", "Paris»—(France"),
    ("k3", "Which?", "东京和大阪都很大。Paris 是 France 的首都。", "Paris 是 France"),
]


def test_json_lines_over_grpc_and_rest_pass_the_evaluate_gate(oracle, tmp_path):
    lines = tmp_path / "questions.jsonl"
    lines.write_text("".join(json.dumps({"id": i, "question": q, "context": c}) + "\n" for i, q, c, _ in KNOWN)
                     + "\n", encoding="utf-8")
    predict(lines, "-o", tmp_path / "grpc.json", "--server", oracle.grpc_address)
    predict(lines, "-o", tmp_path / "rest.json", "--server", oracle.rest_address, "--rest")
    expected_answers = {i: a for i, _, _, a in KNOWN}
    assert json.loads((tmp_path / "grpc.json").read_text(encoding="utf-8")) == expected_answers
    assert json.loads((tmp_path / "rest.json").read_text(encoding="utf-8")) == expected_answers

    dataset = {"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": c, "qas": [{"id": i, "question": q, "answers": [{"text": a, "answer_start": c.index(a)}]}]}
        for i, q, c, a in KNOWN]}]}
    (tmp_path / "dataset.json").write_text(json.dumps(dataset), encoding="utf-8")
    evaluate = [sys.executable, "-m", "bert_squad.text.metric", str(tmp_path / "dataset.json")]
    gate = subprocess.run([*evaluate, str(tmp_path / "grpc.json"), "--json", "--min-em", "100"],
                          capture_output=True, text=True)
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert json.loads(gate.stdout.strip().splitlines()[-1])["exact_match"] == 100.0
    (tmp_path / "wrong.json").write_text(json.dumps({"k1": "Paris", "k2": "France", "k3": "Paris"}))
    gate = subprocess.run([*evaluate, str(tmp_path / "wrong.json"), "--min-em", "90"], capture_output=True)
    assert gate.returncode == 1


def test_the_console_command_is_installed_and_shows_progress(oracle, tmp_path):
    command = Path(sys.executable).parent / "bert-squad-predict"
    lines = tmp_path / "q.jsonl"
    lines.write_text("".join(json.dumps({"id": f"q{i}", "question": "Which?", "context": "Paris, France."}) + "\n"
                             for i in range(5)))
    done = subprocess.run([str(command), str(lines), "-o", str(tmp_path / "p.json"), "--server",
                           oracle.grpc_address], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "p.json").read_text()) == {f"q{i}": "Paris, France" for i in range(5)}
    assert re.search(r"questions: 100%.*5/5 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+q/s\]", done.stderr), done.stderr


def _run_until(output: Path, args: list, answered: int) -> subprocess.Popen:
    """Start a run and return once `answered` answers are in its journal."""
    run = subprocess.Popen([*PREDICT, *map(str, args), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    deadline = time.monotonic() + 120
    while journal_lines(output) < answered:
        assert run.poll() is None, f"the run ended before it was interrupted: {run.communicate()}"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.002)
    return run


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGINT"])
def test_an_interrupted_run_resumes_without_losing_or_repeating_answers(stop, oracle, dev_subset, clean_run,
                                                                         tmp_path):
    output = tmp_path / "predictions.json"
    args = [dev_subset, "-o", output, "--nbest", tmp_path / "nbest.json", "--top-k", 3,
            "--server", oracle.grpc_address, "--concurrency", 1]
    run = _run_until(output, args, 100)
    run.send_signal(getattr(signal, stop))
    _, stderr = run.communicate(timeout=60)
    kept = journal_lines(output)
    assert 100 <= kept < 359, "interrupted half way"
    assert not output.exists(), "no predictions file until the run is complete"
    if stop == "SIGINT":
        assert run.returncode == 130
        assert f"interrupted; {kept} of 359 answered" in stderr and "run the same command again" in stderr
    else:
        # a crash can cut the last line short: it must be dropped and asked again, not break the journal
        with open(output.with_name(output.name + ".journal.jsonl"), "ab") as journal:
            journal.write(b'{"id": "5733a5f54776f41900660f45", "ans')

    resumed = predict(*args)
    assert f"({kept} of them from the journal of an earlier run)" in resumed.stderr
    assert json.loads(output.read_text(encoding="utf-8")) == clean_run["predictions"]
    assert json.loads((tmp_path / "nbest.json").read_text(encoding="utf-8")) == clean_run["nbest"]
    assert not output.with_name(output.name + ".journal.jsonl").exists()


@pytest.mark.parametrize("how", ["restart", "crash"])
def test_a_run_survives_a_server_restart_half_way(how, oracle_servable_dir, dev_subset, clean_run, tmp_path):
    output = tmp_path / "predictions.json"
    with Server(tmp_path / "server", oracle_servable_dir) as server:
        run = _run_until(output, [dev_subset, "-o", output, "--server", server.grpc_address, "--concurrency", 4,
                                  "--timeout", 120], 120)
        first = server.process.pid
        if how == "restart":
            server.restart()
        else:
            server.kill()
            server.start()
        assert server.process.pid != first
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
    assert server.running() == [], "no server or worker process outlives the test"
    assert json.loads(output.read_text(encoding="utf-8")) == clean_run["predictions"]


def test_a_server_that_is_down_gets_a_clear_error(dev_subset, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = predict(dev_subset, "-o", tmp_path / "p.json", "--server", address, "--timeout", 2, check=2)
    assert time.monotonic() - started < 30
    for part in (address, "unavailable", "time(s) over", "Check that the server is running",
                 "0 of 359 answered", "run the same command again"):
        assert part in done.stderr
    assert not (tmp_path / "p.json").exists()


def test_a_journal_from_another_run_is_refused(dev_subset, tmp_path):
    output = tmp_path / "p.json"
    predict(dev_subset, "-o", output, "--server", f"127.0.0.1:{free_port()}", "--timeout", 0.5, check=2)
    done = predict(dev_subset, "-o", output, "--server", "127.0.0.1:1", "--top-k", 5, check=2)
    assert "belongs to another run (top_k differ)" in done.stderr and "delete it" in done.stderr


def test_refused_questions_are_listed_and_asked_again_on_the_next_run(oracle, tmp_path):
    lines = tmp_path / "q.jsonl"
    records = [{"id": i, "question": q, "context": c} for i, q, c, _ in KNOWN]
    records.insert(1, {"id": "empty", "question": "  ", "context": "Paris, France."})
    lines.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    output = tmp_path / "p.json"
    for attempt in range(2):
        done = predict(lines, "-o", output, "--server", oracle.grpc_address, check=1)
        assert "refused 1 of 4 questions (first: empty: " in done.stderr and "question is empty" in done.stderr
        assert set(json.loads(output.read_text())) == {"k1", "k2", "k3"}
        errors = json.loads(output.with_name("p.json.errors.json").read_text())
        assert list(errors) == ["empty"] and "question is empty" in errors["empty"]
    assert journal_lines(output) == 3  # the second run asked only the refused question


@pytest.mark.parametrize("content, message", [
    (None, "cannot read"),
    ('{"id": "a", "question": "q", "context": "c"}\n{"id": "b", "question": ', "line 2 is not JSON"),
    ('{"id": "a", "context": "c"}', "line 1 has no 'question' field"),
    ('{"id": "a", "question": 7, "context": "c"}', "'question' must be a string"),
    ('{"id": "a", "question": "q", "context": "c"}\n{"id": "a", "question": "q", "context": "c"}',
     "id 'a' appears twice (line 1 and line 2)"),
    ('{"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": [{"id": "x"}]}]}]}',
     "data[0].paragraphs[0].qas[0] has no 'question' field"),
    ('{"data": {"not": "a list"}}', "'data' must be a list"),
    ("[1, 2]", "expected a SQuAD v1.1 object"),
    ("", "holds no questions"),
])
def test_bad_input_gets_a_clear_error(content, message, tmp_path):
    path = tmp_path / "input.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    done = predict(path, "-o", tmp_path / "p.json", "--server", "127.0.0.1:1", check=2)
    assert message in done.stderr and str(path) in done.stderr
