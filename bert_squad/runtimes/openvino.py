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

import functools
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Sequence, Tuple, Union

import numpy as np

from bert_squad import settings
from bert_squad.model.config import BertConfig
from bert_squad.runtimes.base import ExportFailed, Scorer, Scores
from bert_squad.runtimes.batching import run_windows, zero_pad

NAME = "openvino"
DEFAULT_FOR = ("bf16", "int8")
CPU_ONLY = True
ONE_MODEL = True
MINDIR = False
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
PRECISIONS = tuple(INFERENCE_PRECISION)
# fp32 OpenVINO vs the MindSpore network at export, per unit of the largest score (at least 1): measured ~1e-6 on the
# oracle and on MiniLM (the same sums in another order); a wrong graph is off by far more.
FP32_TOLERANCE = 1e-4
# Reduced precision is refused when its scores correlate less than this with fp32's (median over the windows):
# a broken quantization, not rounding. Measured: > 0.999 for bf16 and int8 on the real QA model. The share of
# windows that keep their best start and end is recorded too, but on random weights (the benchmark's) its scores are
# flat enough for rounding to move the maximum, so it is no test of a broken model.
MIN_CORRELATION = 0.9

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
                token_type_id: np.ndarray) -> Scores:
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


def model_files(buckets: Sequence[int]) -> Dict[int, str]:
    return {bucket: MODEL_FILE for bucket in buckets}


def all_files(model_files: Iterable[str]) -> Tuple[str, ...]:
    """The IRs and the weights file beside each (metadata names it only through model_sha256)."""
    names = set(model_files)
    return tuple(sorted(names | {str(Path(name).with_suffix(Path(WEIGHTS_FILE).suffix)) for name in names}))


def check_engine() -> None:
    import openvino  # noqa: F401 - pip install openvino (setup.cfg [server])


def declare_models(meta: Any, context: Mapping) -> Dict[int, Any]:
    return {}  # the model is this runtime's own, not Serving's


def open_scorer(folder: Path, meta: Any, context: Mapping, declared: Mapping[int, Any]) -> Scorer:
    """score_windows over the version's IR, warmed up at every length step, on the worker's threads and cores."""
    model = OpenVinoModel(folder / meta.model_files[settings.MAX_SEQ_LENGTH], meta.precision, context["thread_num"],
                          context.get("thread_affinity_core_list", ()), step=settings.OPENVINO_LENGTH_STEP,
                          warm_up=True)
    return functools.partial(score_windows, model)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two score rows; 1 when both are constant (a one-token window)."""
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 1.0
    return float(np.corrcoef(a, b)[0, 1])


def write_model_files(job, buckets: Sequence[int]) -> Dict[str, Any]:
    """The IR of job.precision built from the checkpoint's weights (int8: calibrated on real SQuAD windows), checked
    against the MindSpore network; returns the metadata fields it adds (calibration, agreement). fp32 must compute
    what the network computes (at several exact lengths); bf16 and int8 are expected to differ a little, so their
    check measures how often the best start and end of real windows stay those of fp32 (`agreement`)."""
    precision, calibration = job.precision, job.calibration
    wanted = (calibration.windows if precision == "int8" else 0) + settings.AGREEMENT_WINDOWS
    no_file = precision == "bf16" and not calibration.squad_file.is_file()  # bf16 then checks on synthetic windows
    real = [] if precision == "fp32" or no_file else job.squad_windows(wanted)
    split = calibration.windows if precision == "int8" else 0
    synthetic = [job.inputs(max(job.batch_size, 2), n, seed=n) for n in job.verify_lengths]

    def network(*arrays):
        """The network's scores at the arrays' length, run padded to MAX_SEQ_LENGTH: padding is masked out, and
        one shape is compiled once instead of once per window length."""
        length = arrays[0].shape[1]
        padded = (np.pad(a, ((0, 0), (0, settings.MAX_SEQ_LENGTH - length))) for a in arrays)
        return [scores[:, :length] for scores in job.network(*padded)]

    try:
        extra = _write_and_check(job.weights, job.config, job.staging, precision, network, real[split:] or synthetic,
                                 synthetic, real[:split], os.cpu_count() or 1, job.log)
    except RuntimeError as exc:  # OpenVINO's and NNCF's errors too
        raise ExportFailed(str(exc)) from None
    if "calibration" in extra:
        extra["calibration"].update(file=str(calibration.squad_file.resolve()), seed=calibration.seed)
    return extra


def _write_and_check(weights, config, folder: Path, precision: str, network: Callable, check_windows: Sequence[Window],
                     synthetic_windows: Sequence[Window], calibration_windows: Sequence[Window],
                     threads: int, log: Callable[[str], None] = print) -> dict:
    """Write the IR of `precision` into `folder`, check it against `network` (the MindSpore network as a
    function of numpy inputs) and return the metadata fields it adds (calibration, agreement)."""
    model = build_model(weights, config)
    extra: dict = {}
    if precision == "int8":
        model, seconds = quantize(model, calibration_windows, log)
        extra["calibration"] = {"windows": len(calibration_windows), "seconds": round(seconds, 1)}
    path = save_model(model, folder)
    compiled = OpenVinoModel(path, precision, threads)
    if precision == "fp32":
        difference, largest = 0.0, 1.0
        for window in synthetic_windows:
            valid = window[1] == 1
            for actual, expected in zip(compiled.predict(*window), network(*window)):
                difference = max(difference, float(np.abs(actual - expected)[valid].max()))
                largest = max(largest, float(np.abs(expected[valid]).max()))
        if not difference <= FP32_TOLERANCE * largest:
            raise RuntimeError(f"{path.name} computes scores in OpenVINO up to {difference:.3g} away from the network "
                               f"(tolerance {FP32_TOLERANCE} x largest score {largest:.3g}); the export is broken, "
                               "please report it")
        log(f"OpenVINO fp32 at lengths {', '.join(str(w[0].shape[1]) for w in synthetic_windows)}: verified "
            f"(max difference {difference:.2g})")
        return extra
    started = time.perf_counter()
    same, differences, correlations = 0, [], []
    for window in check_windows:
        actual, expected = compiled.predict(*window), network(*window)
        valid = window[1][0] == 1
        same += all(int(a.argmax()) == int(e.argmax()) for a, e in zip(actual, expected))
        differences.append(max(float(np.abs(a - e).max()) for a, e in zip(actual, expected)))
        correlations.append(min(_correlation(a[0][valid], e[0][valid]) for a, e in zip(actual, expected)))
    share, correlation = same / len(check_windows), float(np.median(correlations))
    extra["agreement"] = {"windows": len(check_windows), "same_best_start_and_end": round(share, 4),
                          "median_score_correlation": round(correlation, 5),
                          "max_score_difference": round(max(differences), 4),
                          "median_score_difference": round(float(np.median(differences)), 4)}
    log(f"OpenVINO {precision} vs fp32 on {len(check_windows)} windows: best start and end unchanged in "
        f"{100 * share:.1f} %, score correlation {correlation:.4f}, difference median {np.median(differences):.3g}, "
        f"max {max(differences):.3g} ({time.perf_counter() - started:.1f} s)")
    if not correlation >= MIN_CORRELATION:
        raise RuntimeError(f"the {precision} model's scores correlate only {correlation:.3f} with fp32's (median over "
                           f"{len(check_windows)} windows); the export is broken, please report it")
    return extra
