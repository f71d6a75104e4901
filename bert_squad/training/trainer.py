"""Fine-tuning in MindSpore: the network with dropout, the span loss, gradient accumulation and AdamW, built from
a TrainState (what a checkpoint holds) and giving one back.

Resuming is exact: the data order, the schedule, the AdamW moments and step count and the loss scaler all come
from the state, so a run resumed from a checkpoint computes what the uninterrupted run computed, bit for bit,
without dropout. With dropout it cannot be bit for bit: MindSpore 2.0's CPU Dropout kernel draws its masks
nondeterministically (two runs of one seed in two processes part after a few steps), while its deterministic
generator (UniformReal) takes ~0.9 s per attention layer of a 16 x 256 batch, and masks drawn by numpy ~1.5 s per
step; so dropout stays MindSpore's own, and a resumed run with dropout is the same recipe, not the same bits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
from mindspore import dtype as mstype

from bert_squad.model.config import BertConfig
from bert_squad.model.network import SCORE_MASK_PENALTY, BertForQuestionAnswering, Dropouts

BETA1, BETA2, EPSILON = 0.9, 0.999, 1e-8  # AdamW as PyTorch and Hugging Face use it
LOSS_SCALE_START, LOSS_SCALE_WINDOW = 2.0 ** 16, 1000  # dynamic loss scaling (fp16): halve on overflow, double after
NO_DECAY = ("bias", "layer_norm")  # parameter names AdamW does not decay (biases, LayerNorm gamma and beta)


@dataclass
class TrainState:
    """Everything a checkpoint holds: weights and AdamW moments (name -> float32 array), optimizer steps done,
    updates applied (steps minus those skipped for a float16 overflow) and the loss scaler."""

    weights: Dict[str, np.ndarray]
    adam_m: Dict[str, np.ndarray] = field(default_factory=dict)
    adam_v: Dict[str, np.ndarray] = field(default_factory=dict)
    step: int = 0
    updates: int = 0
    loss_scale: float = 1.0
    good_steps: int = 0


class SpanLoss(nn.Cell):
    """Cross-entropy of the start and end positions over each window's real tokens, weighted per window (the
    weights of one optimizer step sum to 1, padding rows weigh 0), times the loss scale."""

    def __init__(self, net: BertForQuestionAnswering):
        super().__init__()
        self.net = net

    def construct(self, input_ids, input_mask, token_type_id, start, end, weight, scale):
        start_scores, end_scores = self.net(input_ids, input_mask, token_type_id)
        penalty = (1.0 - input_mask.astype(mstype.float32)) * SCORE_MASK_PENALTY
        start_log = ops.log_softmax(start_scores + penalty, axis=-1)
        end_log = ops.log_softmax(end_scores + penalty, axis=-1)
        picked = (ops.gather_elements(start_log, 1, start.expand_dims(1)).squeeze(1)
                  + ops.gather_elements(end_log, 1, end.expand_dims(1)).squeeze(1))
        return -(picked * weight).sum() * 0.5 * scale


class AccumulateGradients(nn.Cell):
    """One micro-batch: forward and backward once, gradients added to `accumulated`; returns the scaled loss."""

    def __init__(self, loss: SpanLoss, weights: ParameterTuple, accumulated: ParameterTuple):
        super().__init__()
        self.loss = loss
        self.weights = weights
        self.accumulated = accumulated
        self.value_and_grad = ms.value_and_grad(self.loss, None, self.weights)

    def construct(self, input_ids, input_mask, token_type_id, start, end, weight, scale):
        value, grads = self.value_and_grad(input_ids, input_mask, token_type_id, start, end, weight, scale)
        for i in range(len(grads)):
            ops.assign_add(self.accumulated[i], grads[i])
        return value


class AdamW(nn.Cell):
    """Decoupled weight decay Adam with bias correction (Loshchilov & Hutter; PyTorch's AdamW) on the accumulated
    gradients, unscaled and clipped to a global norm first; clears the accumulators."""

    def __init__(self, weights: ParameterTuple, accumulated: ParameterTuple, adam_m: ParameterTuple,
                 adam_v: ParameterTuple, decay: Sequence[bool], weight_decay: float, max_grad_norm: float):
        super().__init__()
        self.weights, self.accumulated, self.adam_m, self.adam_v = weights, accumulated, adam_m, adam_v
        self.decay = tuple(decay)
        self.weight_decay = weight_decay
        self.max_grad_norm = max_grad_norm

    def construct(self, lr, unscale, correction1, correction2):
        grads = ()
        for i in range(len(self.accumulated)):
            grads = grads + (self.accumulated[i] * unscale,)
        grads = ops.clip_by_global_norm(grads, self.max_grad_norm)
        for i in range(len(self.weights)):
            g = grads[i]
            m = BETA1 * self.adam_m[i] + (1.0 - BETA1) * g
            v = BETA2 * self.adam_v[i] + (1.0 - BETA2) * g * g
            update = (m / correction1) / (ops.sqrt(v / correction2) + EPSILON)
            if self.decay[i]:
                update = update + self.weight_decay * self.weights[i]
            ops.assign(self.adam_m[i], m)
            ops.assign(self.adam_v[i], v)
            ops.assign(self.weights[i], self.weights[i] - lr * update)
            ops.assign(self.accumulated[i], ops.zeros_like(g))
        return lr


class GradientsFinite(nn.Cell):
    """Whether every accumulated gradient is finite (a float16 overflow makes some inf or nan)."""

    def __init__(self, accumulated: ParameterTuple):
        super().__init__()
        self.accumulated = accumulated

    def construct(self):
        finite = ops.isfinite(self.accumulated[0]).all()
        for i in range(1, len(self.accumulated)):
            finite = ops.logical_and(finite, ops.isfinite(self.accumulated[i]).all())
        return finite


class ClearGradients(nn.Cell):
    def __init__(self, accumulated: ParameterTuple):
        super().__init__()
        self.accumulated = accumulated

    def construct(self):
        for i in range(len(self.accumulated)):
            ops.assign(self.accumulated[i], ops.zeros_like(self.accumulated[i]))
        return True


class Trainer:
    """The training cells, built from `state` with MindSpore's generators seeded by `seed`."""

    def __init__(self, config: BertConfig, state: TrainState, seed: int, dropout: float, weight_decay: float,
                 max_grad_norm: float, compute_dtype=mstype.float32, loss_scaling: bool = False):
        ms.set_seed(seed)
        self.net = BertForQuestionAnswering(config, compute_dtype, dropout=Dropouts(dropout, dropout))
        params = self.net.trainable_params()
        names = self.names = [p.name for p in params]  # the checkpoint names: wrapping cells prefix p.name
        missing = sorted(set(names) ^ set(state.weights))
        if missing:
            raise ValueError(f"the training state does not match the network: {missing[:5]}")
        for p in params:
            p.set_data(Tensor(state.weights[p.name]))

        def moments(prefix: str, values: Dict[str, np.ndarray]) -> ParameterTuple:
            return ParameterTuple(Parameter(Tensor(values.get(n, np.zeros(p.shape, np.float32))), name=f"{prefix}.{n}")
                                  for n, p in zip(names, params))

        self.weights = ParameterTuple(params)
        self.accumulated = moments("accumulated", {})
        self.adam_m = moments("adam_m", state.adam_m)
        self.adam_v = moments("adam_v", state.adam_v)
        self.net.set_train(True)
        self.accumulate = AccumulateGradients(SpanLoss(self.net), self.weights, self.accumulated)
        decay = [not any(word in n for word in NO_DECAY) for n in names]
        self.adamw = AdamW(self.weights, self.accumulated, self.adam_m, self.adam_v, decay, weight_decay,
                           max_grad_norm)
        self.finite = GradientsFinite(self.accumulated) if loss_scaling else None
        self.clear = ClearGradients(self.accumulated)
        self.loss_scaling = loss_scaling
        self.state = TrainState(weights={}, step=state.step, updates=state.updates,
                                loss_scale=state.loss_scale if loss_scaling else 1.0, good_steps=state.good_steps)

    def step(self, micro_batches: List[Tuple[np.ndarray, ...]], lr: float) -> float:
        """One optimizer step over its micro-batches (ids, mask, segment, start, end, weight); returns its loss."""
        s = self.state
        scale = Tensor(np.float32(s.loss_scale))
        loss = 0.0
        for batch in micro_batches:
            loss += float(self.accumulate(*(Tensor(a) for a in batch), scale).asnumpy())
        if self.finite is not None and not bool(self.finite().asnumpy()):
            self.clear()
            s.loss_scale, s.good_steps = max(s.loss_scale / 2, 1.0), 0
        else:
            t = s.updates + 1
            self.adamw(Tensor(np.float32(lr)), Tensor(np.float32(1.0 / s.loss_scale)),
                       Tensor(np.float32(1 - BETA1 ** t)), Tensor(np.float32(1 - BETA2 ** t)))
            s.updates = t
            if self.loss_scaling:
                s.good_steps += 1
                if s.good_steps == LOSS_SCALE_WINDOW:
                    s.loss_scale, s.good_steps = s.loss_scale * 2, 0
        s.step += 1
        return loss / s.loss_scale if self.loss_scaling else loss

    def snapshot(self) -> TrainState:
        """The state after the steps run so far (arrays copied out of MindSpore)."""
        names = self.names
        return TrainState(
            weights={n: p.asnumpy().copy() for n, p in zip(names, self.weights)},
            adam_m={n: p.asnumpy().copy() for n, p in zip(names, self.adam_m)},
            adam_v={n: p.asnumpy().copy() for n, p in zip(names, self.adam_v)},
            step=self.state.step, updates=self.state.updates, loss_scale=self.state.loss_scale,
            good_steps=self.state.good_steps)
