"""Checkpoint -> servable version folder: the MindIR files of the chosen runtime (one
per sequence-length bucket for "serving", one resizable file for "lite_direct"), the
vocabulary, and metadata.json.

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

from bert_squad import settings
from bert_squad.model.checkpoint import LoadedCheckpoint, build_network, load_checkpoint
from bert_squad.model.config import BertConfig
from bert_squad.runtimes.lite_direct import LiteError, min_length, score_in_subprocess
from bert_squad.metadata import (EXPORT_RUNTIME, RUNTIME_PRECISIONS, RUNTIMES, Metadata, sha256_file,
                                 validate_buckets, write_metadata)
from bert_squad.runtimes.lite_lib import REPO_ROOT, RuntimeMissing
from bert_squad.runtimes import openvino as ov_runtime
from bert_squad.runtimes.cpu_features import PRECISIONS, PrecisionUnsupported, check_precision, read_flags
from bert_squad.export.openvino_export import Calibration, CalibrationError, squad_windows
from bert_squad.export.openvino_export import export_model as export_openvino_model
from bert_squad.model.vocab import VocabError, uncased_vocab

VOCAB_FILE = "vocab.txt"
SHARED_DATA_ENV = "BERT_SQUAD_SHARED_DATA"  # where the SQuAD files are (tests/conftest.py reads it too)
SERVABLE_CONFIG = REPO_ROOT / "servable" / settings.SERVABLE_NAME / "servable_config.py"  # the servable's glue
VERIFY_TOLERANCE = 1e-4  # MindIR vs the in-memory network, per score
# The lite_direct model is checked in MindSpore Lite, resized in turn to tiny lengths, the number of attention
# heads (a length Lite 2.0 gets wrong unless lite_runtime.min_length pads it), a third, two thirds and the
# full window: run in ascending order, a resize that spoils the model also fails the later lengths.
LITE_MODEL_FILE = "bert.mindir"
LITE_VERIFY_LENGTHS = (1, 5, settings.MAX_SEQ_LENGTH // 3, 2 * settings.MAX_SEQ_LENGTH // 3, settings.MAX_SEQ_LENGTH)
# Lite's CPU kernels sum in another order than MindSpore's, and its tanh GELU is a cheaper approximation: on a
# seeded BERT-base the scores differ by up to 1.1e-5 (erf GELU) and 2.9e-6 (tanh GELU); on the 2-layer test models
# by ~1e-5. (Before GeLU carried its `approximate` attribute, Lite computed a tanh model's GELU as erf: 2.8e-4.)
# Allowed: this much per unit of the largest score magnitude (at least 1). A broken export is off by far more.
LITE_VERIFY_TOLERANCE = 1e-3


class ExportError(Exception):
    """The export cannot proceed; the message says what to change."""


def tool_version() -> str:
    """The installed bert-squad version (setup.cfg is its one home)."""
    try:
        return distribution_version("bert-squad")
    except PackageNotFoundError:
        return "unknown (bert-squad not installed)"


def model_file_name(bucket: int) -> str:
    return f"bert_{bucket}.mindir"


def next_version(model_dir: Path) -> int:
    """One more than the highest numbered version folder (1 for a new model)."""
    numbers = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(numbers, default=0) + 1


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

    runtime "serving" writes one MindIR per bucket (default settings.BUCKETS);
    "lite_direct" writes one MindIR exported at MAX_SEQ_LENGTH and checks it in MindSpore
    Lite at several lengths (it needs the Lite shim built by scripts/setup.sh); "openvino"
    writes one OpenVINO IR (fp32, bf16 or int8, calibrated on `calibration`).
    `runtime` None: the precision's default (default_runtime). Returns the version folder. Raises ExportError, CheckpointError, ConfigError or
    MetadataError (all with a message meant for the user).
    """
    runtime = default_runtime(precision) if runtime is None else runtime
    _check_precision(precision, runtime)
    compute_dtype = "float16" if precision == "fp16" else "float32"
    if runtime == "openvino":
        if buckets is not None and tuple(buckets) != (settings.MAX_SEQ_LENGTH,):
            raise ExportError("--buckets does not apply to --runtime openvino: its one model runs every window at "
                              "the window's own length")
        buckets = (settings.MAX_SEQ_LENGTH,)
    elif runtime == "lite_direct":
        if buckets is not None and tuple(buckets) != (settings.MAX_SEQ_LENGTH,):
            raise ExportError(
                "--buckets does not apply to --runtime lite_direct (the default): its one model runs every window "
                "at the window's own length; for one model per bucket add --runtime serving"
            )
        buckets = (settings.MAX_SEQ_LENGTH,)
    elif buckets is None:
        buckets = settings.BUCKETS
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
    if runtime == "openvino":
        calibration = calibration or Calibration(default_calibration_file())
        windows = _openvino_windows(precision, calibration, vocab, do_lower_case)
    # A lite_direct model runs only in Lite, which computes an exact GELU in one fused kernel; MindSpore would
    # compute that graph's GELU as tanh, so the MindIR is checked in Lite alone (bert_squad/model/network.py, GELU).
    lite_only = runtime == "lite_direct" and loaded.config.hidden_act == "gelu_erf"
    exported = build_network(loaded, compute_dtype, lite_only=True) if lite_only else net
    model_dir.mkdir(parents=True, exist_ok=True)
    _ensure_servable_config(model_dir, log)
    version = next_version(model_dir) if version is None else version
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=model_dir))
    try:
        model_files = {b: _model_file(runtime, b) for b in buckets}
        openvino_fields: dict = {}
        if runtime == "openvino":
            openvino_fields = _export_openvino(loaded, net, staging, precision, windows, batch_size, log)
            if "calibration" in openvino_fields:
                openvino_fields["calibration"].update(file=str(calibration.squad_file.resolve()),
                                                      seed=calibration.seed)
        for bucket, file_name in model_files.items() if runtime != "openvino" else ():
            inputs = export_inputs(batch_size, bucket, loaded.config.vocab_size)
            path = staging / file_name
            ms.export(exported, *inputs, file_name=str(path.with_suffix("")), file_format="MINDIR")
            if not path.is_file():
                raise ExportError(f"MindSpore did not write {path.name}")
            size = path.stat().st_size / 2**20
            if lite_only:
                log(f"bucket {bucket}: {path.name} ({size:.1f} MiB), for MindSpore Lite only (fused exact GELU)")
            else:
                difference = _verify(net, path, inputs)
                log(f"bucket {bucket}: {path.name} ({size:.1f} MiB), verified (max difference {difference:.2g})")
        if runtime == "lite_direct":
            lengths = sorted({*LITE_VERIFY_LENGTHS, loaded.config.num_attention_heads})
            difference = _verify_lite(net, staging / LITE_MODEL_FILE, batch_size, loaded.config, lengths)
            log(f"MindSpore Lite at lengths {', '.join(map(str, lengths))}: verified "
                f"(max difference {difference:.2g})")
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
                model_sha256={name: sha256_file(staging / name) for name in set(model_files.values())
                              | ({ov_runtime.WEIGHTS_FILE} if runtime == "openvino" else set())},
                precision=precision,
                **openvino_fields,
            ),
        )
        target = model_dir / str(version)
        if target.exists():  # only reachable with force
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
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


def default_runtime(precision: str) -> str:
    """fp32: lite_direct (EXPORT_RUNTIME); fp16 (GPU/Ascend): Serving's buckets; bf16 and int8: OpenVINO."""
    return {"fp32": EXPORT_RUNTIME, "fp16": "serving"}.get(precision, "openvino")


def default_calibration_file() -> Path:
    """settings.DEFAULT_CALIBRATION_FILE in $BERT_SQUAD_SHARED_DATA, else in ../shared/data beside the repository."""
    folder = os.environ.get(SHARED_DATA_ENV)
    return (Path(folder) if folder else REPO_ROOT.parent / "shared" / "data") / settings.DEFAULT_CALIBRATION_FILE


def _check_precision(precision: str, runtime: str) -> None:
    """Refuse a precision the runtime or this CPU cannot run, naming what would work."""
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if runtime not in RUNTIMES:
        raise ExportError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if precision in RUNTIME_PRECISIONS[runtime]:
        if runtime == "openvino" and precision != "fp32":
            try:
                note = check_precision(precision, read_flags())
            except PrecisionUnsupported as exc:
                raise ExportError(str(exc)) from None
            if note:
                print(f"bert-squad-export: note: {note}", file=sys.stderr)
        return
    if runtime == "lite_direct" and precision == "fp16":
        raise ExportError("--runtime lite_direct (the default) runs on CPU, where matmuls run in float32; leave "
                          "out --fp16, or add --runtime serving for a GPU/Ascend export")
    if precision == "fp16":
        raise ExportError("--precision fp16 is for GPU/Ascend (--runtime serving); on CPU reduced precision is "
                          "--precision bf16 or int8 (runtime openvino)")
    raise ExportError(f"--runtime {runtime} runs precision {' or '.join(RUNTIME_PRECISIONS[runtime])}; "
                      f"{precision} runs in --runtime openvino (leave --runtime out: it is the default for {precision})")


def _model_file(runtime: str, bucket: int) -> str:
    return {"lite_direct": LITE_MODEL_FILE, "openvino": ov_runtime.MODEL_FILE}.get(runtime, model_file_name(bucket))


def _openvino_windows(precision: str, calibration: Calibration, vocab: Path, do_lower_case: bool) -> dict:
    """Real SQuAD windows for the openvino export: int8 calibration (required) and, apart from them, the
    windows on which bf16 and int8 are compared with fp32 (synthetic ones when no SQuAD file is there)."""
    wanted = (calibration.windows if precision == "int8" else 0) + settings.AGREEMENT_WINDOWS
    if precision == "fp32" or (precision == "bf16" and not calibration.squad_file.is_file()):
        real: list = []
    else:
        try:
            started = time.perf_counter()
            real = squad_windows(calibration.squad_file, vocab, do_lower_case, wanted, calibration.seed)
            print(f"bert-squad-export: {len(real)} windows from {calibration.squad_file} (seed {calibration.seed}) "
                  f"in {time.perf_counter() - started:.1f} s", flush=True)
        except CalibrationError as exc:
            raise ExportError(str(exc)) from None
    split = calibration.windows if precision == "int8" else 0
    return {"calibration": real[:split], "check": real[split:]}


def _export_openvino(loaded: LoadedCheckpoint, net, staging: Path, precision: str, windows: dict, batch_size: int,
                     log: Callable[[str], None]) -> dict:
    lengths = sorted({*LITE_VERIFY_LENGTHS, loaded.config.num_attention_heads})
    synthetic = [tuple(t.asnumpy() for t in export_inputs(max(batch_size, 2), n, loaded.config.vocab_size, seed=n))
                 for n in lengths]

    def network(*arrays):
        """The MindSpore network's scores at the arrays' length, run padded to MAX_SEQ_LENGTH: padding is masked
        out, and one shape is compiled once instead of once per window length."""
        length = arrays[0].shape[1]
        padded = (np.pad(a, ((0, 0), (0, settings.MAX_SEQ_LENGTH - length))) for a in arrays)
        return [t.asnumpy()[:, :length] for t in net(*(ms.Tensor(a) for a in padded))]

    try:
        return export_openvino_model(loaded.weights, loaded.config, staging, precision, network,
                                     windows["check"] or synthetic, synthetic, windows["calibration"],
                                     os.cpu_count() or 1, log)
    except RuntimeError as exc:
        raise ExportError(str(exc)) from None


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


def _verify_lite(net, path: Path, batch_size: int, config: BertConfig, lengths: Sequence[int]) -> float:
    """Run the lite_direct MindIR in MindSpore Lite, resized to each length in turn, next to
    the in-memory network at the same exact length; compare the real tokens."""
    cases = [[t.asnumpy() for t in export_inputs(batch_size, length, config.vocab_size, seed=length)]
             for length in lengths]
    try:
        scored = score_in_subprocess(path, cases, threads=os.cpu_count() or 1, min_length=min_length(config))
    except (LiteError, RuntimeMissing) as exc:
        raise ExportError(f"cannot check {path.name} in MindSpore Lite: {exc}") from None
    difference, largest = 0.0, 1.0
    for case, actual in zip(cases, scored):
        expected = [t.asnumpy() for t in net(*(ms.Tensor(a) for a in case))]
        valid = case[1] == 1
        for a, e in zip(actual, expected):
            difference = max(difference, float(np.abs(a - e)[valid].max()))
            largest = max(largest, float(np.abs(e[valid]).max()))
    if not difference <= LITE_VERIFY_TOLERANCE * largest:
        raise ExportError(
            f"{path.name} computes scores in MindSpore Lite up to {difference:.3g} away from the network "
            f"(tolerance {LITE_VERIFY_TOLERANCE} x largest score {largest:.3g}); the export is broken, please report it"
        )
    return difference
