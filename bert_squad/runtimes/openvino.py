"""The "openvino" runtime: our BERT QA network as an OpenVINO model, on CPU in fp32, bf16 or int8.

MindSpore Lite 2.0 has no bf16 and no x86 SIMD int8 matmul, so reduced precision on CPU runs in
OpenVINO. The model is built node by node from the checkpoint's weights (build_model), computing
what bert_squad/model/network.py computes: the same embeddings and positions, LayerNorm epsilon,
GELU form, attention penalty, query scaling and masked log-softmax scores. No ONNX on the way:
MindSpore 2.0's ONNX exporter has no CumSum (the run-time positions of the network).

Every dimension but the hidden sizes is dynamic, so each call runs at its windows' exact length,
as lite_direct does. Precision: fp32 and bf16 are one fp32 IR compiled with another inference
precision hint; int8 is an IR with FakeQuantize nodes placed and calibrated by NNCF (quantize).
No MindSpore import here: the servable's worker imports this module.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence, Tuple, Union

import numpy as np

from bert_squad import settings
from bert_squad.model.config import BertConfig
from bert_squad.runtimes.batching import run_windows, zero_pad

MODEL_FILE = "bert.xml"  # OpenVINO IR; its weights are in bert.bin beside it
WEIGHTS_FILE = "bert.bin"
INPUT_NAMES = ("input_ids", "input_mask", "token_type_id")
OUTPUT_NAMES = ("start", "end")
# network.py's constants, repeated here because network.py imports MindSpore (checked equal in the tests).
ATTENTION_MASK_PENALTY = -10000.0
SCORE_MASK_PENALTY = -1e9
# OpenVINO's inference precision per export precision: int8 runs its FakeQuantize-marked matmuls in int8
# and the rest in fp32.
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}

Window = Tuple[np.ndarray, np.ndarray, np.ndarray]  # input_ids, input_mask, token_type_id, int32 [batch, length]


def build_model(weights: Mapping[str, np.ndarray], config: BertConfig):
    """An openvino.Model of network.BertForQuestionAnswering holding `weights` (network parameter names,
    as checkpoint.LoadedCheckpoint.weights), inputs int32 [batch, length], outputs float32 [batch, length]."""
    import openvino as ov
    import openvino.opset13 as op

    def const(value, dtype=np.float32):
        return op.constant(np.asarray(value, dtype))

    def weight(name):
        return const(weights[name])

    def dense(x, prefix):
        return op.add(op.matmul(x, weight(prefix + ".weight"), False, True), weight(prefix + ".bias"))

    def layer_norm(x, prefix):
        normed = op.mvn(x, const([-1], np.int64), True, config.layer_norm_eps, "inside_sqrt")
        return op.add(op.multiply(normed, weight(prefix + ".gamma")), weight(prefix + ".beta"))

    ids, mask, segment = (op.parameter([-1, -1], ov.Type.i32, name=name) for name in INPUT_NAMES)
    length = op.gather(op.shape_of(ids, "i32"), const(1, np.int32), const(0, np.int32))
    positions = op.range(const(0, np.int32), length, const(1, np.int32), "i32")
    embeddings = op.add(op.add(op.gather(weight("bert.embeddings.word_embeddings"), ids, const(0, np.int32)),
                               op.gather(weight("bert.embeddings.token_type_embeddings"), segment,
                                         const(0, np.int32))),
                        op.gather(weight("bert.embeddings.position_embeddings"), positions, const(0, np.int32)))
    hidden = layer_norm(embeddings, "bert.embeddings.layer_norm")

    padding = op.subtract(const(1.0), op.convert(mask, "f32"))  # 1 on padding positions
    key_penalty = op.unsqueeze(op.multiply(padding, const(ATTENTION_MASK_PENALTY)), const([1, 2], np.int64))
    heads, head_size = config.num_attention_heads, config.head_size
    split_shape = const([0, -1, heads, head_size], np.int64)
    merged_shape = const([0, -1, config.hidden_size], np.int64)

    def split_heads(x):
        return op.transpose(op.reshape(x, split_shape, True), const([0, 2, 1, 3], np.int64))

    for i in range(config.num_hidden_layers):
        p = f"bert.encoder.layer.{i}"
        attention = p + ".attention.self_attention"
        query = split_heads(op.multiply(dense(hidden, attention + ".query"), const(1.0 / np.sqrt(head_size))))
        key, value = split_heads(dense(hidden, attention + ".key")), split_heads(dense(hidden, attention + ".value"))
        probs = op.softmax(op.add(op.matmul(query, key, False, True), key_penalty), -1)
        context = op.reshape(op.transpose(op.matmul(probs, value, False, False), const([0, 2, 1, 3], np.int64)),
                             merged_shape, True)
        hidden = layer_norm(op.add(dense(context, p + ".attention.output.dense"), hidden),
                            p + ".attention.output.layer_norm")
        inner = op.gelu(dense(hidden, p + ".intermediate.dense"),
                        "tanh" if config.hidden_act == "gelu_tanh" else "erf")
        hidden = layer_norm(op.add(dense(inner, p + ".output.dense"), hidden), p + ".output.layer_norm")

    logits = dense(hidden, "qa_outputs")
    scores = []
    for column, name in enumerate(OUTPUT_NAMES):
        score = op.gather(logits, const(column, np.int32), const(2, np.int32))
        if config.scoring == "log_softmax":
            score = op.log_softmax(op.add(score, op.multiply(padding, const(SCORE_MASK_PENALTY))), -1)
        score.output(0).get_tensor().set_names({name})
        scores.append(score)
    return ov.Model(scores, [ids, mask, segment], "bert_squad")


def save_model(model, folder: Union[str, Path]) -> Path:
    """Write the IR (MODEL_FILE + WEIGHTS_FILE) with weights kept float32 (OpenVINO would halve them)."""
    import openvino as ov

    path = Path(folder) / MODEL_FILE
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def quantize(model, windows: Sequence[Window], log: Callable[[str], None] = print):
    """The int8 model: NNCF post-training quantization (transformer preset) calibrated on `windows`
    (inputs only). Returns (model, seconds it took)."""
    import nncf

    started = time.perf_counter()
    dataset = nncf.Dataset([dict(zip(INPUT_NAMES, window)) for window in windows])
    quantized = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(windows))
    seconds = time.perf_counter() - started
    log(f"int8: NNCF calibrated on {len(windows)} windows in {seconds:.1f} s")
    return quantized, seconds


def compile_config(precision: str, threads: int, pinned: bool) -> dict:
    """CPU plugin properties: the precision's inference hint, latency mode on `threads` threads, and core
    pinning only when the worker was given its own cores."""
    if precision not in INFERENCE_PRECISION:
        raise ValueError(f"the openvino runtime runs precision fp32, bf16 or int8, got {precision!r}")
    return {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": pinned}


class OpenVinoModel:
    """A compiled IR written by `bert-squad-export --runtime openvino`; predict() at any [batch, length].

    A call runs padded (masked: the scores of the real tokens do not change) to the next multiple of `step`
    tokens, and `warm_up` runs every such length up to MAX_SEQ_LENGTH once (settings.OPENVINO_LENGTH_STEP).
    `cores`, when given, become this thread's CPU affinity before OpenVINO starts its threads, which inherit it
    (workers side by side each keep to their own cores, as lite_direct's `cores`). Calls run one at a time.
    """

    def __init__(self, path: Union[str, Path], precision: str, threads: int = 1, cores: Sequence[int] = (),
                 step: int = 1, warm_up: bool = False):
        import openvino as ov

        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.path, self.precision = Path(path), precision
        if cores:
            os.sched_setaffinity(0, set(cores))
        core = ov.Core()
        self._compiled = core.compile_model(str(self.path), "CPU", compile_config(precision, threads, bool(cores)))
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()
        self.step = step
        if warm_up:
            for length in range(step, settings.MAX_SEQ_LENGTH + step, step):
                ids = np.ones((1, length), np.int32)
                self.predict(ids, ids, np.zeros_like(ids))

    def predict(self, input_ids: np.ndarray, input_mask: np.ndarray,
                token_type_id: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(start, end) scores, float32 [batch, length], of int32 [batch, length] inputs."""
        arrays = [np.ascontiguousarray(a, np.int32) for a in (input_ids, input_mask, token_type_id)]
        if any(a.ndim != 2 or a.shape != arrays[0].shape for a in arrays) or arrays[0].size == 0:
            raise ValueError(f"the model takes three int32 [batch, length] arrays of one shape, got "
                             f"{[a.shape for a in arrays]}")
        batch, length = arrays[0].shape
        arrays = [zero_pad(a, batch, length + -length % self.step) for a in arrays]
        with self._lock:
            outputs = self._request.infer(dict(zip(INPUT_NAMES, arrays)))
            return tuple(np.array(outputs[self._compiled.output(name)][:, :length], np.float32)
                         for name in OUTPUT_NAMES)


def score_windows(model: OpenVinoModel, instances: Sequence[tuple]) -> list:
    """The model stage of the openvino runtime: bert_squad.runtimes.batching.run_windows with one "bucket" per
    distinct window length, all windows of one length in one call at exactly that length."""
    lengths = sorted({int(n) for *_, window_lengths in instances for n in np.asarray(window_lengths).reshape(-1)})
    return run_windows(list(instances), lambda length, *arrays: model.predict(*arrays), lengths)
