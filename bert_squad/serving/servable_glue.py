"""What servable/bert_squad/servable_config.py delegates to, testable without a server.

Serving hands stage functions numpy scalars, 0-d arrays, str or bytes; these functions
turn them into library calls (windows, batching, decode) and the library's results
back into the tensors the methods declare.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np

from bert_squad import settings, versions
from bert_squad.model.config import BertConfig
from bert_squad.text.decode import decode
from bert_squad.errors import InputError
from bert_squad.metadata import Metadata, read_metadata
from bert_squad.runtimes import get_runtime
from bert_squad.runtimes.base import Scorer
from bert_squad.contract import PARENT_PID_ENV, PIN_ENV, THREADS_ENV
from bert_squad.text.tokenizer import BertTokenizer, load_tokenizer
from bert_squad.text.windows import Features, build_features

# When set, a file each model-stage batch appends one JSON line to: {"pid", "lengths" (its windows' real
# lengths), "seconds" (the stage's model work)}. For measuring model time apart from queue and transport.
MODEL_TIMES_ENV = "BERT_SQUAD_MODEL_TIMES"
WORKER_ENV = "SERVING_DEVICE_ID"  # Serving's start_worker.py sets it (the worker's device id) before importing us
INSTANCES_PER_MODEL_CALL = settings.INSTANCES_PER_MODEL_CALL
ANSWER_OUTPUTS = ["answer", "score", "start", "end", "top_starts", "top_ends", "top_scores"]


def model_context(environ: Mapping[str, str], allowed_cores: Iterable[int]) -> dict:
    """register.Context arguments of this worker: its thread count and, when pinning is asked for, its own
    cores: worker k (on CPU the device ids are worker numbers) takes the k-th block of `threads` cores among
    those this process may run on; no pinning when that block is short."""
    threads = int(environ.get(THREADS_ENV, os.cpu_count() or 1))
    options = {"thread_num": threads}
    if environ.get(PIN_ENV) == "1":
        worker = int(environ.get(WORKER_ENV, "0"))
        block = sorted(allowed_cores)[worker * threads:(worker + 1) * threads]
        if len(block) == threads:
            options["thread_affinity_core_list"] = block
    return options


def version_dir(servable_root: Path, version: Optional[str]) -> Path:
    """The version folder this worker serves: the serve command's choice, else the newest."""
    if version:
        return servable_root / version
    newest = versions.newest(servable_root)
    if newest is None:
        raise RuntimeError(f"no version folder in {servable_root}; export a model with bert-squad-export")
    return servable_root / str(newest)


def load_version(folder: Path) -> "tuple[Metadata, BertTokenizer]":
    meta = read_metadata(folder)
    return meta, load_tokenizer(str(folder / meta.vocab_file), meta.do_lower_case)


def require_runtime(meta: Metadata):
    """The version's runtime module, its engine loaded now, when servable_config.py is imported: a worker that
    cannot load it then fails at start, so start_servables raises, instead of failing every request later."""
    runtime = get_runtime(meta.runtime)
    runtime.check_engine()
    return runtime


def exit_with_master(environ: Mapping[str, str] = os.environ) -> None:
    """In a worker that bert-squad-serve's master started: end when that master is gone (the serve command was killed,
    and the master with it) instead of holding the model's memory as an orphan. Elsewhere (a start_servables script
    of the user's, the master importing this file) nothing is watched."""
    from bert_squad.contract.processes import exit_with_parent

    parent = environ.get(PARENT_PID_ENV)
    if parent and WORKER_ENV in environ and int(parent) != os.getpid():
        exit_with_parent(int(parent))


def keep_worker_alive_on_bad_text() -> None:
    """Make a request whose text is not UTF-8 fail alone instead of killing the worker.

    Serving 2.0.2 turns string tensors into Python str before it calls a stage; on bytes that
    are not UTF-8 that conversion raises inside Serving's task loop, which then stops the
    worker, failing every request in flight (the master restarts it, and gives up when it
    happens again before the new worker answered anything). This wraps the loop's per-task
    function: the conversion is tried first, and a task that fails it gets an error result
    for each of its instances (Serving reports when none is left) while the worker goes on.
    """
    from mindspore_serving.server.worker import task as serving_task

    handler = serving_task.PyTaskHandler
    run_inner = handler.run_inner

    class Converted:
        """The task with its instances converted once (the loop reads them twice)."""

        def __init__(self, task, instances):
            self._task, self.instance_list = task, instances

        def __getattr__(self, name):
            return getattr(self._task, name)

    def guarded(task):
        try:
            instances = task.instance_list
        except RuntimeError:  # pybind11: "Could not allocate string object!"
            message = (f"a text input of {task.method_name!r} is not valid UTF-8; send UTF-8 text "
                       "(gRPC: a string tensor of UTF-8 bytes; REST: a JSON string)")
            while True:
                try:
                    handler.push_failed(1, message)
                except RuntimeError:  # "processing task not match result": every instance has its error
                    return
        run_inner(Converted(task, instances))

    handler.run_inner = staticmethod(guarded)


def _text(value, name: str) -> str:
    if isinstance(value, np.ndarray) and value.dtype.kind in "SUO" and value.size == 1:
        value = value.reshape(-1)[0]
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
        value = value.tobytes()  # a bytes tensor (gRPC MS_BYTES, REST {"b64": ...}) arrives as uint8 [n]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{name} is not valid UTF-8 (byte {e.start}); send UTF-8 text") from None
    if not isinstance(value, str):
        raise InputError(f"{name} must be a string, got {type(value).__name__} {getattr(value, 'dtype', '')}")
    return value


def _integer(value, name: str) -> int:
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "iu":
        raise InputError(f"{name} must be one integer (int32 scalar), got {array.dtype} of shape {array.shape}")
    return int(array.reshape(-1)[0])


def _metrics():
    """bert_squad.contract.serving_metrics, imported on first use: the serve command sets MULTIPROC_ENV before any
    process imports prometheus_client (it picks its multiprocess mode at import)."""
    from bert_squad.contract import serving_metrics

    return serving_metrics


def preprocess(tokenizer: BertTokenizer, question, context):
    started, metrics = time.perf_counter(), _metrics()
    try:
        f = build_features(tokenizer, _text(question, "question"), _text(context, "context"))
    except InputError:
        metrics.QUESTIONS.labels("refused").inc()
        raise
    metrics.QUESTIONS.labels("tokenized").inc()
    metrics.WINDOWS.observe(len(f.lengths))
    for length in f.lengths.tolist():
        metrics.TOKENS.observe(length)
    metrics.STAGE.labels("preprocess").observe(time.perf_counter() - started)
    return f.input_ids, f.input_mask, f.token_type_id, f.lengths, f.char_offsets, f.max_context


def check_tokens(config: BertConfig, input_ids, input_mask, token_type_id):
    """Validate one token-level instance (predict_features) and give it the window layout."""
    arrays = []
    for name, value, high in (("input_ids", input_ids, config.vocab_size),
                              ("input_mask", input_mask, 2), ("token_type_id", token_type_id, config.type_vocab_size)):
        a = np.asarray(value)
        if a.dtype.kind not in "iu" or a.ndim != 1:
            raise InputError(f"{name} must be a 1-D integer tensor (int32 [seq]), got {a.dtype} of shape {a.shape}")
        if not 1 <= a.size <= settings.MAX_SEQ_LENGTH:
            raise InputError(f"{name} has {a.size} tokens; send 1 to {settings.MAX_SEQ_LENGTH}")
        if a.min() < 0 or a.max() >= high:
            raise InputError(f"{name} holds values outside [0, {high}): min {a.min()}, max {a.max()}")
        arrays.append(a.astype(np.int32))
    if len({a.size for a in arrays}) != 1:
        raise InputError(f"input_ids, input_mask and token_type_id differ in length: {[a.size for a in arrays]}")
    ids, mask, segment = arrays
    if not mask.any():
        raise InputError("input_mask has no 1: mark the real tokens of the window with 1, padding with 0")
    length = int(np.flatnonzero(mask).max()) + 1
    return ids[None], mask[None], segment[None], np.array([length], np.int32)


def run_model(score: Scorer, instances):
    """Batch stage: the windows of all instances scored by the runtime's scorer (scorer())."""
    yield from _timed(score, instances)


def _timed(score, instances) -> list:
    """score(instances), and its duration appended to $BERT_SQUAD_MODEL_TIMES when that is set."""
    batch = list(instances)
    started = time.perf_counter()
    results = score(batch)
    _metrics().STAGE.labels("model").observe(time.perf_counter() - started)
    log = os.environ.get(MODEL_TIMES_ENV)
    if log:
        lengths = [int(n) for *_, window_lengths in batch for n in np.asarray(window_lengths).reshape(-1)]
        line = json.dumps({"pid": os.getpid(), "lengths": lengths, "seconds": time.perf_counter() - started})
        try:
            with open(log, "a") as f:
                f.write(line + "\n")
        except OSError as e:  # a diagnostic must not fail the answers
            print(f"bert_squad: cannot append to {MODEL_TIMES_ENV}={log}: {e}", file=sys.stderr, flush=True)
    return results


def read_model_times(path: Path, offset: int = 0) -> "tuple[list, int]":
    """The complete lines of a $BERT_SQUAD_MODEL_TIMES file from byte `offset` on, as dicts, and the offset
    after them (a line still being written is left for the next read). Nothing yet if the file is not there."""
    if not Path(path).exists():
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    complete = data[:data.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.splitlines()], offset + len(complete)


_scorers: dict = {}  # version folder -> this process's scorer


def scorer(folder: Path, meta: Metadata, context: Mapping, declared: Mapping[int, object]) -> Scorer:
    """This process's scorer of the version, opened by its runtime on first use (the module's open_scorer is where
    a window is scored). `context` is the worker's model_context(), `declared` the runtime's declare_models()."""
    if folder not in _scorers:
        started = time.perf_counter()
        _scorers[folder] = get_runtime(meta.runtime).open_scorer(folder, meta, context, declared)
        # in the worker's Serving log (serving_logs/log_<servable>_device<id>_version<n>.log)
        files = ", ".join(sorted(set(meta.model_files.values())))
        print(f"bert_squad: {meta.runtime} {meta.precision} model {files} loaded in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
    return _scorers[folder]


def load_at_start(folder: Path, meta: Metadata, context: Mapping, declared: Mapping[int, object],
                  environ: Mapping[str, str]) -> None:
    """A model worker (Serving sets WORKER_ENV in those only) opens its scorer now. The serve command's warm-up
    question reaches one worker: opened on first use, every other worker of --device-ids 0,1,... loaded its model
    (seconds) inside its first real question, after the ready line. Extra Python workers (--python-workers) still
    open it only if the model stage runs there."""
    if WORKER_ENV in environ:
        scorer(folder, meta, context, declared)


def postprocess(context, start, end, lengths, char_offsets, max_context, top_k=settings.DEFAULT_TOP_K,
                max_answer_length=settings.MAX_ANSWER_LENGTH):
    started = time.perf_counter()
    features = Features(input_ids=None, input_mask=None, token_type_id=None, lengths=np.asarray(lengths),
                        char_offsets=np.asarray(char_offsets), max_context=np.asarray(max_context))
    answers = decode(start, end, features, _text(context, "context"), top_k=_integer(top_k, "top_k"),
                     max_answer_length=_integer(max_answer_length, "max_answer_length"))
    best = answers[0]
    _metrics().STAGE.labels("postprocess").observe(time.perf_counter() - started)
    return (best.text, np.float32(best.score), np.int32(best.start), np.int32(best.end),
            np.array([a.start for a in answers], np.int32), np.array([a.end for a in answers], np.int32),
            np.array([a.score for a in answers], np.float32))


def first_window(start, end):
    """predict_features returns the one window's scores as [seq] tensors.

    Copies, not views: Serving keeps the data pointer of a returned array but not the
    array it views, so a row view reads freed memory once the stage returns.
    """
    return np.array(start[0], copy=True), np.array(end[0], copy=True)
