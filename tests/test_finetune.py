"""bert-squad-finetune on a tiny model (issue 15): the loss falls, a run stopped at a checkpoint and resumed ends
with the same weights as an uninterrupted one, and the fine-tuned model exports and answers through real Serving.

The start is the oracle encoder (tests/oracle.py: the words "paris" and "france" carry marker dimensions) with no
span head, so bert-squad-finetune starts a new one; the training questions all answer "Paris", which a head can
learn in a few dozen steps. So the fine-tuned model has a known answer, different from the oracle's.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest

from harness import PY39, Server

STEPS_PER_EPOCH, EPOCHS, SAVE_STEPS = 5, 6, 15  # 30 steps
RESUME_AT = 40  # steps the resume test runs (of 200: 40 epochs)
FILLERS = ["monday", "spring", "summer", "winter", "autumn", "march", "april", "june"]


def train_file(path) -> None:
    """40 questions, each answered by "Paris" in a context that also names France (the oracle's span end)."""
    paragraphs = []
    for i in range(40):
        a, b = FILLERS[i % 8], FILLERS[(i * 3 + 1) % 8]
        context = f"On a {a} day the city of Paris is the capital of France, they said in {b}."
        paragraphs.append({"context": context, "qas": [{"id": f"q{i}", "question": "Which city?",
                                                        "answers": [{"text": "Paris",
                                                                     "answer_start": context.index("Paris")}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """The oracle encoder as a zoo .ckpt without its span head, its config and the vocabulary."""
    import mindspore as ms

    from oracle import build_oracle_checkpoint, uncased_vocab_file

    root = tmp_path_factory.mktemp("finetune-start")
    config = build_oracle_checkpoint(root / "oracle.ckpt", uncased_vocab_file(), "paris", "france")
    params = ms.load_checkpoint(str(root / "oracle.ckpt"))
    ms.save_checkpoint([{"name": n, "data": p} for n, p in params.items() if not n.startswith("bert.dense1.")],
                       str(root / "encoder.ckpt"))
    config.to_json_file(root / "config.json")
    train_file(root / "train.json")
    return root


def finetune_command(start, output, *extra) -> list:
    return [str(PY39), "-m", "bert_squad.training.finetune", str(start / "encoder.ckpt"), str(start / "train.json"),
               "--config", str(start / "config.json"), "--vocab", str(_vocab()), "--output-dir", str(output),
               "--seq-length", "96", "--doc-stride", "16", "--batch-size", "8", "--epochs", str(EPOCHS),
               "--learning-rate", "0.01", "--save-steps", str(SAVE_STEPS), "--seed", "7", "--quiet", *extra]


def finetune(start, output, *extra, check=True):
    done = subprocess.run(finetune_command(start, output, *extra), capture_output=True, text=True, timeout=900, cwd=output.parent)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def _vocab():
    from oracle import uncased_vocab_file

    return uncased_vocab_file()


def weights(model_dir) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(model_dir / "model.safetensors"))


def losses(output) -> list:
    return [json.loads(line)["loss"] for line in (output / "loss.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(start):
    output = start / "uninterrupted"
    # dropout 0.1 (the default); --export writes the model straight into a servable directory of its own
    done = finetune(start, output, "--grad-accumulation", "2", "--export", "--servable-dir", str(start / "servable"),
                    "--dev-file", str(start / "train.json"))
    return output, done.stdout


def test_the_loss_falls_and_the_schedule_covers_every_epoch(uninterrupted):
    output, stdout = uninterrupted
    assert "40 questions, 40 windows of 96 tokens, 30 steps of 8" in stdout
    curve = losses(output)
    assert len(curve) == STEPS_PER_EPOCH * EPOCHS
    assert np.mean(curve[-5:]) < 0.3 * np.mean(curve[:5]), curve
    assert "dev exact_match 100.00  f1 100.00  (40 questions)" in stdout  # --dev-file: every answer now "Paris"


def checkpoint_weights(output, step: int) -> dict:
    import mindspore as ms

    ckpt = output / "checkpoints" / f"step-{step:07d}.ckpt"
    return {n: p.asnumpy() for n, p in ms.load_checkpoint(str(ckpt)).items()}


def test_a_run_interrupted_and_resumed_ends_with_the_same_weights(start):
    """Without dropout (MindSpore's CPU dropout is not reproducible, trainer.py): stopped by SIGINT wherever it is,
    then resumed, the run has the weights and moments of one never interrupted, and no step twice in its log."""
    common = ["--epochs", "40", "--dropout", "0", "--max-steps", str(RESUME_AT), "--save-steps", "7"]
    reference = start / "reference"
    finetune(start, reference, *common)
    interrupted = start / "interrupted"
    interrupted.mkdir()
    process = subprocess.Popen(finetune_command(start, interrupted, *common), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=start)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None and len(_lines(interrupted)) < 3:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=600)
    finally:
        process.kill()
        process.wait()
    stopped = len(losses(interrupted))
    assert process.returncode == 130 and f"interrupted after step {stopped} of 200" in stderr, stderr
    assert 3 <= stopped < RESUME_AT
    resumed = finetune(start, interrupted, *common)
    assert f"resuming at step {stopped} of 200" in resumed.stdout
    assert [json.loads(line)["step"] for line in _lines(interrupted)] == list(range(1, RESUME_AT + 1))
    expected, got = checkpoint_weights(reference, RESUME_AT), checkpoint_weights(interrupted, RESUME_AT)
    assert sorted(expected) == sorted(got) and len(expected) > 3 * 30  # weights and both AdamW moments
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def _lines(output) -> list:
    log = output / "loss.jsonl"
    return log.read_text().splitlines() if log.exists() else []


def test_resuming_with_other_settings_is_refused(start, uninterrupted):
    done = finetune(start, uninterrupted[0], "--grad-accumulation", "2", "--learning-rate", "0.02", check=False)
    assert done.returncode == 2 and "learning_rate" in done.stderr and "--output-dir" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_fine_tuned_model_exports_and_answers_through_serving(start, uninterrupted, tmp_path):
    from bert_squad.metadata import read_metadata
    from wire import rest_post

    output, stdout = uninterrupted
    servable = start / "servable"
    assert "exported version 1" in stdout
    meta = read_metadata(servable / "bert_squad" / "1")
    assert meta.source == str((output / "model" / "model.safetensors").resolve()) and meta.scoring == "logits"
    question = {"question": "Which city?", "context": "Far from here the city of Paris is the capital of France."}
    with Server(tmp_path / "run", servable) as server:
        reply = rest_post(server.rest_address, "/model/bert_squad:predict", {"instances": [question]}, timeout=60)
    assert reply["instances"][0]["answer"] == "Paris"  # the oracle before fine-tuning answers up to "France"
