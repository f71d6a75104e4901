"""A real BERT checkpoint (all-MiniLM-L6-v2) with a seeded QA head, converted to our
MindSpore network, gives the start/end logits Hugging Face transformers computes.

transformers and torch live in a separate Python 3.11 environment (BERT_SQUAD_PY311,
default .stack/py311/bin/python); tests/hf_reference.py runs there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mindspore import Tensor
from oracle import minilm_dir, read_vocab
from safetensors.numpy import load_file, save_file

from bert_squad.model.checkpoint import build_network, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
PY311 = Path(os.environ.get("BERT_SQUAD_PY311", REPO / ".stack" / "py311" / "bin" / "python"))
REFERENCE_SCRIPT = Path(__file__).resolve().parent / "hf_reference.py"
TOLERANCE = 1e-4
REFERENCE_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def qa_folder(tmp_path_factory) -> Path:
    """MiniLM's weights under BertForQuestionAnswering names plus a seeded qa_outputs layer."""
    source = minilm_dir()
    folder = tmp_path_factory.mktemp("minilm_qa")
    weights = {f"bert.{name}": value for name, value in load_file(str(source / "model.safetensors")).items()
               if name != "embeddings.position_ids"}
    hidden = weights["bert.embeddings.word_embeddings.weight"].shape[1]
    rng = np.random.RandomState(20240607)
    weights["qa_outputs.weight"] = rng.normal(0.0, 0.2, (2, hidden)).astype(np.float32)
    weights["qa_outputs.bias"] = rng.normal(0.0, 0.2, (2,)).astype(np.float32)
    save_file(weights, str(folder / "model.safetensors"))
    config = json.loads((source / "config.json").read_text())
    config["architectures"] = ["BertForQuestionAnswering"]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(source / name, folder / name)
    return folder


def window(vocab, question, context, seq):
    """[CLS] question [SEP] context [SEP] from whole-word tokens; the context is cut to
    fit seq, the rest padded."""
    question_tokens = question.split()
    context_tokens = context.split()[: seq - len(question_tokens) - 3]
    tokens = ["[CLS]"] + question_tokens + ["[SEP]"] + context_tokens + ["[SEP]"]
    ids = np.zeros(seq, np.int32)
    ids[: len(tokens)] = [vocab[t] for t in tokens]
    mask = (np.arange(seq) < len(tokens)).astype(np.int32)
    types = np.zeros(seq, np.int32)
    types[len(question_tokens) + 2 : len(tokens)] = 1
    return ids, mask, types


def batch(*windows):
    return tuple(np.stack(column) for column in zip(*windows))


def cases(vocab_size, vocab):
    """Batches of several shapes: padding, two segments, one segment, real words, full windows."""
    rng = np.random.RandomState(7)
    ids = rng.randint(1000, vocab_size, (3, 48)).astype(np.int32)
    mask = np.ones_like(ids)
    types = np.zeros_like(ids)
    types[0, 20:] = 1  # full window, two segments
    mask[1, 21:] = 0  # padded, two segments
    types[1, 9:21] = 1
    ids[1, 21:] = 0
    mask[2, 30:] = 0  # padded, one segment
    ids[2, 30:] = 0
    rain = " ".join(["it rained on a cold day in the north of the country ."] * 40)
    return {
        "random48": (ids, mask, types),
        "words128": batch(
            window(vocab, "who wrote the book ?", "the book was written by a young man in paris .", 128),
            window(vocab, "where is the city ?", "the city lies by the sea , far from the old river .", 128),
        ),
        "full384": batch(window(vocab, "when did it rain ?", rain, 384)),
    }


def test_minilm_logits_match_transformers(qa_folder, tmp_path):
    if not PY311.is_file():
        pytest.fail(
            f"the Python 3.11 environment with torch and transformers is missing ({PY311}); "
            "build it (see the Makefile) or point BERT_SQUAD_PY311 at its python"
        )
    loaded = load_checkpoint(qa_folder)
    assert loaded.config.hidden_size == 384 and loaded.config.num_hidden_layers == 6
    assert loaded.config.scoring == "logits"
    assert sorted(loaded.ignored) == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
    net = build_network(loaded)
    inputs = cases(loaded.config.vocab_size, read_vocab(qa_folder / "vocab.txt"))
    assert inputs["full384"][1].sum() == 384  # a full window, no padding

    arrays = {f"{case}/{name}": value for case, batch in inputs.items()
              for name, value in zip(("input_ids", "input_mask", "token_type_id"), batch)}
    np.savez(tmp_path / "inputs.npz", **arrays)
    done = subprocess.run(
        [str(PY311), str(REFERENCE_SCRIPT), str(qa_folder), str(tmp_path / "inputs.npz"),
         str(tmp_path / "reference.npz")],
        capture_output=True, text=True, timeout=REFERENCE_TIMEOUT_S,
    )
    assert done.returncode == 0, f"hf_reference.py failed:\n{done.stderr[-3000:]}"
    reference = np.load(tmp_path / "reference.npz")

    for case, batch in inputs.items():
        start, end = (t.asnumpy() for t in net(*(Tensor(a) for a in batch)))
        ref_start, ref_end = reference[f"{case}/start_logits"], reference[f"{case}/end_logits"]
        assert ref_start.shape == start.shape
        assert np.abs(ref_start).max() > 0.5  # the head produces real, varied logits
        np.testing.assert_allclose(start, ref_start, atol=TOLERANCE, rtol=0, err_msg=case)
        np.testing.assert_allclose(end, ref_end, atol=TOLERANCE, rtol=0, err_msg=case)
