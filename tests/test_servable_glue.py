"""servable_glue's model-stage timing log ($BERT_SQUAD_MODEL_TIMES), around the serving runtime's scorer with a
stand-in for Serving's model object (the runtime calls only its .call); the served path is in test_e2e_answers.py."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bert_squad.runtimes import serving
from bert_squad.serving import servable_glue
pytestmark = pytest.mark.pure

PAUSE_S = 0.05


class SlowModel:
    """Scores every position 0 after PAUSE_S, like a model call that takes that long."""

    def __init__(self):
        self.calls = 0

    def call(self, rows):
        self.calls += 1
        time.sleep(PAUSE_S)
        return [(np.zeros(len(ids), np.float32), np.zeros(len(ids), np.float32)) for ids, _, _ in rows]


def instance(*lengths):
    ids = np.ones((len(lengths), 384), np.int32)
    return ids, ids, np.zeros_like(ids), np.array(lengths, np.int32)


def run(models, instances):
    """The model stage of a "serving" version whose buckets are those of `models`."""
    score = serving.open_scorer(Path("unused"), SimpleNamespace(buckets=tuple(sorted(models))), {}, models)
    return list(servable_glue.run_model(score, instances))


def test_each_model_batch_appends_its_window_lengths_and_duration(tmp_path, monkeypatch):
    log = tmp_path / "times.jsonl"
    monkeypatch.setenv(servable_glue.MODEL_TIMES_ENV, str(log))
    models = {128: SlowModel(), 384: SlowModel()}
    results = run(models, [instance(100, 300), instance(50)])
    assert len(results) == 2 and models[128].calls == 1 and models[384].calls == 1
    run(models, [instance(20)])
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["lengths"] for line in lines] == [[100, 300, 50], [20]]
    assert lines[0]["seconds"] >= 2 * PAUSE_S and PAUSE_S <= lines[1]["seconds"] < 2 * PAUSE_S
    assert all(line["pid"] == os.getpid() for line in lines)


def test_no_log_unless_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(servable_glue.MODEL_TIMES_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert len(run({128: SlowModel()}, [instance(10)])) == 1
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_log_warns_and_the_answers_still_come(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(servable_glue.MODEL_TIMES_ENV, str(tmp_path / "missing-dir" / "times.jsonl"))
    results = run({128: SlowModel()}, [instance(10)])
    assert len(results) == 1 and results[0][0].shape == (1, 384)
    assert f"cannot append to {servable_glue.MODEL_TIMES_ENV}" in capsys.readouterr().err


def test_reading_the_log_gives_complete_lines_and_leaves_a_partial_one_for_the_next_read(tmp_path):
    log = tmp_path / "times.jsonl"
    assert servable_glue.read_model_times(log) == ([], 0)  # not written yet
    first = json.dumps({"pid": 1, "lengths": [7], "seconds": 0.5}) + "\n"
    log.write_text(first + '{"pid": 1, "len')  # the worker is in the middle of its second line
    lines, offset = servable_glue.read_model_times(log)
    assert lines == [{"pid": 1, "lengths": [7], "seconds": 0.5}] and offset == len(first.encode())
    with open(log, "a") as f:
        f.write('gths": [3, 4], "seconds": 0.25}\n')
    lines, offset = servable_glue.read_model_times(log, offset)
    assert lines == [{"pid": 1, "lengths": [3, 4], "seconds": 0.25}] and offset == log.stat().st_size
    assert servable_glue.read_model_times(log, offset) == ([], offset)
