"""Checkpoint reading: zoo names as trained, export-style names, Hugging Face folders,
and the errors a user meets with the wrong file."""

from __future__ import annotations

import json
import pickle
import shutil

import mindspore as ms
import numpy as np
import pytest
from oracle import reference_forward
from safetensors.numpy import save_file

from bert_squad import settings
from bert_squad.model.checkpoint import CheckpointError, build_network, load_checkpoint
from bert_squad.model.config import BertConfig

CONFIG = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=12, max_position_embeddings=32, type_vocab_size=2)
IGNORED = ["total_num", "start_num", "end_num", "global_step", "loss_scale"]


def zoo_weights(config: BertConfig, seed: int = 0):
    """Random weights under the names and shapes the issue lists for zoo r1.5."""
    h, v, inter = config.hidden_size, config.vocab_size, config.intermediate_size
    shapes = {
        "bert.bert.bert_embedding_lookup.embedding_table": (v, h),
        "bert.bert.bert_embedding_postprocessor.token_type_embedding.embedding_table": (2, h),
        "bert.bert.bert_embedding_postprocessor.full_position_embedding.embedding_table":
            (config.max_position_embeddings, h),
        "bert.bert.bert_embedding_postprocessor.layernorm.gamma": (h,),
        "bert.bert.bert_embedding_postprocessor.layernorm.beta": (h,),
        "bert.bert.dense.weight": (h, h),  # pooler: not used for QA
        "bert.bert.dense.bias": (h,),
        "bert.dense1.weight": (2, h),
        "bert.dense1.bias": (2,),
    }
    for i in range(config.num_hidden_layers):
        layer = f"bert.bert.bert_encoder.layers.{i}."
        for part in ("query_layer", "key_layer", "value_layer"):
            shapes[f"{layer}attention.attention.{part}.weight"] = (h, h)
            shapes[f"{layer}attention.attention.{part}.bias"] = (h,)
        shapes[f"{layer}attention.output.dense.weight"] = (h, h)
        shapes[f"{layer}attention.output.dense.bias"] = (h,)
        shapes[f"{layer}attention.output.layernorm.gamma"] = (h,)
        shapes[f"{layer}attention.output.layernorm.beta"] = (h,)
        shapes[f"{layer}intermediate.weight"] = (inter, h)
        shapes[f"{layer}intermediate.bias"] = (inter,)
        shapes[f"{layer}output.dense.weight"] = (h, inter)
        shapes[f"{layer}output.dense.bias"] = (h,)
        shapes[f"{layer}output.layernorm.gamma"] = (h,)
        shapes[f"{layer}output.layernorm.beta"] = (h,)
    rng = np.random.RandomState(seed)
    weights = {}
    for name, shape in shapes.items():
        value = rng.normal(0.0, 0.5, shape)
        weights[name] = (1.0 + 0.3 * value if name.endswith("gamma") else value).astype(np.float32)
    return weights


def save_zoo(path, weights, extras=True):
    entries = [{"name": k, "data": ms.Tensor(v)} for k, v in weights.items()]
    if extras:
        first = next(iter(weights))
        entries += [{"name": f"adam_m.{first}", "data": ms.Tensor(weights[first])},
                    {"name": f"adam_v.{first}", "data": ms.Tensor(weights[first])}]
        entries += [{"name": n, "data": ms.Tensor(np.array([7], np.int32))} for n in IGNORED]
    ms.save_checkpoint(entries, str(path))
    return path


def inputs():
    rng = np.random.RandomState(9)
    ids = rng.randint(0, CONFIG.vocab_size, (2, 10)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    types = np.zeros_like(ids)
    types[:, 4:] = 1
    return ids, mask, types


def scores(net):
    ids, mask, types = inputs()
    start, end = net(ms.Tensor(ids), ms.Tensor(mask), ms.Tensor(types))
    return start.asnumpy(), end.asnumpy(), mask.astype(bool)


def test_zoo_checkpoint_computes_the_zoo_network(tmp_path):
    weights = zoo_weights(CONFIG)
    loaded = load_checkpoint(save_zoo(tmp_path / "squad.ckpt", weights), CONFIG)
    assert loaded.origin == "mindspore_zoo"
    assert sorted(loaded.ignored) == sorted(
        ["adam_m.bert.bert.bert_embedding_lookup.embedding_table",
         "adam_v.bert.bert.bert_embedding_lookup.embedding_table",
         "bert.bert.dense.weight", "bert.bert.dense.bias"] + IGNORED
    )
    expected_count = sum(w.size for n, w in weights.items() if not n.startswith("bert.bert.dense."))
    assert loaded.parameter_count == expected_count
    summary = loaded.summary()
    assert f"{expected_count:,} parameters" in summary and "global_step" in summary

    start, end, valid = scores(build_network(loaded))
    ref_start, ref_end = reference_forward(weights, CONFIG, *inputs())
    np.testing.assert_allclose(start[valid], ref_start[valid], atol=1e-5, rtol=0)
    np.testing.assert_allclose(end[valid], ref_end[valid], atol=1e-5, rtol=0)


def test_export_style_names_without_leading_bert(tmp_path):
    weights = zoo_weights(CONFIG)
    stripped = {name[len("bert."):]: value for name, value in weights.items()}
    full = build_network(load_checkpoint(save_zoo(tmp_path / "full.ckpt", weights), CONFIG))
    short = build_network(load_checkpoint(save_zoo(tmp_path / "short.ckpt", stripped), CONFIG))
    for a, b in zip(scores(full)[:2], scores(short)[:2]):
        np.testing.assert_array_equal(a, b)


def test_missing_weights_are_listed(tmp_path):
    weights = zoo_weights(CONFIG)
    del weights["bert.dense1.bias"]
    del weights["bert.bert.bert_encoder.layers.1.attention.attention.key_layer.weight"]
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(save_zoo(tmp_path / "partial.ckpt", weights), CONFIG)
    message = str(error.value)
    assert "lacks 2 model weights" in message
    assert "bert.dense1.bias" in message
    assert "bert.bert.bert_encoder.layers.1.attention.attention.key_layer.weight" in message


def test_config_of_the_wrong_size_is_explained(tmp_path):
    path = save_zoo(tmp_path / "squad.ckpt", zoo_weights(CONFIG))
    deeper = BertConfig(**{**CONFIG.to_dict(), "num_hidden_layers": 3})
    with pytest.raises(CheckpointError, match="has 2 encoder layers but the config says 3.*--config"):
        load_checkpoint(path, deeper)
    wider = BertConfig(**{**CONFIG.to_dict(), "hidden_size": 16})
    with pytest.raises(CheckpointError, match=r"does not fit the config .*\(40, 8\).*\(40, 16\)"):
        build_network(load_checkpoint(path, wider))


def test_hub_checkpoint_sha256_is_verified(tmp_path):
    hub = save_zoo(tmp_path / settings.HUB_CHECKPOINT_NAME, zoo_weights(CONFIG))
    with pytest.raises(CheckpointError, match=f"expected {settings.HUB_CHECKPOINT_SHA256}.*download it again"):
        load_checkpoint(hub, CONFIG)
    other = shutil.copy(hub, tmp_path / "renamed.ckpt")
    with pytest.raises(CheckpointError, match="expected 00"):
        load_checkpoint(other, CONFIG, expected_sha256="00" * 32)
    assert load_checkpoint(other, CONFIG).sha256 != settings.HUB_CHECKPOINT_SHA256


def test_unreadable_files_are_explained(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a readable MindSpore checkpoint"):
        load_checkpoint(garbage, CONFIG)
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\0")
    with pytest.raises(CheckpointError, match="neither a MindSpore .ckpt file nor a Hugging Face"):
        load_checkpoint(onnx)


class _Trap:
    """Unpickling this creates a file: proof that a loader unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_weights_are_refused_unread(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    (folder / "config.json").write_text(json.dumps(hf_config(CONFIG)))
    for path in (folder, folder / "pytorch_model.bin"):
        with pytest.raises(CheckpointError, match="pickled PyTorch file.*safetensors"):
            load_checkpoint(path)
    assert not marker.exists()


# ---------------------------------------------------------------- Hugging Face folders

def hf_config(config: BertConfig):
    return {
        "architectures": ["BertForQuestionAnswering"], "model_type": "bert", "hidden_act": "gelu",
        "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
        "layer_norm_eps": 1e-12, "max_position_embeddings": config.max_position_embeddings,
        "num_attention_heads": config.num_attention_heads, "num_hidden_layers": config.num_hidden_layers,
        "type_vocab_size": config.type_vocab_size, "vocab_size": config.vocab_size,
    }


def hf_weights_from_zoo(zoo):
    """Rename zoo weights to Hugging Face BertForQuestionAnswering names (their documented layout)."""
    e = "bert.bert.bert_embedding_postprocessor."
    hf = {
        "bert.embeddings.word_embeddings.weight": zoo["bert.bert.bert_embedding_lookup.embedding_table"],
        "bert.embeddings.position_embeddings.weight": zoo[e + "full_position_embedding.embedding_table"],
        "bert.embeddings.token_type_embeddings.weight": zoo[e + "token_type_embedding.embedding_table"],
        "bert.embeddings.LayerNorm.weight": zoo[e + "layernorm.gamma"],
        "bert.embeddings.LayerNorm.bias": zoo[e + "layernorm.beta"],
        "qa_outputs.weight": zoo["bert.dense1.weight"],
        "qa_outputs.bias": zoo["bert.dense1.bias"],
    }
    for i in range(CONFIG.num_hidden_layers):
        z, h = f"bert.bert.bert_encoder.layers.{i}.", f"bert.encoder.layer.{i}."
        for part, short in (("query", "query_layer"), ("key", "key_layer"), ("value", "value_layer")):
            for p in ("weight", "bias"):
                hf[f"{h}attention.self.{part}.{p}"] = zoo[f"{z}attention.attention.{short}.{p}"]
        for p in ("weight", "bias"):
            hf[f"{h}attention.output.dense.{p}"] = zoo[f"{z}attention.output.dense.{p}"]
            hf[f"{h}intermediate.dense.{p}"] = zoo[f"{z}intermediate.{p}"]
            hf[f"{h}output.dense.{p}"] = zoo[f"{z}output.dense.{p}"]
        for ln, p in (("weight", "gamma"), ("bias", "beta")):
            hf[f"{h}attention.output.LayerNorm.{ln}"] = zoo[f"{z}attention.output.layernorm.{p}"]
            hf[f"{h}output.LayerNorm.{ln}"] = zoo[f"{z}output.layernorm.{p}"]
    return hf


def make_hf_folder(folder, weights, lower_case=None):
    folder.mkdir()
    save_file(weights, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(hf_config(CONFIG)))
    (folder / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(CONFIG.vocab_size)) + "\n")
    if lower_case is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lower_case}))
    return folder


def test_hugging_face_folder_holds_the_same_network(tmp_path):
    zoo = zoo_weights(CONFIG)
    hf = hf_weights_from_zoo(zoo)
    hf["bert.embeddings.position_ids"] = np.arange(CONFIG.max_position_embeddings)[None]  # a buffer
    folder = make_hf_folder(tmp_path / "hf", hf, lower_case=False)
    loaded = load_checkpoint(folder)
    assert loaded.origin == "hugging_face"
    assert loaded.config.scoring == "logits" and loaded.config.hidden_act == "gelu_erf"
    assert loaded.vocab_file == folder / "vocab.txt" and loaded.do_lower_case is False
    assert loaded.ignored == ["bert.embeddings.position_ids"]
    start, end, valid = scores(build_network(loaded))
    ref_start, ref_end = reference_forward(zoo, loaded.config, *inputs())
    np.testing.assert_allclose(start, ref_start, atol=1e-5, rtol=0)
    np.testing.assert_allclose(end, ref_end, atol=1e-5, rtol=0)


def test_hugging_face_folder_errors(tmp_path):
    hf = hf_weights_from_zoo(zoo_weights(CONFIG))
    del hf["qa_outputs.weight"], hf["qa_outputs.bias"]
    folder = make_hf_folder(tmp_path / "base", hf)
    with pytest.raises(CheckpointError, match="no question-answering head.*qa_outputs.weight"):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="config.json is the configuration"):
        load_checkpoint(folder, CONFIG)
    (folder / "model.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0{broken}")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_checkpoint(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        load_checkpoint(empty)
