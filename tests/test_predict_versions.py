"""A bert-squad-predict run that spans a model version switch says which version produced each answer
(OUTPUT.versions.json), on a real server of the oracle model: version 1 answers "paris in france", version 2 (the
oracle exported with another target span, as in tests/test_versions_live.py) "rome to italy" about the same context,
so each answer shows by its text which version gave it, and the file must name that version.

The run is held (SIGSTOP) after its first answers, version 2 is put in the servable directory and taken live with
SIGHUP, then the run goes on (SIGCONT): one run, answers from both versions.
Marked `pure`: the script and this process import no MindSpore (the servers run their own venvs).
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import SERVABLE_CONFIG, Server, export_oracle, wait_for

pytestmark = pytest.mark.pure

CONTEXT = "The trip went from rome to italy and then paris in france , not london in england ."
BY_VERSION = {1: "paris in france", 2: "rome to italy"}
QUESTIONS = 100


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    """Version folders of the oracle answering "paris .. france" (1) and "rome .. italy" (2)."""
    root = tmp_path_factory.mktemp("exports")
    return {version: export_oracle(root / word, buckets=(384,), span=(word, end)) / "bert_squad" / "1"
            for version, (word, end) in ((1, ("paris", "france")), (2, ("rome", "italy")))}


def journal_lines(output: Path) -> int:
    journal = output.with_name(output.name + ".journal.jsonl")
    return journal.read_bytes().count(b"\n") - 1 if journal.exists() else 0


def test_a_batch_run_across_a_version_switch_names_the_version_of_each_answer(exports, tmp_path):
    servables = tmp_path / "servable"
    (servables / "bert_squad").mkdir(parents=True)
    shutil.copy(SERVABLE_CONFIG, servables / "bert_squad")
    shutil.copytree(exports[1], servables / "bert_squad" / "1")
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i:02d}", "question": f"Where did trip {i} go?",
                                             "context": CONTEXT}) + "\n" for i in range(QUESTIONS)))
    output = tmp_path / "predictions.json"

    with Server(tmp_path / "run", servables) as server:
        run = subprocess.Popen([sys.executable, "-m", "bert_squad_client.predict", str(questions), "-o", str(output),
                                "--server", server.grpc_address, "--concurrency", "1", "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: journal_lines(output) >= 3 or run.poll() is not None, 120, "the run's first answers")
            run.send_signal(signal.SIGSTOP)  # held between answers while the server switches
            held_at = journal_lines(output)
            assert run.poll() is None and held_at < QUESTIONS - 5, "the run ended before the switch"
            staged = tmp_path / "staged-2"
            shutil.copytree(exports[2], staged)
            staged.rename(servables / "bert_squad" / "2")  # whole, as an operator's move
            server.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "version 2 serves every new request" in server.output(), 120, "the switch to version 2")
        finally:
            run.send_signal(signal.SIGCONT)
        _, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, stderr

    predictions = json.loads(output.read_text(encoding="utf-8"))
    versions = json.loads(output.with_name("predictions.json.versions.json").read_text(encoding="utf-8"))
    ids = [f"q{i:02d}" for i in range(QUESTIONS)]
    assert list(predictions) == list(versions) == ids  # predictions stay {id: answer}, the versions beside them
    wrong = {i: (predictions[i], versions[i]) for i in ids if BY_VERSION.get(versions[i]) != predictions[i]}
    assert not wrong, wrong  # every answer is exactly its named version's
    count = {v: list(versions.values()).count(v) for v in (1, 2)}
    assert count[1] >= held_at and count[2] >= QUESTIONS - held_at - 1, (held_at, count)  # one was in flight
    assert count[1] + count[2] == QUESTIONS
    assert f"model versions 1 ({count[1]} answers), 2 ({count[2]} answers)" in stderr, stderr
    print(f"\nheld after {held_at} answers; version 1 gave {count[1]}, version 2 gave {count[2]}")
