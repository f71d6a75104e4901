"""bert-squad-export: version folders, MindIR equal to the in-memory network, metadata,
and the errors a user meets."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from importlib.metadata import version as distribution_version
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from oracle import build_oracle_checkpoint, read_vocab, uncased_vocab_file
from safetensors.numpy import save_file

from bert_squad import settings
from bert_squad.model.checkpoint import build_network, load_checkpoint, weight_names
from bert_squad.model.config import BertConfig
from bert_squad.metadata import METADATA_FILE, MetadataError, read_metadata
from bert_squad.model.network import BertForQuestionAnswering
from bert_squad.export.cli import main


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """A zoo-format checkpoint with exact zoo names, its config file and vocabulary."""
    folder = tmp_path_factory.mktemp("oracle")
    config = build_oracle_checkpoint(folder / "oracle.ckpt", uncased_vocab_file(), "paris", "france")
    config.to_json_file(folder / "config.json")
    return {"ckpt": folder / "oracle.ckpt", "config": folder / "config.json",
            "vocab": uncased_vocab_file(), "bert_config": config}


def export_args(oracle, servable_dir, *extra):
    return [str(oracle["ckpt"]), "--config", str(oracle["config"]), "--vocab", str(oracle["vocab"]),
            "--servable-dir", str(servable_dir), *extra]


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def varied_inputs(batch, seq, vocab_size, seed):
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, vocab_size, (batch, seq)).astype(np.int32)
    mask = np.ones_like(ids)
    types = np.zeros_like(ids)
    for row in range(batch):
        valid = seq - rng.randint(0, seq // 2) if row else seq
        types[row, valid // 4 : valid] = 1
        mask[row, valid:] = ids[row, valid:] = 0
    return ids, mask, types


def run_mindir(path, *arrays):
    graph = ms.nn.GraphCell(ms.load(str(path)))
    return [t.asnumpy() for t in graph(*(ms.Tensor(a) for a in arrays))]


def test_zoo_round_trip(oracle, tmp_path, capsys):
    servable = tmp_path / "servable"
    assert main(export_args(oracle, servable, "--runtime", "serving", "--batch-size", "2")) == 0
    out = capsys.readouterr().out
    assert "1,010,370 parameters" in out and "adam_m.* (39)" in out and "global_step" in out

    version = servable / "bert_squad" / "1"
    metadata = read_metadata(version)
    assert metadata.buckets == settings.BUCKETS and metadata.batch_size == 2
    assert metadata.config == oracle["bert_config"]
    assert metadata.scoring == "log_softmax" and metadata.do_lower_case is True
    assert metadata.compute_dtype == "float32"
    assert metadata.vocab_sha256 == sha256(oracle["vocab"])
    assert (version / metadata.vocab_file).read_bytes() == Path(oracle["vocab"]).read_bytes()
    assert metadata.source == str(oracle["ckpt"].resolve()) and metadata.source_sha256 == sha256(oracle["ckpt"])
    assert metadata.tool_version == distribution_version("bert-squad")
    datetime.fromisoformat(metadata.created)
    assert sorted(p.name for p in version.iterdir()) == sorted(
        [METADATA_FILE, "vocab.txt"] + [f"bert_{b}.mindir" for b in settings.BUCKETS])
    assert metadata.model_sha256 == {f"bert_{b}.mindir": sha256(version / f"bert_{b}.mindir") for b in settings.BUCKETS}

    net = build_network(load_checkpoint(oracle["ckpt"], oracle["bert_config"]))
    for bucket in settings.BUCKETS:
        inputs = varied_inputs(2, bucket, oracle["bert_config"].vocab_size, seed=bucket)
        expected = [t.asnumpy() for t in net(*(ms.Tensor(a) for a in inputs))]
        actual = run_mindir(version / metadata.model_files[bucket], *inputs)
        for a, e in zip(actual, expected):
            assert a.shape == (2, bucket)
            np.testing.assert_allclose(a, e, atol=1e-5, rtol=0)


def test_the_default_export_is_one_resizable_model_checked_in_lite(oracle, tmp_path, capsys):
    assert main(export_args(oracle, tmp_path)) == 0
    assert "MindSpore Lite at lengths" in capsys.readouterr().out  # the exporter ran the model in Lite
    version = tmp_path / "bert_squad" / "1"
    metadata = read_metadata(version)
    assert metadata.runtime == "lite_direct" and metadata.buckets == (settings.MAX_SEQ_LENGTH,)
    assert sorted(p.name for p in version.iterdir()) == sorted([METADATA_FILE, "vocab.txt", "bert.mindir"])


def test_exported_oracle_answers(oracle, tmp_path):
    """The exported MindIR still finds the oracle's words, inside padding."""
    assert main(export_args(oracle, tmp_path, "--runtime", "serving", "--buckets", "64,384")) == 0
    vocab = read_vocab(oracle["vocab"])
    tokens = "[CLS] where ? [SEP] the road from paris to france is long [SEP]".split()
    ids = np.zeros((1, 64), np.int32)
    ids[0, : len(tokens)] = [vocab[t] for t in tokens]
    mask = (ids != 0).astype(np.int32)
    types = np.zeros_like(ids)
    types[0, 4 : len(tokens)] = 1
    start, end = run_mindir(tmp_path / "bert_squad" / "1" / "bert_64.mindir", ids, mask, types)
    assert tokens[int(start.argmax())] == "paris" and tokens[int(end.argmax())] == "france"


def test_versions_are_never_overwritten_unless_forced(oracle, tmp_path, capsys):
    args = export_args(oracle, tmp_path, "--runtime", "serving", "--buckets", "384", "--name", "qa")
    assert main(args) == 0
    assert main(args) == 0  # next free number
    first = tmp_path / "qa" / "1" / METADATA_FILE
    before = first.read_text()
    assert main(args + ["--version", "1"]) == 1
    assert "already exists" in capsys.readouterr().err and first.read_text() == before
    assert main(args + ["--version", "1", "--force", "--no-lower-case"]) == 0
    assert read_metadata(first.parent).do_lower_case is False
    assert main(args + ["--version", "7"]) == 0
    # no leftovers; the servable's stages written beside the versions (issue 15: a servable directory export made is
    # complete)
    assert sorted(p.name for p in (tmp_path / "qa").iterdir()) == ["1", "2", "7", "servable_config.py"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--runtime", "serving", "--buckets", "128,256"], "last bucket must be 384"),
        (["--runtime", "serving", "--buckets", "256,128,384"], "strictly increasing"),
        (["--runtime", "serving", "--buckets", "0,384"], "positive integers"),
    ],
)
def test_bad_buckets(oracle, tmp_path, capsys, extra, message):
    assert main(export_args(oracle, tmp_path, *extra)) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "bert_squad").exists() or not any((tmp_path / "bert_squad").iterdir())


def test_bucket_beyond_position_table(oracle, tmp_path, capsys):
    short = BertConfig(**{**oracle["bert_config"].to_dict(), "max_position_embeddings": 256})
    short.to_json_file(tmp_path / "short.json")
    args = [str(oracle["ckpt"]), "--config", str(tmp_path / "short.json"), "--vocab", str(oracle["vocab"]),
            "--servable-dir", str(tmp_path)]
    assert main(args) == 1
    assert "buckets [384] exceed the model's max_position_embeddings 256" in capsys.readouterr().err


def test_user_errors_are_explained(oracle, tmp_path, capsys):
    cases = [
        (["missing.ckpt", "--vocab", str(oracle["vocab"])], "does not exist"),
        ([str(oracle["ckpt"]), "--config", str(oracle["config"])], "pass --vocab"),
        ([str(oracle["ckpt"]), "--vocab", str(oracle["vocab"])], "encoder layers but the config says 12"),
        (export_args(oracle, tmp_path, "--expect-sha256", "ab" * 32), "expected abab"),
        (export_args(oracle, tmp_path, "--hub"), settings.HUB_CHECKPOINT_SHA256),
        ([str(oracle["ckpt"]), "--config", str(tmp_path / "nope.json"), "--vocab", str(oracle["vocab"])],
         "config file"),
    ]
    for argv, message in cases:
        assert main(argv + ["--servable-dir", str(tmp_path)]) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("bert-squad-export: error: ") and message in err, err
    big_vocab = tmp_path / "big_vocab.txt"
    big_vocab.write_text("\n".join(f"t{i}" for i in range(40000)) + "\n")
    assert main(export_args(oracle, tmp_path, "--vocab", str(big_vocab))) == 1
    assert "not this model's vocabulary" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(export_args(oracle, tmp_path, "--runtime", "serving", "--buckets", "128;384"))
    assert exit_info.value.code == 2 and "comma-separated integers" in capsys.readouterr().err
    assert not (tmp_path / "bert_squad").exists()


def test_hugging_face_folder_and_fp16(tmp_path):
    """A Hugging Face folder brings config, vocabulary and casing; --fp16 is recorded."""
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=384, layer_norm_eps=1e-12,
                        hidden_act="gelu_erf", scoring="logits")
    net = BertForQuestionAnswering(config)
    params = {name: p.asnumpy() for name, p in net.parameters_and_names()}
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({hf: params[ours] for ours, _, hf in weight_names(1)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "bert", "hidden_act": "gelu", "vocab_size": 64, "hidden_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
        "max_position_embeddings": 384, "type_vocab_size": 2, "layer_norm_eps": 1e-12}))
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"W{i}" for i in range(60)]))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))

    servable = tmp_path / "servable"
    assert main([str(folder), "--servable-dir", str(servable), "--runtime", "serving", "--buckets", "32,384",
                 "--fp16"]) == 0
    metadata = read_metadata(servable / "bert_squad" / "1")
    assert metadata.config == config and metadata.scoring == "logits"
    assert metadata.do_lower_case is False and metadata.compute_dtype == "float16"
    assert metadata.source.endswith("model.safetensors")
    assert metadata.source_sha256 == sha256(folder / "model.safetensors")
    inputs = varied_inputs(1, 32, 64, seed=3)
    fp16 = run_mindir(servable / "bert_squad" / "1" / "bert_32.mindir", *inputs)
    fp32 = [t.asnumpy() for t in net(*(ms.Tensor(a) for a in inputs))]
    for a, e in zip(fp16, fp32):
        assert 0 < np.abs(a - e).max() < 0.05  # float16 matmuls: close, not equal


def test_metadata_guards_the_version_folder(oracle, tmp_path):
    assert main(export_args(oracle, tmp_path, "--runtime", "serving", "--buckets", "384")) == 0
    version = tmp_path / "bert_squad" / "1"
    with (version / "vocab.txt").open("a") as f:
        f.write("extra\n")
    with pytest.raises(MetadataError, match="does not match the sha256"):
        read_metadata(version)
    (version / "bert_384.mindir").unlink()
    with pytest.raises(MetadataError, match=r"model files \['bert_384.mindir'\].*missing"):
        read_metadata(version)
    data = json.loads((version / METADATA_FILE).read_text())
    del data["batch_size"]
    (version / METADATA_FILE).write_text(json.dumps(data))
    with pytest.raises(MetadataError, match="lacks the field 'batch_size'"):
        read_metadata(version)
    (version / METADATA_FILE).write_text(json.dumps({**data, "batch_size": 1, "format_version": 99}))
    with pytest.raises(MetadataError, match="format_version 99 is not supported"):
        read_metadata(version)
    (version / METADATA_FILE).write_text("{")
    with pytest.raises(MetadataError, match="not valid JSON"):
        read_metadata(version)
    with pytest.raises(MetadataError, match="export a model"):
        read_metadata(tmp_path)
