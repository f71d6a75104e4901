"""BertConfig: zoo preset, Hugging Face translation, JSON files, validation."""

from __future__ import annotations

import json

import pytest

from bert_squad.model.config import BertConfig, ConfigError

# all-MiniLM-L6-v2's config.json, as shipped (the fields we read).
MINILM_HF_CONFIG = {
    "architectures": ["BertModel"],
    "hidden_act": "gelu",
    "hidden_size": 384,
    "intermediate_size": 1536,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 6,
    "position_embedding_type": "absolute",
    "type_vocab_size": 2,
    "vocab_size": 30522,
}


def test_default_is_the_zoo_squad_bert_base():
    # Values from the model zoo r1.5 SQuAD setup (issue #3).
    config = BertConfig()
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (30522, 768, 12)
    assert (config.num_attention_heads, config.intermediate_size) == (12, 3072)
    assert (config.max_position_embeddings, config.type_vocab_size) == (512, 2)
    assert config.layer_norm_eps == 1e-7
    assert config.hidden_act == "gelu_tanh"
    assert config.scoring == "log_softmax"
    assert config.head_size == 64


def test_hugging_face_config_keeps_its_numerics():
    config = BertConfig.from_hf_config(MINILM_HF_CONFIG)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 6, 12)
    assert config.intermediate_size == 1536
    assert config.layer_norm_eps == 1e-12
    assert config.hidden_act == "gelu_erf"  # HF "gelu" is the exact erf form
    assert config.scoring == "logits"


def test_hugging_face_tanh_gelu_and_unsupported_settings():
    assert BertConfig.from_hf_config({**MINILM_HF_CONFIG, "hidden_act": "gelu_new"}).hidden_act == "gelu_tanh"
    with pytest.raises(ConfigError, match="hidden_act 'relu' is not supported"):
        BertConfig.from_hf_config({**MINILM_HF_CONFIG, "hidden_act": "relu"})
    with pytest.raises(ConfigError, match="relative_key"):
        BertConfig.from_hf_config({**MINILM_HF_CONFIG, "position_embedding_type": "relative_key"})
    with pytest.raises(ConfigError, match="roberta"):
        BertConfig.from_hf_config({**MINILM_HF_CONFIG, "model_type": "roberta"})
    incomplete = dict(MINILM_HF_CONFIG)
    del incomplete["hidden_size"]
    with pytest.raises(ConfigError, match="hidden_size"):
        BertConfig.from_hf_config(incomplete)


def test_json_round_trip(tmp_path):
    config = BertConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                        layer_norm_eps=1e-12, hidden_act="gelu_erf", scoring="logits")
    path = tmp_path / "config.json"
    config.to_json_file(path)
    assert BertConfig.from_json_file(path) == config


def test_partial_file_describes_bert_large(tmp_path):
    path = tmp_path / "large.json"
    path.write_text(json.dumps({"hidden_size": 1024, "num_hidden_layers": 24,
                                "num_attention_heads": 16, "intermediate_size": 4096}))
    config = BertConfig.from_json_file(path)
    assert (config.hidden_size, config.num_hidden_layers, config.head_size) == (1024, 24, 64)
    assert config.layer_norm_eps == 1e-7 and config.scoring == "log_softmax"  # zoo numerics kept


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"hidden_size": 100, "num_attention_heads": 12}, "not divisible"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
        ({"vocab_size": True}, "vocab_size must be a positive integer"),
        ({"hidden_size": 76.8}, "hidden_size must be a positive integer"),
        ({"layer_norm_eps": 0}, "layer_norm_eps"),
        ({"hidden_act": "relu"}, "hidden_act must be one of"),
        ({"scoring": "softmax"}, "scoring must be one of"),
    ],
)
def test_invalid_values_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        BertConfig(**fields)


def test_bad_files_are_explained(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        BertConfig.from_json_file(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{hidden_size: 3")
    with pytest.raises(ConfigError, match="not valid JSON"):
        BertConfig.from_json_file(broken)
    hf_style = tmp_path / "hf.json"
    hf_style.write_text(json.dumps(MINILM_HF_CONFIG))
    with pytest.raises(ConfigError, match="unknown config fields .*architectures"):
        BertConfig.from_json_file(hf_style)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        BertConfig.from_json_file(listed)
