"""Checkpoint -> servable version folder: the MindIR files of the chosen runtime (one
per sequence-length bucket for "serving", one resizable file for "lite_direct"), the
vocabulary, and metadata.json.

A version folder is written under a temporary name and renamed into place at the
end, so the servable never sees a half-written version.
"""

from __future__ import annotations

import os
import shutil
import tempfile
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
from bert_squad.metadata import (COMPUTE_DTYPES, EXPORT_RUNTIME, RUNTIMES, Metadata, sha256_file, validate_buckets,
                                 write_metadata)
from bert_squad.runtimes.lite_lib import REPO_ROOT, RuntimeMissing
from bert_squad.model.vocab import VocabError, uncased_vocab

VOCAB_FILE = "vocab.txt"
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
    compute_dtype: str = "float32",
    expected_sha256: Optional[str] = None,
    runtime: str = EXPORT_RUNTIME,
    log: Callable[[str], None] = print,
) -> Path:
    """Export `checkpoint` (zoo .ckpt or Hugging Face folder) to servable_dir/name/N/.

    runtime "serving" writes one MindIR per bucket (default settings.BUCKETS);
    "lite_direct" writes one MindIR exported at MAX_SEQ_LENGTH and checks it in MindSpore
    Lite at several lengths (it needs the Lite shim built by scripts/setup.sh).
    Returns the version folder. Raises ExportError, CheckpointError, ConfigError or
    MetadataError (all with a message meant for the user).
    """
    if runtime not in RUNTIMES:
        raise ExportError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "lite_direct":
        if buckets is not None and tuple(buckets) != (settings.MAX_SEQ_LENGTH,):
            raise ExportError(
                "--buckets does not apply to --runtime lite_direct (the default): its one model runs every window "
                "at the window's own length; for one model per bucket add --runtime serving"
            )
        if compute_dtype != "float32":
            raise ExportError("--runtime lite_direct (the default) runs on CPU, where matmuls run in float32; leave "
                              "out --fp16, or add --runtime serving for a GPU/Ascend export")
        buckets = (settings.MAX_SEQ_LENGTH,)
    elif buckets is None:
        buckets = settings.BUCKETS
    if batch_size <= 0:
        raise ExportError(f"batch size must be a positive integer, got {batch_size}")
    if compute_dtype not in COMPUTE_DTYPES:
        raise ExportError(f"compute dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
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
    # A lite_direct model runs only in Lite, which computes an exact GELU in one fused kernel; MindSpore would
    # compute that graph's GELU as tanh, so the MindIR is checked in Lite alone (bert_squad/model/network.py, GELU).
    lite_only = runtime == "lite_direct" and loaded.config.hidden_act == "gelu_erf"
    exported = build_network(loaded, compute_dtype, lite_only=True) if lite_only else net
    model_dir.mkdir(parents=True, exist_ok=True)
    _ensure_servable_config(model_dir, log)
    version = next_version(model_dir) if version is None else version
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=model_dir))
    try:
        model_files = {b: LITE_MODEL_FILE if runtime == "lite_direct" else model_file_name(b) for b in buckets}
        for bucket, file_name in model_files.items():
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
                model_sha256={name: sha256_file(staging / name) for name in set(model_files.values())},
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
