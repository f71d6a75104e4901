"""BERT for extractive question answering, in MindSpore.

Post-LN BERT (Devlin et al. 2019) with a two-output span head, written so that one
class reproduces both the MindSpore model zoo SQuAD network (official/nlp/bert r1.5)
and Hugging Face BertForQuestionAnswering: the numerics that differ between them
(LayerNorm epsilon, GELU form, span scoring) come from `BertConfig`.

Inputs are int32 [batch, seq]: input_ids, input_mask (1 = real token, 0 = padding),
token_type_id. Outputs are float32 [batch, seq]: start and end scores.

Scoring "log_softmax" follows the zoo, which ranks spans by log-softmax over the
sequence positions, with one deliberate difference: padding positions are left out
of the softmax, so a window's scores do not depend on the sequence-length bucket
it was padded to (the zoo always padded to 384, and included the padding). Padding
positions then score about -1e9. Scoring "logits" returns the raw head outputs.

Parameter names mirror Hugging Face modeling_bert; `checkpoint.py` maps zoo and Hugging
Face checkpoint names onto them. Matmuls run in `compute_dtype` (float16 for GPU/Ascend
exports, as the zoo trained); embeddings, LayerNorm, softmax and scores stay float32.

GELU: MindSpore computes `ops.GeLU` as the tanh approximation whatever its attributes, but
MindSpore Lite (which runs every CPU export) reads its `approximate` attribute and, when it is
missing, computes the exact erf form. So the tanh form is a GeLU marked approximate (the same
function in both), the erf form is the erf formula, or, in exports that only Lite runs
(`lite_only`), a GeLU marked exact: Lite computes it in one fused kernel, while its Erf op is
scalar and took ~10 % of BERT-base time.

Every shape but the batch is computed from the inputs at run time (positions by a
cumulative sum, reshapes with -1 for the sequence), so a MindIR exported at one length
holds no sequence-length constant and MindSpore Lite can resize it to any length
(`bert_squad/runtimes/lite_direct.py`). `arange(seq)` or `ones_like` would be folded into
constants of the export length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mindspore import Parameter, nn, ops
from mindspore import dtype as mstype
from mindspore.common.initializer import Normal, initializer

from bert_squad.model.config import BertConfig

# Added to attention scores of padding keys (zoo and original BERT value).
ATTENTION_MASK_PENALTY = -10000.0
# Added to span scores of padding positions before the log-softmax: exp() of it is
# exactly 0 in float32, so padding cannot change the scores of real tokens.
SCORE_MASK_PENALTY = -1e9
INIT_STD = 0.02  # initial weights for fresh (untrained) networks
INV_SQRT2 = 1.0 / math.sqrt(2.0)


@dataclass(frozen=True)
class Dropouts:
    """Dropout probabilities of fine-tuning (BERT's places: embeddings, attention probabilities, the output of
    each attention and feed-forward block before its residual sum)."""

    hidden: float = 0.0
    attention: float = 0.0


NO_DROPOUT = Dropouts()


def _weight(shape) -> Parameter:
    return Parameter(initializer(Normal(INIT_STD), shape, mstype.float32))


class Dense(nn.Cell):
    """y = x @ weight.T + bias on x [batch, seq, in]; weight stored [out, in] as in both checkpoint formats."""

    def __init__(self, in_features: int, out_features: int, compute_dtype=mstype.float32):
        super().__init__()
        self.out_features = out_features
        self.compute_dtype = compute_dtype
        self.weight = _weight((out_features, in_features))
        self.bias = Parameter(initializer("zeros", (out_features,), mstype.float32))
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        shape = x.shape
        x2d = x.reshape((-1, shape[-1])).astype(self.compute_dtype)
        y = self.matmul(x2d, self.weight.astype(self.compute_dtype)).astype(mstype.float32)
        return (y + self.bias).reshape((shape[0], -1, self.out_features))


class GELU(nn.Cell):
    """The checkpoint's GELU form (config.hidden_act), computed the same by MindSpore and Lite (module docstring)."""

    def __init__(self, hidden_act: str, lite_only: bool = False):
        super().__init__()
        self.formula = hidden_act == "gelu_erf" and not lite_only
        if self.formula:
            self.erf = ops.Erf()
        else:
            self.gelu = ops.GeLU()
            self.gelu.add_prim_attr("approximate", hidden_act == "gelu_tanh")

    def construct(self, x):
        if self.formula:
            return x * 0.5 * (1.0 + self.erf(x * INV_SQRT2))
        return self.gelu(x)


class BertEmbeddings(nn.Cell):
    def __init__(self, config: BertConfig, dropout: float):
        super().__init__()
        h = config.hidden_size
        self.word_embeddings = _weight((config.vocab_size, h))
        self.position_embeddings = _weight((config.max_position_embeddings, h))
        self.token_type_embeddings = _weight((config.type_vocab_size, h))
        self.layer_norm = nn.LayerNorm((h,), epsilon=config.layer_norm_eps)
        self.dropout = nn.Dropout(p=dropout)

    def construct(self, input_ids, token_type_id):
        positions = ops.cumsum(input_ids * 0 + 1, 1) - 1  # 0, 1, ..., seq-1 per row, computed at run time
        x = (
            ops.gather(self.word_embeddings, input_ids, 0)
            + ops.gather(self.token_type_embeddings, token_type_id, 0)
            + ops.gather(self.position_embeddings, positions, 0)
        )
        return self.dropout(self.layer_norm(x))


class BertSelfAttention(nn.Cell):
    def __init__(self, config: BertConfig, compute_dtype, dropout: float):
        super().__init__()
        h = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        self.scale = 1.0 / math.sqrt(config.head_size)
        self.compute_dtype = compute_dtype
        self.query = Dense(h, h, compute_dtype)
        self.key = Dense(h, h, compute_dtype)
        self.value = Dense(h, h, compute_dtype)
        self.matmul_qk = ops.BatchMatMul(transpose_b=True)
        self.matmul_pv = ops.BatchMatMul()
        self.softmax = nn.Softmax(axis=-1)
        self.dropout = nn.Dropout(p=dropout)

    def split_heads(self, x):
        """[batch, seq, hidden] -> [batch, heads, seq, head_size]"""
        return x.reshape((x.shape[0], -1, self.num_heads, self.head_size)).transpose((0, 2, 1, 3))

    def construct(self, hidden, key_penalty):
        dt = self.compute_dtype
        # Scaling the queries, not the [heads, seq, seq] scores, is seq/hidden-x fewer multiplies; for a head
        # size that is a power of 4 (BERT-base: 64, scale 1/8) it is exact, so the scores are bit-identical.
        q = self.split_heads(self.query(hidden) * self.scale).astype(dt)
        k = self.split_heads(self.key(hidden)).astype(dt)
        v = self.split_heads(self.value(hidden)).astype(dt)
        scores = self.matmul_qk(q, k).astype(mstype.float32) + key_penalty
        probs = self.dropout(self.softmax(scores)).astype(dt)
        context = self.matmul_pv(probs, v).astype(mstype.float32)
        return context.transpose((0, 2, 1, 3)).reshape((context.shape[0], -1, self.num_heads * self.head_size))


class BertResidualOutput(nn.Cell):
    """Project, add the block input back, normalise (post-LN)."""

    def __init__(self, in_features: int, config: BertConfig, compute_dtype, dropout: float):
        super().__init__()
        self.dense = Dense(in_features, config.hidden_size, compute_dtype)
        self.layer_norm = nn.LayerNorm((config.hidden_size,), epsilon=config.layer_norm_eps)
        self.dropout = nn.Dropout(p=dropout)

    def construct(self, x, residual):
        return self.layer_norm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Cell):
    def __init__(self, config: BertConfig, compute_dtype, dropout: "Dropouts"):
        super().__init__()
        self.self_attention = BertSelfAttention(config, compute_dtype, dropout.attention)
        self.output = BertResidualOutput(config.hidden_size, config, compute_dtype, dropout.hidden)

    def construct(self, hidden, key_penalty):
        return self.output(self.self_attention(hidden, key_penalty), hidden)


class BertIntermediate(nn.Cell):
    def __init__(self, config: BertConfig, compute_dtype, lite_only: bool):
        super().__init__()
        self.dense = Dense(config.hidden_size, config.intermediate_size, compute_dtype)
        self.act = GELU(config.hidden_act, lite_only)

    def construct(self, x):
        return self.act(self.dense(x))


class BertLayer(nn.Cell):
    def __init__(self, config: BertConfig, compute_dtype, lite_only: bool, dropout: "Dropouts"):
        super().__init__()
        self.attention = BertAttention(config, compute_dtype, dropout)
        self.intermediate = BertIntermediate(config, compute_dtype, lite_only)
        self.output = BertResidualOutput(config.intermediate_size, config, compute_dtype, dropout.hidden)

    def construct(self, hidden, key_penalty):
        attended = self.attention(hidden, key_penalty)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Cell):
    def __init__(self, config: BertConfig, compute_dtype, lite_only: bool, dropout: "Dropouts"):
        super().__init__()
        self.layer = nn.CellList([BertLayer(config, compute_dtype, lite_only, dropout)
                                  for _ in range(config.num_hidden_layers)])

    def construct(self, hidden, key_penalty):
        for layer in self.layer:
            hidden = layer(hidden, key_penalty)
        return hidden


class BertModel(nn.Cell):
    """Embeddings + encoder; no pooler (question answering reads every position)."""

    def __init__(self, config: BertConfig, compute_dtype, lite_only: bool, dropout: "Dropouts"):
        super().__init__()
        self.embeddings = BertEmbeddings(config, dropout.hidden)
        self.encoder = BertEncoder(config, compute_dtype, lite_only, dropout)

    def construct(self, input_ids, input_mask, token_type_id):
        # [batch, 1, 1, seq]: the same penalty for every head and every query position.
        key_penalty = (1.0 - input_mask.astype(mstype.float32)) * ATTENTION_MASK_PENALTY
        key_penalty = key_penalty.expand_dims(1).expand_dims(1)
        return self.encoder(self.embeddings(input_ids, token_type_id), key_penalty)


class BertForQuestionAnswering(nn.Cell):
    """`lite_only`: for an export only MindSpore Lite runs (GELU, module docstring); MindSpore itself would
    compute its erf GELU as tanh. `dropout`: for fine-tuning (bert_squad/training); it acts only in training
    mode (set_train(True)), so a network built for export or inference computes the same with or without it."""

    def __init__(self, config: BertConfig, compute_dtype=mstype.float32, lite_only: bool = False,
                 dropout: Dropouts = NO_DROPOUT):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, compute_dtype, lite_only, dropout)
        self.qa_outputs = Dense(config.hidden_size, 2, compute_dtype)
        self.log_softmax = config.scoring == "log_softmax"

    def construct(self, input_ids, input_mask, token_type_id):
        logits = self.qa_outputs(self.bert(input_ids, input_mask, token_type_id))
        start, end = logits[:, :, 0], logits[:, :, 1]
        if self.log_softmax:
            padding_penalty = (1.0 - input_mask.astype(mstype.float32)) * SCORE_MASK_PENALTY
            start = ops.log_softmax(start + padding_penalty, axis=-1)
            end = ops.log_softmax(end + padding_penalty, axis=-1)
        return start, end

