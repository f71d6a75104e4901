"""Shape and numerics of one BERT question-answering network, independent of MindSpore.

One network class serves checkpoints from two origins that compute slightly different
functions, so the differences live here as data rather than as code branches elsewhere:

- MindSpore model zoo (official/nlp/bert r1.5, the Hub SQuAD checkpoint): LayerNorm
  epsilon 1e-7, tanh-approximated GELU, answer spans ranked by per-window log-softmax.
- Hugging Face BertForQuestionAnswering: epsilon from config.json (1e-12), exact erf
  GELU, spans ranked by the sum of raw start and end logits.

The dataclass defaults are the zoo SQuAD BERT-base preset, so `BertConfig()` is the
configuration the Hub checkpoint was trained with, and a JSON file naming only the
fields that differ (e.g. BERT-large sizes) is a complete configuration.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple, Union

HIDDEN_ACTS = ("gelu_tanh", "gelu_erf")
SCORINGS = ("log_softmax", "logits")

# The model zoo's BERT config (`bert_net_cfg` of official/nlp/bert's task_squad_config.yaml), as written there.
ZOO_SECTION = "bert_net_cfg"
# Zoo fields that only shape training (dropout, initialisation, the batch and window it trained at): ignored.
ZOO_TRAINING_FIELDS = ("seq_length", "batch_size", "hidden_dropout_prob", "attention_probs_dropout_prob",
                       "initializer_range")
# Zoo `hidden_act` values: the zoo's "gelu" is MindSpore's GeLU, the tanh approximation.
_ZOO_ACTS = {"gelu": "gelu_tanh"}
_ZOO_DTYPES = {"mstype.float32": "float32", "mstype.float16": "float16", "float32": "float32", "float16": "float16"}

# Hugging Face `hidden_act` values and the GELU each one computes.
_HF_ACTS = {
    "gelu": "gelu_erf",
    "gelu_python": "gelu_erf",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
}


class ConfigError(ValueError):
    """A configuration value or file that cannot describe a BERT QA network."""


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-7
    hidden_act: str = "gelu_tanh"
    scoring: str = "log_softmax"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{f.name} must be a positive integer, got {value!r}")
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ConfigError(f"layer_norm_eps must be a number between 0 and 1, got {eps!r}")
        if self.hidden_act not in HIDDEN_ACTS:
            raise ConfigError(f"hidden_act must be one of {HIDDEN_ACTS}, got {self.hidden_act!r}")
        if self.scoring not in SCORINGS:
            raise ConfigError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BertConfig":
        """Build from our own JSON form; missing fields keep the zoo BERT-base defaults."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a BERT config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown config fields {unknown}; allowed: {sorted(known)}"
                " (a Hugging Face config.json belongs in a model folder, not here)"
            )
        return cls(**data)

    @classmethod
    def from_json_file(cls, path: Union[str, Path]) -> "BertConfig":
        return cls.from_dict(_read_json(Path(path)))

    def to_json_file(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_hf_config(cls, data: Mapping[str, Any]) -> "BertConfig":
        """Translate a Hugging Face BERT config.json (as a dict); scoring is raw logits."""
        model_type = data.get("model_type", "bert")
        if model_type != "bert":
            raise ConfigError(f"model_type {model_type!r} is not supported; only 'bert' models are")
        position_type = data.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ConfigError(
                f"position_embedding_type {position_type!r} is not supported; only 'absolute' is"
            )
        act = data.get("hidden_act", "gelu")
        if act not in _HF_ACTS:
            raise ConfigError(f"hidden_act {act!r} is not supported; supported: {sorted(_HF_ACTS)}")
        try:
            return cls(
                vocab_size=data["vocab_size"],
                hidden_size=data["hidden_size"],
                num_hidden_layers=data["num_hidden_layers"],
                num_attention_heads=data["num_attention_heads"],
                intermediate_size=data["intermediate_size"],
                max_position_embeddings=data["max_position_embeddings"],
                type_vocab_size=data.get("type_vocab_size", 2),
                layer_norm_eps=data.get("layer_norm_eps", 1e-12),
                hidden_act=_HF_ACTS[act],
                scoring="logits",
            )
        except KeyError as exc:
            raise ConfigError(f"Hugging Face config.json lacks the field {exc.args[0]!r}") from None

    @classmethod
    def from_hf_config_file(cls, path: Union[str, Path]) -> "BertConfig":
        return cls.from_hf_config(_read_json(Path(path)))


def from_zoo_dict(data: Mapping[str, Any]) -> Tuple[BertConfig, List[str]]:
    """Build from the zoo's `bert_net_cfg` fields (or a mapping holding that section), mixed freely with ours.

    Returns the config and notes for the export log: the training-only fields ignored, and what the zoo's
    `compute_type` means here (the precision is chosen at export). `use_relative_positions: true` (NEZHA) is
    refused: the network has absolute positions only.
    """
    if isinstance(data, Mapping) and isinstance(data.get(ZOO_SECTION), Mapping):
        data = data[ZOO_SECTION]
    if not isinstance(data, Mapping):
        raise ConfigError(f"a BERT config must be a mapping of fields, got {type(data).__name__}")
    ours, notes = dict(data), []
    ignored = [name for name in ZOO_TRAINING_FIELDS if name in ours]
    for name in ignored:
        del ours[name]
    if ours.pop("use_relative_positions", False) not in (False, "False", "false"):
        raise ConfigError(
            "use_relative_positions is true: that is NEZHA (relative position embeddings), which this network "
            "does not implement; only BERT with absolute positions (use_relative_positions: false) can be exported"
        )
    dtypes = {}
    for name in ("dtype", "compute_type"):
        if name in ours:
            value = str(ours.pop(name))
            if value not in _ZOO_DTYPES:
                raise ConfigError(f"{name} must be one of {sorted(_ZOO_DTYPES)}, got {value!r}")
            dtypes[name] = _ZOO_DTYPES[value]
    if dtypes.get("dtype", "float32") != "float32":
        raise ConfigError(f"dtype {dtypes['dtype']}: zoo checkpoints keep float32 weights and embeddings; "
                          "set dtype: mstype.float32")
    if "hidden_act" in ours:
        ours["hidden_act"] = _ZOO_ACTS.get(ours["hidden_act"], ours["hidden_act"])
    config = BertConfig.from_dict(ours)
    if ignored:
        notes.append(f"config: ignored training-only fields {', '.join(ignored)}")
    if "compute_type" in dtypes:
        notes.append(f"config: compute_type {dtypes['compute_type']} is how the zoo trained; the export's "
                     "precision is its own option (float32 on CPU, --fp16 with --runtime serving for GPU/Ascend)")
    return config, notes


def read_config_file(path: Union[str, Path]) -> Tuple[BertConfig, List[str]]:
    """A --config file: the zoo's task_squad_config.yaml (its first YAML document's `bert_net_cfg`), or JSON of
    those fields or of ours. Returns the config and notes for the log (see from_zoo_dict)."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        return from_zoo_dict(_read_yaml(path))
    return from_zoo_dict(_read_json(path))


def _read_yaml(path: Path) -> Any:
    import yaml  # only YAML configs need it

    try:
        with open(path, encoding="utf-8") as f:
            documents = list(yaml.safe_load_all(f))  # the zoo's files hold the values, then help texts
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not documents or not isinstance(documents[0], Mapping):
        raise ConfigError(f"config file {path} does not start with a mapping of fields")
    return documents[0]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
