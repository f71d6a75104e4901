"""Read trained weights into `network.BertForQuestionAnswering`.

Two sources:
- MindSpore model zoo checkpoints (.ckpt, official/nlp/bert r1.5 SQuAD fine-tuning,
  including the Hub checkpoint), read with MindSpore's own loader. The zoo does not
  store its configuration, so the caller supplies a `BertConfig` (default: BERT-base).
- Hugging Face BertForQuestionAnswering folders: config.json + model.safetensors
  (+ vocab.txt, tokenizer_config.json). Pickled `pytorch_model.bin` files are refused:
  unpickling runs arbitrary code.

`WEIGHT_NAMES` is the one table from checkpoint names to our parameter names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import mindspore as ms
import numpy as np
from mindspore import Tensor
from mindspore import dtype as mstype
from safetensors import SafetensorError, safe_open

from bert_squad import settings
from bert_squad.model.config import BertConfig
from bert_squad.metadata import sha256_file
from bert_squad.model.network import BertForQuestionAnswering

ZOO = "mindspore_zoo"
HUGGING_FACE = "hugging_face"

# (our parameter, zoo checkpoint name, Hugging Face name); "{i}" is the encoder layer.
# Zoo names are those of the SQuAD training net (BertSquad -> BertSquadModel ->
# BertModel); networks built for export drop the leading "bert.", and Hugging Face
# BertModel checkpoints drop theirs, so both prefixes are optional when reading.
WEIGHT_NAMES: Tuple[Tuple[str, str, str], ...] = (
    ("bert.embeddings.word_embeddings",
     "bert.bert.bert_embedding_lookup.embedding_table",
     "bert.embeddings.word_embeddings.weight"),
    ("bert.embeddings.position_embeddings",
     "bert.bert.bert_embedding_postprocessor.full_position_embedding.embedding_table",
     "bert.embeddings.position_embeddings.weight"),
    ("bert.embeddings.token_type_embeddings",
     "bert.bert.bert_embedding_postprocessor.token_type_embedding.embedding_table",
     "bert.embeddings.token_type_embeddings.weight"),
    ("bert.embeddings.layer_norm.gamma",
     "bert.bert.bert_embedding_postprocessor.layernorm.gamma",
     "bert.embeddings.LayerNorm.weight"),
    ("bert.embeddings.layer_norm.beta",
     "bert.bert.bert_embedding_postprocessor.layernorm.beta",
     "bert.embeddings.LayerNorm.bias"),
    *(
        (f"bert.encoder.layer.{{i}}.attention.self_attention.{ours}.{p}",
         f"bert.bert.bert_encoder.layers.{{i}}.attention.attention.{zoo}.{p}",
         f"bert.encoder.layer.{{i}}.attention.self.{ours}.{p}")
        for ours, zoo in (("query", "query_layer"), ("key", "key_layer"), ("value", "value_layer"))
        for p in ("weight", "bias")
    ),
    ("bert.encoder.layer.{i}.attention.output.dense.weight",
     "bert.bert.bert_encoder.layers.{i}.attention.output.dense.weight",
     "bert.encoder.layer.{i}.attention.output.dense.weight"),
    ("bert.encoder.layer.{i}.attention.output.dense.bias",
     "bert.bert.bert_encoder.layers.{i}.attention.output.dense.bias",
     "bert.encoder.layer.{i}.attention.output.dense.bias"),
    ("bert.encoder.layer.{i}.attention.output.layer_norm.gamma",
     "bert.bert.bert_encoder.layers.{i}.attention.output.layernorm.gamma",
     "bert.encoder.layer.{i}.attention.output.LayerNorm.weight"),
    ("bert.encoder.layer.{i}.attention.output.layer_norm.beta",
     "bert.bert.bert_encoder.layers.{i}.attention.output.layernorm.beta",
     "bert.encoder.layer.{i}.attention.output.LayerNorm.bias"),
    ("bert.encoder.layer.{i}.intermediate.dense.weight",
     "bert.bert.bert_encoder.layers.{i}.intermediate.weight",
     "bert.encoder.layer.{i}.intermediate.dense.weight"),
    ("bert.encoder.layer.{i}.intermediate.dense.bias",
     "bert.bert.bert_encoder.layers.{i}.intermediate.bias",
     "bert.encoder.layer.{i}.intermediate.dense.bias"),
    ("bert.encoder.layer.{i}.output.dense.weight",
     "bert.bert.bert_encoder.layers.{i}.output.dense.weight",
     "bert.encoder.layer.{i}.output.dense.weight"),
    ("bert.encoder.layer.{i}.output.dense.bias",
     "bert.bert.bert_encoder.layers.{i}.output.dense.bias",
     "bert.encoder.layer.{i}.output.dense.bias"),
    ("bert.encoder.layer.{i}.output.layer_norm.gamma",
     "bert.bert.bert_encoder.layers.{i}.output.layernorm.gamma",
     "bert.encoder.layer.{i}.output.LayerNorm.weight"),
    ("bert.encoder.layer.{i}.output.layer_norm.beta",
     "bert.bert.bert_encoder.layers.{i}.output.layernorm.beta",
     "bert.encoder.layer.{i}.output.LayerNorm.bias"),
    ("qa_outputs.weight", "bert.dense1.weight", "qa_outputs.weight"),
    ("qa_outputs.bias", "bert.dense1.bias", "qa_outputs.bias"),
)
_OPTIONAL_PREFIX = "bert."
HEAD_WEIGHTS = ("qa_outputs.weight", "qa_outputs.bias")  # the span head, absent from pre-trained encoders
# Encoder layer index inside a checkpoint name, to tell a config with the wrong depth.
_LAYER_INDEX = {ZOO: re.compile(r"bert_encoder\.layers\.(\d+)\."), HUGGING_FACE: re.compile(r"encoder\.layer\.(\d+)\.")}
HF_WEIGHTS_FILE = "model.safetensors"
HF_CONFIG_FILE = "config.json"
HF_VOCAB_FILE = "vocab.txt"
HF_TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read into the network, and why."""


def weight_names(num_layers: int) -> List[Tuple[str, str, str]]:
    """WEIGHT_NAMES with the layer rows repeated for layers 0..num_layers-1."""
    rows = []
    for row in WEIGHT_NAMES:
        if "{i}" in row[0]:
            rows.extend(tuple(name.format(i=i) for name in row) for i in range(num_layers))
        else:
            rows.append(row)
    return rows


@dataclass
class LoadedCheckpoint:
    origin: str  # ZOO or HUGGING_FACE
    config: BertConfig
    weights: Dict[str, np.ndarray]  # our parameter name -> float32 array
    source: Path  # the weights file
    sha256: str
    ignored: List[str] = field(default_factory=list)  # checkpoint entries not used
    vocab_file: Optional[Path] = None  # shipped with a Hugging Face folder
    do_lower_case: Optional[bool] = None  # from tokenizer_config.json, when present

    @property
    def parameter_count(self) -> int:
        return int(sum(w.size for w in self.weights.values()))

    def summary(self) -> str:
        """What was loaded, for the export tool to print."""
        groups: Dict[str, List[str]] = {}
        for name in self.ignored:  # optimizer moments come by the hundred: count them
            groups.setdefault(name.split(".", 1)[0], []).append(name)
        ignored = ", ".join(
            f"{head}.* ({len(names)})" if len(names) > 3 else ", ".join(names)
            for head, names in sorted(groups.items())
        )
        return (
            f"loaded {len(self.weights)} tensors, {self.parameter_count:,} parameters "
            f"({self.origin}) from {self.source}\n"
            f"sha256 {self.sha256}\n"
            f"ignored {len(self.ignored)} entries: {ignored or 'none'}"
        )


def load_checkpoint(
    path: Union[str, Path],
    config: Optional[BertConfig] = None,
    expected_sha256: Optional[str] = None,
    head_optional: bool = False,
) -> LoadedCheckpoint:
    """Read a zoo .ckpt file or a Hugging Face folder.

    `config` applies to zoo checkpoints only (a Hugging Face folder carries its own).
    The Hub SQuAD checkpoint is recognised by its file name and its sha256 verified.
    `head_optional`: a checkpoint without the QA head (a pre-trained encoder, for fine-tuning) is
    accepted; its `weights` then lack HEAD_WEIGHTS.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    is_folder = path.is_dir()
    if is_folder and config is not None:
        raise CheckpointError(
            f"{path} is a Hugging Face folder; its {HF_CONFIG_FILE} is the configuration, "
            "do not pass another one"
        )
    weights_file = _weights_file(path)
    if expected_sha256 is None and path.name == settings.HUB_CHECKPOINT_NAME:
        expected_sha256 = settings.HUB_CHECKPOINT_SHA256
    sha256 = sha256_file(weights_file)
    if expected_sha256 is not None and sha256 != expected_sha256.lower():
        raise CheckpointError(
            f"{weights_file} has sha256 {sha256}, expected {expected_sha256.lower()}: the file is "
            "damaged, incomplete or a different checkpoint; download it again"
        )
    if is_folder:
        return _load_hf_folder(path, sha256, head_optional)
    return _load_zoo(path, config or BertConfig(), sha256, head_optional)


def _weights_file(path: Path) -> Path:
    """The file holding the weights; pickles are refused by name, before any reading."""
    if path.is_dir():
        weights_file = path / HF_WEIGHTS_FILE
        if weights_file.is_file():
            return weights_file
        pickled = sorted(path.glob("*.bin"))
        if pickled:
            raise CheckpointError(_PICKLE_REFUSAL.format(path=pickled[0]))
        raise CheckpointError(f"{path} has no {HF_WEIGHTS_FILE}")
    if path.suffix == ".ckpt":
        return path
    if path.suffix in (".bin", ".pt", ".pth", ".pkl"):
        raise CheckpointError(_PICKLE_REFUSAL.format(path=path))
    raise CheckpointError(
        f"{path} is neither a MindSpore .ckpt file nor a Hugging Face model folder "
        f"(a folder with {HF_CONFIG_FILE} and {HF_WEIGHTS_FILE})"
    )


_PICKLE_REFUSAL = (
    "{path} is a pickled PyTorch file; loading it could run arbitrary code, so it is refused. "
    "Convert the model to safetensors where you trust the file, e.g. "
    "BertForQuestionAnswering.from_pretrained(folder).save_pretrained(out, safe_serialization=True), "
    "and pass the new folder"
)


def _load_zoo(path: Path, config: BertConfig, sha256: str, head_optional: bool) -> LoadedCheckpoint:
    wanted = {c for row in weight_names(config.num_hidden_layers) for c in _candidates(row[1])}
    seen: List[str] = []

    def keep(name: str) -> bool:
        seen.append(name)
        return name in wanted

    try:
        params = ms.load_checkpoint(str(path), choice_func=keep)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a readable MindSpore checkpoint: {exc}") from None
    arrays = {name: p.asnumpy() for name, p in params.items()}
    return _map_weights(ZOO, path, sha256, config, arrays, seen, column=1, head_optional=head_optional)


def _load_hf_folder(folder: Path, sha256: str, head_optional: bool) -> LoadedCheckpoint:
    config_file = folder / HF_CONFIG_FILE
    if not config_file.is_file():
        raise CheckpointError(f"{folder} has no {HF_CONFIG_FILE}")
    config = BertConfig.from_hf_config_file(config_file)
    wanted = {c for row in weight_names(config.num_hidden_layers) for c in _candidates(row[2])}
    weights_file = folder / HF_WEIGHTS_FILE
    arrays: Dict[str, np.ndarray] = {}
    try:
        with safe_open(str(weights_file), framework="numpy") as f:
            seen = list(f.keys())
            for name in seen:
                if name in wanted:
                    arrays[name] = f.get_tensor(name)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights_file} is not a readable safetensors file: {exc}") from None
    except TypeError as exc:  # e.g. bfloat16, which numpy cannot hold
        raise CheckpointError(
            f"{weights_file} holds a tensor type numpy cannot read ({exc}); save it as float32"
        ) from None
    loaded = _map_weights(HUGGING_FACE, weights_file, sha256, config, arrays, seen, column=2,
                          head_optional=head_optional)
    vocab = folder / HF_VOCAB_FILE
    loaded.vocab_file = vocab if vocab.is_file() else None
    tokenizer_config = folder / HF_TOKENIZER_CONFIG_FILE
    if tokenizer_config.is_file():
        try:
            lower = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("do_lower_case")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            raise CheckpointError(f"{tokenizer_config} is not a JSON object: {exc}") from None
        loaded.do_lower_case = None if lower is None else bool(lower)
    return loaded


def _candidates(name: str) -> Tuple[str, ...]:
    """A table name and, when it starts with the optional prefix, the name without it."""
    if name.startswith(_OPTIONAL_PREFIX):
        return name, name[len(_OPTIONAL_PREFIX):]
    return (name,)


def _map_weights(
    origin: str,
    source: Path,
    sha256: str,
    config: BertConfig,
    arrays: Dict[str, np.ndarray],
    seen: List[str],
    column: int,
    head_optional: bool = False,
) -> LoadedCheckpoint:
    """Rename checkpoint arrays to our names; every weight must be present."""
    weights: Dict[str, np.ndarray] = {}
    missing: List[str] = []
    used = set()
    for row in weight_names(config.num_hidden_layers):
        name = row[column]
        for candidate in _candidates(name):
            if candidate in arrays:
                weights[row[0]] = np.asarray(arrays[candidate], dtype=np.float32)
                used.add(candidate)
                break
        else:
            if not (head_optional and row[0] in HEAD_WEIGHTS):
                missing.append(name)
    depth = _checkpoint_depth(origin, seen)
    if depth and depth != config.num_hidden_layers:
        raise CheckpointError(
            f"{source} has {depth} encoder layers but the config says {config.num_hidden_layers}; "
            + _config_hint(origin)
        )
    if missing:
        hint = ""
        if origin == HUGGING_FACE and any(m.startswith("qa_outputs.") for m in missing):
            hint = " (no question-answering head: is this a BertForQuestionAnswering model?)"
        raise CheckpointError(
            f"{source} lacks {len(missing)} model weights{hint}: {', '.join(missing)}"
        )
    return LoadedCheckpoint(
        origin=origin,
        config=config,
        weights=weights,
        source=source,
        sha256=sha256,
        ignored=[name for name in seen if name not in used],
    )


def _checkpoint_depth(origin: str, names: List[str]) -> int:
    layers = [int(m.group(1)) for m in map(_LAYER_INDEX[origin].search, names) if m]
    return max(layers) + 1 if layers else 0


def _config_hint(origin: str) -> str:
    if origin == ZOO:
        return "pass the matching configuration (bert-squad-export --config FILE.json)"
    return f"the folder's {HF_CONFIG_FILE} does not match its weights"


def load_into_network(net, checkpoint: LoadedCheckpoint) -> None:
    """Copy the weights into `net` (a network.BertForQuestionAnswering of the same config)."""
    params = dict(net.parameters_and_names())
    unknown = sorted(set(checkpoint.weights) - set(params))
    unset = sorted(set(params) - set(checkpoint.weights))
    if unknown or unset:
        raise CheckpointError(f"network and weight table disagree: extra {unknown}, unset {unset}")
    wrong = [
        f"{name}: checkpoint {tuple(checkpoint.weights[name].shape)}, network {tuple(p.shape)}"
        for name, p in params.items()
        if tuple(checkpoint.weights[name].shape) != tuple(p.shape)
    ]
    if wrong:
        raise CheckpointError(
            f"{checkpoint.source} does not fit the config ({'; '.join(wrong)}); "
            + _config_hint(checkpoint.origin)
        )
    for name, p in params.items():
        p.set_data(Tensor(checkpoint.weights[name]))


def build_network(checkpoint: LoadedCheckpoint, compute_dtype: str = "float32", lite_only: bool = False):
    """A BertForQuestionAnswering in inference mode holding the checkpoint's weights."""
    net = BertForQuestionAnswering(checkpoint.config, getattr(mstype, compute_dtype), lite_only)
    load_into_network(net, checkpoint)
    net.set_train(False)
    return net

