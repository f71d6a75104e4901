"""The numbered version folders of a servable (<servable dir>/<name>/<n>/, n >= 1, written by bert-squad-export):
which exist, the newest, the next to write, the one to serve, and whether one is whole enough to serve.

The serve command, the servable (servable_glue.py) and the exporter all read the folders through here.
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from bert_squad import protowire
from bert_squad.metadata import Metadata, MetadataError, check_model_files, read_metadata

MINDIR_GRAPH_FIELD = 7  # ModelProto.graph in MindSpore's mind_ir.proto
LATEST = "latest"


class VersionError(Exception):
    """No version folder can be served; the message says which and what to do."""


def numbers(root: Path) -> List[int]:
    """The version numbers exported under `root` (<servable dir>/<name>), ascending; none when it is missing."""
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def newest(root: Path) -> Optional[int]:
    """The highest version number under `root`, or None when nothing is exported."""
    found = numbers(root)
    return found[-1] if found else None


def next_number(root: Path) -> int:
    """The number a new export takes: one more than the highest (1 for a new servable)."""
    return (newest(root) or 0) + 1


def resolve(servable_dir: Path, name: str, version: int) -> int:
    """The version folder to serve: the one asked for, or the newest that has metadata."""
    root = servable_dir / name
    if not (root / "servable_config.py").is_file():
        raise VersionError(f"{root / 'servable_config.py'} not found: --servable-dir must hold "
                           f"{name}/servable_config.py")
    versions = numbers(root)
    if version:
        if version not in versions:
            raise VersionError(f"version {version} not found in {root} (found: {versions or 'none'})")
        chosen = version
    elif versions:
        chosen = versions[-1]
    else:
        raise VersionError(
            f"no exported model in {root}. Export one first: "
            f"bert-squad-export CHECKPOINT --servable-dir {servable_dir} --name {name}"
        )
    if not (root / str(chosen) / "metadata.json").is_file():
        raise VersionError(f"{root / str(chosen)} has no metadata.json: it was not written by bert-squad-export; "
                           f"re-export it or remove the folder")
    return chosen


@dataclass(frozen=True)
class Policy:
    """Which version folder to serve: the newest (`number` 0, "latest") or one number ("specific:N")."""

    number: int = 0

    @classmethod
    def parse(cls, text: str) -> "Policy":
        if text == LATEST:
            return cls()
        kind, _, number = text.partition(":")
        if kind != "specific" or not number.isdigit() or int(number) < 1:
            raise ValueError(f"{text!r} is not a version policy: give 'latest' or 'specific:N' (N >= 1)")
        return cls(int(number))

    def choose(self, found: List[int]) -> Optional[int]:
        """The version to serve among the folders `found`; None when it is not there."""
        if self.number:
            return self.number if self.number in found else None
        return found[-1] if found else None

    def __str__(self) -> str:
        return f"specific:{self.number}" if self.number else LATEST


def verify(folder: Path, device: str) -> Metadata:
    """Refuse what Serving would only report as "Load model failed": bad metadata, a changed
    vocabulary (sha256 recorded at export), a missing, empty, truncated or changed model file, a
    lite_direct or openvino export (CPU only) on a GPU/Ascend device, bf16 on a CPU without bf16.
    Returns the version's Metadata."""
    from bert_squad.runtimes import default_runtime, get_runtime

    try:
        meta = read_metadata(folder)
    except MetadataError as e:
        raise VersionError(str(e)) from None
    if get_runtime(meta.runtime).CPU_ONLY and device != "cpu":
        raise VersionError(f"{folder} was exported with --runtime {meta.runtime}, which runs on CPU only; for "
                           f"--device {device} export a version with bert-squad-export --runtime "
                           f"{default_runtime('fp16')} --fp16")
    _check_cpu_precision(folder, meta)
    for name in meta.mindir_files:
        path = folder / name
        if not complete_protobuf(path):
            raise VersionError(f"model file {path} ({path.stat().st_size} bytes) is truncated or corrupted: it is "
                               f"not one complete MindIR protobuf; copy it again or re-export the model")
    try:
        check_model_files(folder, meta)
    except MetadataError as e:
        raise VersionError(str(e)) from None
    return meta


def _check_cpu_precision(folder: Path, meta: Metadata) -> None:
    """A bf16 export copied to a CPU without native bf16 is refused here, with what to export instead."""
    from bert_squad.runtimes import get_runtime
    from bert_squad.runtimes.cpu_features import PrecisionUnsupported, check_precision, read_flags

    if get_runtime(meta.runtime).CPU_ONLY:
        try:
            check_precision(meta.precision, read_flags())
        except PrecisionUnsupported as e:
            raise VersionError(f"{folder} holds a {meta.precision} model, but {e} (re-export with "
                               "bert-squad-export)") from None


def complete_protobuf(path: Path) -> bool:
    """Whether the file is one protobuf whose top-level fields end exactly at its end (a cut copy's do
    not) and that holds a graph (MINDIR_GRAPH_FIELD). Reads only the field headers."""
    if path.stat().st_size == 0:
        return False
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            found = {number for number, wire_type, _, _ in protowire.fields(data)
                     if wire_type == protowire.LENGTH_DELIMITED}
        except protowire.WireError:  # cut short, or not protobuf at all
            return False
        return MINDIR_GRAPH_FIELD in found


def model_identity(meta: Metadata) -> str:
    """The model's identity: the sha256 recorded at export of its one model file; over several files, the
    sha256 of their sorted "name sha256" lines; "unknown" for versions exported before hashes were recorded."""
    hashes = meta.model_sha256
    if len(hashes) == 1:
        return next(iter(hashes.values()))
    if not hashes:
        return "unknown"
    import hashlib

    return hashlib.sha256("\n".join(f"{n} {h}" for n, h in sorted(hashes.items())).encode()).hexdigest()
