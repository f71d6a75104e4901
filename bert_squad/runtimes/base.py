"""What a runtime module provides: the contract every entry of the registry (bert_squad/runtimes/__init__.py) meets.

A runtime is the engine that scores windows for the version folders whose metadata.json names it. The server,
the servable and the exporter know runtimes only through this contract; docs/adding-a-runtime.md says how to add one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Protocol, Sequence, Tuple

import numpy as np

Scores = Tuple[np.ndarray, np.ndarray]  # (start, end), float32 [batch, length]
# The model stage: instances (input_ids, input_mask, token_type_id, lengths) -> per instance (start, end) scores.
Scorer = Callable[[Sequence[tuple]], list]


class ExportFailed(RuntimeError):
    """A runtime could not write or check its model files; bert-squad-export reports the message as its error."""


class Model(Protocol):
    """One loaded model of an exact-length runtime."""

    def predict(self, input_ids: np.ndarray, input_mask: np.ndarray, token_type_id: np.ndarray) -> Scores:
        """(start, end) scores of int32 [batch, length] inputs."""


class ExportJob(Protocol):
    """What bert_squad/export/exporter.py hands a runtime's write_model_files: the checkpoint, the staging folder
    and the MindSpore network as numpy functions (a runtime module never imports MindSpore itself)."""

    staging: Path
    config: Any  # BertConfig
    weights: Mapping[str, np.ndarray]
    precision: str
    batch_size: int
    calibration: Any  # bert_squad.export.calibration.Calibration: where SQuAD windows come from
    log: Callable[[str], None]

    verify_lengths: Sequence[int]  # exact lengths an exact-length model is checked at, ascending

    def write_mindir(self, bucket: int, file_name: str, lite_only: bool = False) -> Path:
        """The network as a MindIR traced at `bucket` tokens, checked against the network unless `lite_only`."""

    def network(self, *arrays: np.ndarray) -> Sequence[np.ndarray]:
        """The MindSpore network's (start, end) scores of int32 [batch, length] inputs."""

    def inputs(self, batch_size: int, length: int, seed: int = 0) -> Tuple[np.ndarray, ...]:
        """Synthetic (input_ids, input_mask, token_type_id) with two segments and padded rows."""

    def squad_windows(self, count: int) -> list:
        """`count` real windows from the calibration SQuAD file (ExportError when it cannot give them)."""


class Runtime(Protocol):
    """The module of one runtime (its registry name is the `runtime` field of metadata.json)."""

    NAME: str
    PRECISIONS: Tuple[str, ...]  # what --precision it runs
    DEFAULT_FOR: Tuple[str, ...]  # the precisions it is bert-squad-export's default runtime for
    CPU_ONLY: bool  # refused on --device gpu/ascend; its reduced precisions are checked against the CPU's flags
    ONE_MODEL: bool  # one model exported at MAX_SEQ_LENGTH, run at each window's length (no buckets)
    MINDIR: bool  # its model files are MindIR protobufs (the serve command checks they are complete)

    def model_files(self, buckets: Sequence[int]) -> Dict[int, str]: ...  # bucket -> model file name
    def all_files(self, model_files: Iterable[str]) -> Tuple[str, ...]: ...  # with files beside them (weights)
    def check_engine(self) -> None: ...  # load the engine now; RuntimeMissing/LiteError/ImportError say what is missing
    def declare_models(self, meta: Any, context: Mapping) -> Dict[int, Any]: ...  # Serving's own models, at import
    def open_scorer(self, folder: Path, meta: Any, context: Mapping, declared: Mapping[int, Any]) -> Scorer: ...
    def write_model_files(self, job: ExportJob, buckets: Sequence[int]) -> Dict[str, Any]: ...  # extra metadata
