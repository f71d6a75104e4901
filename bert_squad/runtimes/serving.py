"""The "serving" runtime: one MindIR per sequence-length bucket, each a model of MindSpore Serving itself.

Serving loads these models (MindSpore Lite on CPU, MindSpore on GPU/Ascend); they must be declared while
servable_config.py is imported (declare_models), and the model stage packs each window into the smallest bucket
that holds it (bert_squad.runtimes.batching). The runtime of versions written before metadata.json named one.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Sequence, Tuple

import numpy as np

from bert_squad.runtimes.base import Scorer
from bert_squad.runtimes.batching import run_windows

NAME = "serving"
PRECISIONS = ("fp32", "fp16")  # fp16: the GPU/Ascend export (compute_dtype float16)
DEFAULT_FOR = ("fp16",)
CPU_ONLY = False
ONE_MODEL = False
MINDIR = True


def model_file_name(bucket: int) -> str:
    return f"bert_{bucket}.mindir"


def model_files(buckets: Sequence[int]) -> Dict[int, str]:
    return {bucket: model_file_name(bucket) for bucket in buckets}


def all_files(model_files: Iterable[str]) -> Tuple[str, ...]:
    return tuple(sorted(set(model_files)))


def check_engine() -> None:
    """Serving loads the models itself, and reports a model it cannot load when it starts."""


def declare_models(meta: Any, context: Mapping) -> Dict[int, Any]:
    """bucket -> Serving model. Serving takes declarations only while it imports servable_config.py (it finds the
    servable by that file on the call stack), so servable_config.py calls this at import."""
    from mindspore_serving.server import register

    return {bucket: register.declare_model(model_file=name, model_format="MindIR",
                                           context=register.Context(**context))
            for bucket, name in sorted(meta.model_files.items())}


def score_buckets(models: Mapping[int, Any], buckets: Sequence[int], instances: Sequence[tuple]) -> list:
    """The model stage: the windows of all instances, one Serving model call per bucket."""

    def call(bucket, ids, mask, segment):
        outputs = models[bucket].call([[i, m, s] for i, m, s in zip(ids, mask, segment)])
        return np.stack([o[0] for o in outputs]), np.stack([o[1] for o in outputs])

    return run_windows(instances, call, buckets)


def open_scorer(folder: Path, meta: Any, context: Mapping, declared: Mapping[int, Any]) -> Scorer:
    return functools.partial(score_buckets, declared, meta.buckets)


def write_model_files(job, buckets: Sequence[int]) -> Dict[str, Any]:
    """One MindIR per bucket, each checked against the network in MindSpore."""
    for bucket, name in model_files(buckets).items():
        job.write_mindir(bucket, name)
    return {}
