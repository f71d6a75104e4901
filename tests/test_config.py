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


# ---------------------------------------------------------------- the zoo's own config (issue 15)

ZOO_BERT_BASE = {  # bert_net_cfg of the zoo's task_squad_config.yaml (r1.5), as written there
    "seq_length": 384, "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
    "initializer_range": 0.02, "use_relative_positions": False, "dtype": "mstype.float32",
    "compute_type": "mstype.float16",
}


def test_the_zoo_bert_net_cfg_as_written_is_the_zoo_preset(tmp_path):
    from bert_squad.model.config import read_config_file

    path = tmp_path / "zoo.json"
    path.write_text(json.dumps(ZOO_BERT_BASE))
    config, notes = read_config_file(path)
    assert config == BertConfig()  # gelu is the zoo's tanh GELU; epsilon and scoring stay the zoo's
    assert config.hidden_act == "gelu_tanh"
    assert notes[0] == ("config: ignored training-only fields seq_length, hidden_dropout_prob, "
                        "attention_probs_dropout_prob, initializer_range")
    assert "compute_type float16" in notes[1] and "--fp16" in notes[1]


def test_the_zoo_yaml_takes_its_bert_net_cfg_section_of_the_first_document(tmp_path):
    from bert_squad.model.config import read_config_file

    lines = ["do_train: 'false'", "bert_net_cfg:"] + [f"    {k}: {v}" for k, v in ZOO_BERT_BASE.items()]
    text = "\n".join(lines).replace("hidden_size: 768", "hidden_size: 1024").replace(
        "num_attention_heads: 12", "num_attention_heads: 16")
    path = tmp_path / "task_squad_config.yaml"
    path.write_text(text + "\n---\nhidden_size: 'help text'\n")
    config, _ = read_config_file(path)
    assert (config.hidden_size, config.num_attention_heads, config.hidden_act) == (1024, 16, "gelu_tanh")


@pytest.mark.parametrize("change, expect", [
    ({"use_relative_positions": True}, "NEZHA"),
    ({"dtype": "mstype.float16"}, "float32 weights"),
    ({"compute_type": "mstype.int8"}, "compute_type must be one of"),
    ({"hidden_act": "relu"}, "hidden_act must be one of"),
    ({"num_hidden_layerz": 6}, "unknown config fields ['num_hidden_layerz']"),
])
def test_zoo_fields_this_network_cannot_honour_are_refused(tmp_path, change, expect):
    from bert_squad.model.config import read_config_file

    path = tmp_path / "zoo.json"
    path.write_text(json.dumps({**ZOO_BERT_BASE, **change}))
    with pytest.raises(ConfigError, match=expect.replace("[", r"\[").replace("]", r"\]")):
        read_config_file(path)


def test_our_own_json_form_still_reads_with_no_notes(tmp_path):
    from bert_squad.model.config import read_config_file

    path = tmp_path / "ours.json"
    BertConfig(hidden_size=384, num_hidden_layers=6, hidden_act="gelu_erf").to_json_file(path)
    config, notes = read_config_file(path)
    assert config == BertConfig(hidden_size=384, num_hidden_layers=6, hidden_act="gelu_erf") and notes == []
