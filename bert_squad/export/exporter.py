"""Checkpoint -> servable version folder: the model files of the chosen runtime (each runtime's module writes and
checks its own: write_model_files), the vocabulary, and metadata.json.

A version folder is written under a temporary name and renamed into place at the
end, so the servable never sees a half-written version.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version as distribution_version
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import mindspore as ms
import numpy as np

from bert_squad import settings, versions
from bert_squad.model.checkpoint import LoadedCheckpoint, build_network, load_checkpoint
from bert_squad.model.config import BertConfig
from bert_squad.metadata import Metadata, sha256_file, validate_buckets, write_metadata
from bert_squad.runtimes import CPU_PRECISIONS, PRECISIONS, RUNTIMES, default_runtime, get_runtime
from bert_squad.runtimes.base import ExportFailed
from bert_squad.runtimes.lite_lib import REPO_ROOT
from bert_squad.runtimes.cpu_features import PrecisionUnsupported, check_precision, read_flags
from bert_squad.export.calibration import Calibration, CalibrationError, squad_windows
from bert_squad.model.vocab import VocabError, uncased_vocab

VOCAB_FILE = "vocab.txt"
SHARED_DATA_ENV = "BERT_SQUAD_SHARED_DATA"  # where the SQuAD files are (tests/conftest.py reads it too)
SERVABLE_CONFIG = REPO_ROOT / "servable" / settings.SERVABLE_NAME / "servable_config.py"  # the servable's glue
VERIFY_TOLERANCE = 1e-4  # MindIR vs the in-memory network, per score
# An exact-length model (lite_direct, openvino) is checked resized in turn to tiny lengths, the number of attention
# heads (a length Lite 2.0 gets wrong unless lite_direct.min_length pads it), a third, two thirds and the full window.
VERIFY_LENGTHS = (1, 5, settings.MAX_SEQ_LENGTH // 3, 2 * settings.MAX_SEQ_LENGTH // 3, settings.MAX_SEQ_LENGTH)


class ExportError(Exception):
    """The export cannot proceed; the message says what to change."""


def tool_version() -> str:
    """The installed bert-squad version (setup.cfg is its one home)."""
    try:
        return distribution_version("bert-squad")
    except PackageNotFoundError:
        return "unknown (bert-squad not installed)"


def export_inputs(batch_size: int, seq_length: int, vocab_size: int, seed: int = 0):
    """input_ids, input_mask, token_type_id for tracing and verification: two segments
    and, from the second row on, padding, so masking is exercised."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, vocab_size, (batch_size, seq_length)).astype(np.int32)
    mask = np.ones((batch_size, seq_length), np.int32)
    token_type = np.zeros((batch_size, seq_length), np.int32)
    token_type[:, seq_length // 3 :] = 1
    for row in range(1, batch_size):
        valid = max(1, seq_length - row * seq_length // (2 * batch_size))
        mask[row, valid:] = 0
        ids[row, valid:] = 0
        token_type[row, valid:] = 0
    return ms.Tensor(ids), ms.Tensor(mask), ms.Tensor(token_type)


class _Job:
    """One export's checkpoint, staging folder and network, as a runtime's write_model_files sees them
    (bert_squad.runtimes.base.ExportJob)."""

    def __init__(self, loaded: LoadedCheckpoint, net, model_dir: Path, version: Optional[int], precision: str,
                 compute_dtype: str, batch_size: int, calibration: Calibration, vocab: Path, do_lower_case: bool,
                 log: Callable[[str], None]):
        self.config, self.weights, self.model_dir, self.version = loaded.config, loaded.weights, model_dir, version
        self.precision, self.batch_size, self.calibration, self.log = precision, batch_size, calibration, log
        self.verify_lengths = sorted({*VERIFY_LENGTHS, loaded.config.num_attention_heads})
        self._loaded, self._net, self._compute_dtype = loaded, net, compute_dtype
        self._vocab, self._do_lower_case = vocab, do_lower_case
        self._staging: Optional[Path] = None

    @property
    def staging(self) -> Path:
        """The hidden folder the version is written into, made on first use: a runtime that first reads its
        inputs (SQuAD windows) and fails leaves no folder behind."""
        if self._staging is None:
            self.model_dir.mkdir(parents=True, exist_ok=True)
            _ensure_servable_config(self.model_dir, self.log)
            self.version = versions.next_number(self.model_dir) if self.version is None else self.version
            self._staging = Path(tempfile.mkdtemp(prefix=f".{self.version}.partial-", dir=self.model_dir))
        return self._staging

    def discard(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)

    def inputs(self, batch_size: int, length: int, seed: int = 0):
        return tuple(t.asnumpy() for t in export_inputs(batch_size, length, self.config.vocab_size, seed))

    def network(self, *arrays):
        return [t.asnumpy() for t in self._net(*(ms.Tensor(a) for a in arrays))]

    def write_mindir(self, bucket: int, file_name: str, lite_only: bool = False) -> Path:
        exported = build_network(self._loaded, self._compute_dtype, lite_only=True) if lite_only else self._net
        inputs = export_inputs(self.batch_size, bucket, self.config.vocab_size)
        path = self.staging / file_name
        ms.export(exported, *inputs, file_name=str(path.with_suffix("")), file_format="MINDIR")
        if not path.is_file():
            raise ExportError(f"MindSpore did not write {path.name}")
        size = path.stat().st_size / 2**20
        if lite_only:
            self.log(f"bucket {bucket}: {path.name} ({size:.1f} MiB), for MindSpore Lite only (fused exact GELU)")
        else:
            difference = _verify(self._net, path, inputs)
            self.log(f"bucket {bucket}: {path.name} ({size:.1f} MiB), verified (max difference {difference:.2g})")
        return path

    def squad_windows(self, count: int) -> list:
        try:
            started = time.perf_counter()
            real = squad_windows(self.calibration.squad_file, self._vocab, self._do_lower_case, count,
                                 self.calibration.seed)
        except CalibrationError as exc:
            raise ExportError(str(exc)) from None
        print(f"bert-squad-export: {len(real)} windows from {self.calibration.squad_file} (seed "
              f"{self.calibration.seed}) in {time.perf_counter() - started:.1f} s", flush=True)
        return real


def export_version(
    checkpoint: Union[str, Path],
    servable_dir: Union[str, Path],
    name: str = settings.SERVABLE_NAME,
    vocab_file: Optional[Union[str, Path]] = None,
    do_lower_case: Optional[bool] = None,
    config: Optional[BertConfig] = None,
    buckets: Optional[Sequence[int]] = None,
    batch_size: int = 1,
    version: Optional[int] = None,
    force: bool = False,
    precision: str = "fp32",
    expected_sha256: Optional[str] = None,
    runtime: Optional[str] = None,
    calibration: Optional[Calibration] = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Export `checkpoint` (zoo .ckpt or Hugging Face folder) to servable_dir/name/N/.

    The runtime's module writes and checks the model files (bert_squad/runtimes/): "serving" one MindIR per bucket
    (default settings.BUCKETS); "lite_direct" one MindIR checked in MindSpore Lite at several lengths (it needs the
    Lite shim built by scripts/setup.sh); "openvino" one OpenVINO IR (fp32, bf16 or int8, calibrated on
    `calibration`). `runtime` None: the precision's default (bert_squad.runtimes.default_runtime). Returns the
    version folder. Raises ExportError, CheckpointError, ConfigError or MetadataError (all with a message meant
    for the user).
    """
    module = _check_precision(precision, runtime)
    runtime = module.NAME
    compute_dtype = "float16" if precision == "fp16" else "float32"
    buckets = _buckets(module, precision, buckets)
    if batch_size <= 0:
        raise ExportError(f"batch size must be a positive integer, got {batch_size}")
    if version is not None and version <= 0:
        raise ExportError(f"version must be a positive integer, got {version}")
    model_dir = Path(servable_dir) / name
    if version is not None and (model_dir / str(version)).exists() and not force:
        raise ExportError(
            f"{model_dir / str(version)} already exists; pick another --version, leave it out "
            "to use the next free number, or pass --force to replace it"
        )

    loaded = load_checkpoint(checkpoint, config, expected_sha256)
    log(loaded.summary())
    buckets = validate_buckets(buckets, loaded.config.max_position_embeddings)
    vocab = _vocab_file(loaded, vocab_file)
    if do_lower_case is None:  # BERT tokenizers lower-case unless told otherwise
        do_lower_case = True if loaded.do_lower_case is None else loaded.do_lower_case

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    net = build_network(loaded, compute_dtype)
    calibration = calibration or Calibration(default_calibration_file())
    job = _Job(loaded, net, model_dir, version, precision, compute_dtype, batch_size, calibration, vocab,
               do_lower_case, log)
    try:
        model_files = module.model_files(buckets)
        try:
            extra_fields = module.write_model_files(job, buckets)
        except ExportFailed as exc:
            raise ExportError(str(exc)) from None
        staging, version = job.staging, job.version
        shutil.copyfile(vocab, staging / VOCAB_FILE)
        write_metadata(
            staging,
            Metadata(
                buckets=buckets,
                batch_size=batch_size,
                model_files=model_files,
                vocab_file=VOCAB_FILE,
                vocab_sha256=sha256_file(staging / VOCAB_FILE),
                do_lower_case=do_lower_case,
                scoring=loaded.config.scoring,
                compute_dtype=compute_dtype,
                config=loaded.config,
                source=str(Path(loaded.source).resolve()),
                source_sha256=loaded.sha256,
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                tool_version=tool_version(),
                runtime=runtime,
                model_sha256={name: sha256_file(staging / name) for name in module.all_files(model_files.values())},
                precision=precision,
                **extra_fields,
            ),
        )
        target = model_dir / str(version)
        if target.exists():  # only reachable with force
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        job.discard()
        raise
    log(f"exported version {version} to {target}")
    return target


def _ensure_servable_config(model_dir: Path, log: Callable[[str], None]) -> None:
    """Give a new servable folder our servable_config.py, so that the servable directory is complete (Serving
    loads NAME/servable_config.py beside the version folders). One already there is the user's: kept."""
    target = model_dir / SERVABLE_CONFIG.name
    if target.is_file():
        return
    if not SERVABLE_CONFIG.is_file():
        raise ExportError(f"{SERVABLE_CONFIG} is missing from this installation; cannot complete {model_dir}")
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(SERVABLE_CONFIG, partial)
    partial.rename(target)
    log(f"wrote {target} (the servable's stages)")


def default_calibration_file() -> Path:
    """settings.DEFAULT_CALIBRATION_FILE in $BERT_SQUAD_SHARED_DATA, else in ../shared/data beside the repository."""
    folder = os.environ.get(SHARED_DATA_ENV)
    return (Path(folder) if folder else REPO_ROOT.parent / "shared" / "data") / settings.DEFAULT_CALIBRATION_FILE


def _check_precision(precision: str, runtime: Optional[str]):
    """The module of `runtime` (None: the precision's default); refuse a precision the runtime or this CPU cannot
    run, naming what would work."""
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    runtime = default_runtime(precision) if runtime is None else runtime
    try:
        module, home = get_runtime(runtime), default_runtime(precision)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    if precision in module.PRECISIONS:
        if module.CPU_ONLY:
            try:
                note = check_precision(precision, read_flags())
            except PrecisionUnsupported as exc:
                raise ExportError(str(exc)) from None
            if note:
                print(f"bert-squad-export: note: {note}", file=sys.stderr)
        return module
    reduced = [p for p in CPU_PRECISIONS if p != "fp32"]
    if module.CPU_ONLY and precision not in CPU_PRECISIONS and runtime == default_runtime("fp32"):
        raise ExportError(f"--runtime {runtime} (the default) runs on CPU, where matmuls run in float32; leave out "
                          f"--fp16, or add --runtime {home} for a GPU/Ascend export")
    if module.CPU_ONLY and precision not in CPU_PRECISIONS:
        raise ExportError(f"--precision {precision} is for GPU/Ascend (--runtime {home}); on CPU reduced precision is "
                          f"--precision {' or '.join(reduced)} (runtime {default_runtime(reduced[0])})")
    raise ExportError(f"--runtime {runtime} runs precision {' or '.join(module.PRECISIONS)}; "
                      f"{precision} runs in --runtime {home} (leave --runtime out: it is the default for {precision})")


def _buckets(module, precision: str, buckets: Optional[Sequence[int]]) -> Sequence[int]:
    """The buckets to export: --buckets for a bucketed runtime (default settings.BUCKETS), else the one window
    length an exact-length runtime's model is traced at."""
    if not module.ONE_MODEL:
        return settings.BUCKETS if buckets is None else buckets
    if buckets is not None and tuple(buckets) != (settings.MAX_SEQ_LENGTH,):
        refused = f"--buckets does not apply to --runtime {module.NAME}"
        why = "its one model runs every window at the window's own length"
        if module.NAME != default_runtime("fp32"):
            raise ExportError(f"{refused}: {why}")
        # the runtime of a plain `bert-squad-export CHECKPOINT`: say how to get buckets
        bucketed = next(name for name, other in RUNTIMES.items()
                        if not other.ONE_MODEL and precision in other.PRECISIONS)
        raise ExportError(f"{refused} (the default): {why}; for one model per bucket add --runtime {bucketed}")
    return (settings.MAX_SEQ_LENGTH,)


def _vocab_file(loaded: LoadedCheckpoint, vocab_file: Optional[Union[str, Path]]) -> Path:
    if vocab_file is None and loaded.vocab_file is None and loaded.sha256 == settings.HUB_CHECKPOINT_SHA256:
        try:  # the Hub checkpoint was trained with the uncased BERT-base vocabulary: take the verified copy
            vocab_file = uncased_vocab()
        except VocabError as exc:
            raise ExportError(str(exc)) from None
    if vocab_file is None:
        if loaded.vocab_file is None:
            raise ExportError(
                f"{loaded.source} comes without a vocabulary; pass --vocab with the vocab.txt "
                "the model was trained with"
            )
        vocab_file = loaded.vocab_file
    vocab = Path(vocab_file)
    if not vocab.is_file():
        raise ExportError(f"vocabulary file {vocab} does not exist")
    try:
        entries = len(vocab.read_text(encoding="utf-8").splitlines())
    except UnicodeDecodeError:
        raise ExportError(f"vocabulary file {vocab} is not UTF-8 text (one token per line)") from None
    if entries > loaded.config.vocab_size:
        raise ExportError(
            f"vocabulary {vocab} has {entries} tokens but the model only {loaded.config.vocab_size}; "
            "it is not this model's vocabulary"
        )
    return vocab


def _verify(net, path: Path, inputs) -> float:
    """Run the MindIR next to the in-memory network on the same inputs."""
    graph = ms.nn.GraphCell(ms.load(str(path)))
    expected = [t.asnumpy() for t in net(*inputs)]
    actual = [t.asnumpy() for t in graph(*inputs)]
    difference = max(float(np.abs(a - e).max()) for a, e in zip(actual, expected))
    if not difference <= VERIFY_TOLERANCE:
        raise ExportError(
            f"{path.name} computes scores up to {difference:.3g} away from the network "
            f"(tolerance {VERIFY_TOLERANCE}); the export is broken, please report it"
        )
    return difference
