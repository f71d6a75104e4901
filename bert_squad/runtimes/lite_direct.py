"""One BERT question-answering MindIR in MindSpore Lite, run at the exact length of each call.

The "lite_direct" runtime (metadata.runtime): instead of one Serving model per
sequence-length bucket, one model is resized to each window's own length, so the
weights are in memory once and no window pays for padding. Lite 2.0's Python API
exists only for CPython 3.7, so this talks through ctypes to our small C shim
(bert_squad/runtimes/native/bert_lite.cpp, built by scripts/setup.sh into .stack/shim/).

Lite's libraries find each other only by name, so the shim is loaded with
lite_lib.load_library, which takes them from the Lite lib/ folder when it is not on
LD_LIBRARY_PATH (a worker of the user's own start_servables script). A process that
has imported MindSpore (the exporter) must not load Lite beside it: MindSpore ships
another libmindspore_core.so; it scores in a child process (score_in_subprocess).
No MindSpore import here: the servable must not pay for it.
"""
from __future__ import annotations

import ctypes
import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from bert_squad import settings
from bert_squad.runtimes.base import ExportFailed, Scorer, Scores
from bert_squad.runtimes.batching import run_windows, zero_pad
from bert_squad.model.config import BertConfig
from bert_squad.runtimes.lite_lib import (LITE_LIB_ENV, REPO_ROOT, RuntimeMissing, lite_lib_dir, load_library,
                                          with_lite_on_library_path)

NAME = "lite_direct"
PRECISIONS = ("fp32",)
DEFAULT_FOR = ("fp32",)  # on CPU it answers SQuAD questions ~1.5x faster than buckets, with a third of the memory
CPU_ONLY = True
ONE_MODEL = True
MINDIR = True
MODEL_FILE = "bert.mindir"
# Lite's CPU kernels sum in another order than MindSpore's, and its tanh GELU is a cheaper approximation: on a
# seeded BERT-base the scores differ by up to 1.1e-5 (erf GELU) and 2.9e-6 (tanh GELU); on the 2-layer test models
# by ~1e-5. (Before GeLU carried its `approximate` attribute, Lite computed a tanh model's GELU as erf: 2.8e-4.)
# Allowed at export: this much per unit of the largest score magnitude (at least 1). A broken export is off by far more.
VERIFY_TOLERANCE = 1e-3
SHIM_ENV = "BERT_SQUAD_LITE_SHIM"
SHIM_FILE = REPO_ROOT / ".stack" / "shim" / "libbert_lite.so"
ERROR_BYTES = 4096  # room for Lite's error text
INPUT_NAMES = ("input_ids", "input_mask", "token_type_id")
# Lite 2.0's LayerNorm on more than one thread computes wrong values when a call holds fewer than
# about 450 of them (length x hidden size; seen up to 384); this keeps a margin.
LAYER_NORM_MIN_VALUES = 512

_INT32 = np.ctypeslib.ndpointer(np.int32, ndim=2, flags="C_CONTIGUOUS")
_FLOAT32 = np.ctypeslib.ndpointer(np.float32, ndim=2, flags="C_CONTIGUOUS")
_library: Optional[ctypes.CDLL] = None


class LiteError(RuntimeError):
    """MindSpore Lite refused a model or a call; the message carries Lite's own text."""


def min_length(config: BertConfig) -> int:
    """The shortest length a model of this config may be resized to; shorter windows run
    padded to it (padding is masked out, so the scores of the real tokens do not change).

    Works around two bugs of Lite 2.0 measured here: at length == num_attention_heads the
    Transpose + Reshape that merges the attention heads computes wrong values, and keeps doing
    so at every later length (the model is spoiled); and LayerNorm (see LAYER_NORM_MIN_VALUES).
    """
    return max(config.num_attention_heads + 1, -(-LAYER_NORM_MIN_VALUES // config.hidden_size))


def shim_path() -> Path:
    """The shim library: $BERT_SQUAD_LITE_SHIM, else the one scripts/setup.sh built."""
    configured = os.environ.get(SHIM_ENV)
    path = Path(configured) if configured else SHIM_FILE
    if not path.is_file():
        raise RuntimeMissing(
            f"the MindSpore Lite shim {path} does not exist; run scripts/setup.sh (it builds "
            f".stack/shim/libbert_lite.so), or set {SHIM_ENV} to a libbert_lite.so built from "
            "bert_squad/runtimes/native/bert_lite.cpp"
        )
    return path


def load_shim() -> ctypes.CDLL:
    """The shim and the Lite libraries under it, loaded once per process (LiteError if they cannot load)."""
    global _library
    if _library is None:
        path = shim_path()
        try:
            lib = load_library(path)
        except OSError as exc:
            raise LiteError(
                f"cannot load {path}: {exc}. Check that {lite_lib_dir()} is a complete MindSpore Lite 2.0 lib/ "
                f"folder (scripts/setup.sh builds it; {LITE_LIB_ENV} names another)"
            ) from None
        lib.bert_lite_create.restype = ctypes.c_void_p
        lib.bert_lite_create.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.c_int,
                                         ctypes.c_char_p, ctypes.c_size_t]
        lib.bert_lite_batch.restype = ctypes.c_int64
        lib.bert_lite_batch.argtypes = [ctypes.c_void_p]
        lib.bert_lite_predict.restype = ctypes.c_int
        lib.bert_lite_predict.argtypes = [ctypes.c_void_p, _INT32, _INT32, _INT32, ctypes.c_int64, ctypes.c_int64,
                                          _FLOAT32, _FLOAT32, ctypes.c_char_p, ctypes.c_size_t]
        lib.bert_lite_destroy.restype = None
        lib.bert_lite_destroy.argtypes = [ctypes.c_void_p]
        _library = lib
    return _library


class LiteModel:
    """A MindIR exported by `bert-squad-export --runtime lite_direct`, on CPU.

    predict() takes int32 [batch_size, length] inputs of any length up to the model's
    position table; the model is resized when the length changes (a few milliseconds),
    and a call shorter than `min_length` (use min_length(config)) runs padded to it.
    Ids are not range-checked here: Lite scores an out-of-range id as if its embedding
    were zero, so callers validate them (servable_glue.check_tokens does).
    `cores`, when given, binds Lite's threads to those cores (several workers side by side).
    Thread-safe: calls on one model run one at a time.
    """

    def __init__(self, path: Union[str, Path], threads: int = 1, min_length: int = 1, cores: Sequence[int] = ()):
        if threads < 1 or min_length < 1:
            raise ValueError(f"threads and min_length must be at least 1, got {threads} and {min_length}")
        path = Path(path)
        if not path.is_file():
            raise LiteError(f"model file {path} does not exist")
        self._lib = load_shim()
        error = ctypes.create_string_buffer(ERROR_BYTES)
        core_list = (ctypes.c_int * len(cores))(*cores)
        self._handle = self._lib.bert_lite_create(os.fsencode(path), threads, core_list, len(cores), error,
                                                  ERROR_BYTES)
        if not self._handle:
            raise LiteError(error.value.decode(errors="replace"))
        self.path, self.min_length = path, min_length
        self.batch_size = int(self._lib.bert_lite_batch(self._handle))

    def predict(self, input_ids: np.ndarray, input_mask: np.ndarray,
                token_type_id: np.ndarray) -> Scores:
        """(start, end) scores, float32 [batch_size, length]."""
        if not self._handle:
            raise LiteError(f"the model {self.path} was closed")
        arrays = [np.asarray(a) for a in (input_ids, input_mask, token_type_id)]
        for name, a in zip(INPUT_NAMES, arrays):
            if a.dtype != np.int32 or a.ndim != 2:
                raise LiteError(f"{name} must be int32 [batch, length], got {a.dtype} of shape {a.shape}")
        batch, length = arrays[0].shape
        if any(a.shape != (batch, length) for a in arrays) or batch != self.batch_size or length < 1:
            raise LiteError(
                f"the model takes three int32 [{self.batch_size}, length >= 1] arrays (its export batch size is "
                f"{self.batch_size}), got shapes {[a.shape for a in arrays]}"
            )
        run_length = max(length, self.min_length)
        ids, mask, segment = (zero_pad(a, batch, run_length) for a in arrays)
        start = np.empty((batch, run_length), np.float32)
        end = np.empty((batch, run_length), np.float32)
        error = ctypes.create_string_buffer(ERROR_BYTES)
        if self._lib.bert_lite_predict(self._handle, ids, mask, segment, batch, run_length, start, end,
                                       error, ERROR_BYTES):
            raise LiteError(error.value.decode(errors="replace"))
        return start[:, :length], end[:, :length]

    def close(self) -> None:
        """Free the model now rather than when the object is collected."""
        if getattr(self, "_handle", None):
            self._lib.bert_lite_destroy(self._handle)
            self._handle = None

    def __enter__(self) -> "LiteModel":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def score_windows(model: LiteModel, instances: Sequence[tuple]) -> list:
    """The model stage of the lite_direct runtime: bert_squad.runtimes.batching.run_windows with one
    "bucket" per distinct window length, so every window runs at its own length. Windows of
    one length go in chunks of the model's batch size, the last chunk padded with empty rows."""
    lengths = sorted({int(n) for *_, window_lengths in instances for n in np.asarray(window_lengths).reshape(-1)})

    def call(length: int, ids: np.ndarray, mask: np.ndarray, segment: np.ndarray):
        starts, ends = [], []
        for first in range(0, len(ids), model.batch_size):
            chunk = [a[first:first + model.batch_size] for a in (ids, mask, segment)]
            rows = len(chunk[0])
            start, end = model.predict(*(zero_pad(a, model.batch_size, length) for a in chunk))
            starts.append(start[:rows])
            ends.append(end[:rows])
        return np.concatenate(starts), np.concatenate(ends)

    return run_windows(list(instances), call, lengths)


def model_files(buckets: Sequence[int]) -> Dict[int, str]:
    return {bucket: MODEL_FILE for bucket in buckets}


def all_files(model_files: Iterable[str]) -> Tuple[str, ...]:
    return tuple(sorted(set(model_files)))


def check_engine() -> None:
    load_shim()


def declare_models(meta: Any, context: Mapping) -> Dict[int, Any]:
    return {}  # the model is this runtime's own, not Serving's


def open_scorer(folder: Path, meta: Any, context: Mapping, declared: Mapping[int, Any]) -> Scorer:
    """score_windows over the version's model, on the worker's threads and cores (servable_glue.model_context)."""
    model = LiteModel(folder / meta.model_files[settings.MAX_SEQ_LENGTH], context["thread_num"],
                      min_length(meta.config), context.get("thread_affinity_core_list", ()))
    return functools.partial(score_windows, model)


def write_model_files(job, buckets: Sequence[int]) -> Dict[str, Any]:
    """One MindIR traced at MAX_SEQ_LENGTH, checked in MindSpore Lite resized in turn to job.verify_lengths (run
    in ascending order, a resize that spoils the model also fails the later lengths). A model of exact GELU runs
    only in Lite, which computes it in one fused kernel; MindSpore would compute that graph's GELU as tanh, so such
    a MindIR is checked in Lite alone (bert_squad/model/network.py, GELU)."""
    path = job.write_mindir(settings.MAX_SEQ_LENGTH, MODEL_FILE, lite_only=job.config.hidden_act == "gelu_erf")
    cases = [job.inputs(job.batch_size, length, seed=length) for length in job.verify_lengths]
    try:
        scored = score_in_subprocess(path, cases, threads=os.cpu_count() or 1, min_length=min_length(job.config))
    except (LiteError, RuntimeMissing) as exc:
        raise ExportFailed(f"cannot check {path.name} in MindSpore Lite: {exc}") from None
    difference, largest = 0.0, 1.0
    for case, actual in zip(cases, scored):
        valid = case[1] == 1
        for a, e in zip(actual, job.network(*case)):
            difference = max(difference, float(np.abs(a - e)[valid].max()))
            largest = max(largest, float(np.abs(e[valid]).max()))
    if not difference <= VERIFY_TOLERANCE * largest:
        raise ExportFailed(
            f"{path.name} computes scores in MindSpore Lite up to {difference:.3g} away from the network "
            f"(tolerance {VERIFY_TOLERANCE} x largest score {largest:.3g}); the export is broken, please report it")
    job.log(f"MindSpore Lite at lengths {', '.join(map(str, job.verify_lengths))}: verified "
            f"(max difference {difference:.2g})")
    return {}


def score_in_subprocess(model_path: Union[str, Path], cases: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                        threads: int = 1, min_length: int = 1,
                        timeout: float = 600.0) -> List[Tuple[np.ndarray, np.ndarray]]:
    """LiteModel(model_path, threads, min_length).predict on each (ids, mask, segment) case, in
    order, in a child process started with Lite on LD_LIBRARY_PATH. For callers that started
    without it (the exporter, tests); a crash of Lite shows as a LiteError, not a dead caller."""
    shim_path()  # a missing shim is RuntimeMissing here, not a failed child
    with tempfile.TemporaryDirectory(prefix="bert-squad-lite-") as tmp:
        cases_file, scores_file = Path(tmp) / "cases.npz", Path(tmp) / "scores.npz"
        np.savez(cases_file, **{f"{name}_{k}": a for k, case in enumerate(cases)
                                for name, a in zip(INPUT_NAMES, case)})
        command = [sys.executable, "-m", "bert_squad.runtimes.lite_direct", str(model_path), str(cases_file),
                   str(scores_file), str(threads), str(min_length)]
        done = subprocess.run(command, env=with_lite_on_library_path(dict(os.environ)), capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if "[WARNING]" not in line]
            raise LiteError(f"scoring {model_path} with MindSpore Lite failed (exit status {done.returncode}):\n"
                            + "\n".join(lines[-15:]))
        with np.load(scores_file) as scores:
            return [(scores[f"start_{k}"], scores[f"end_{k}"]) for k in range(len(cases))]


def main(argv: Optional[List[str]] = None) -> int:
    """python -m bert_squad.runtimes.lite_direct MODEL CASES.npz SCORES.npz THREADS MIN_LENGTH (see score_in_subprocess)."""
    model_path, cases_file, scores_file, threads, shortest = argv if argv is not None else sys.argv[1:]
    try:
        with LiteModel(model_path, int(threads), int(shortest)) as model, np.load(cases_file) as cases:
            scores = {}
            for k in range(len(cases.files) // len(INPUT_NAMES)):
                start, end = model.predict(*(cases[f"{name}_{k}"] for name in INPUT_NAMES))
                scores[f"start_{k}"], scores[f"end_{k}"] = start, end
    except (LiteError, RuntimeMissing) as exc:
        print(f"bert_squad.runtimes.lite_direct: error: {exc}", file=sys.stderr)
        return 1
    np.savez(scores_file, **scores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
