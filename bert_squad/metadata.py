"""The `metadata.json` of one servable version folder: what the export tool wrote and
everything the servable needs to run it (runtime, buckets, batch size, vocabulary, scoring).

Pure Python, so the servable and the clients can read it without MindSpore. Reading
validates the file against the folder: model files present, vocabulary unchanged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from bert_squad import settings
from bert_squad.model.config import BertConfig, ConfigError
from bert_squad.runtimes import get_runtime

METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1  # bump when a reader of the old layout would misread the new one
COMPUTE_DTYPES = ("float32", "float16")
# `runtime` names how the servable runs the model files: a key of the registry bert_squad.runtimes.RUNTIMES, whose
# module says which precisions it runs and which files it has. A lite_direct version is also a valid "serving"
# export with the one bucket MAX_SEQ_LENGTH, so a reader that predates the field still runs it correctly.
DEFAULT_RUNTIME = "serving"  # of files written before the field existed


class MetadataError(ValueError):
    """A version folder or its metadata.json that the servable cannot use."""


def sha256_file(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def validate_buckets(buckets: Sequence[int], max_position_embeddings: int) -> Tuple[int, ...]:
    """Buckets must rise strictly, end at MAX_SEQ_LENGTH (windows are built that long)
    and fit the position table of the model."""
    buckets = tuple(buckets)
    if not buckets:
        raise MetadataError("no sequence-length buckets given")
    if any(isinstance(b, bool) or not isinstance(b, int) or b <= 0 for b in buckets):
        raise MetadataError(f"buckets must be positive integers, got {list(buckets)}")
    if list(buckets) != sorted(set(buckets)):
        raise MetadataError(f"buckets must be strictly increasing, got {list(buckets)}")
    if buckets[-1] != settings.MAX_SEQ_LENGTH:
        raise MetadataError(
            f"the last bucket must be {settings.MAX_SEQ_LENGTH} (the window length, "
            f"settings.MAX_SEQ_LENGTH), got {list(buckets)}"
        )
    too_long = [b for b in buckets if b > max_position_embeddings]
    if too_long:
        raise MetadataError(
            f"buckets {too_long} exceed the model's max_position_embeddings "
            f"{max_position_embeddings}"
        )
    return buckets


@dataclass(frozen=True)
class Metadata:
    buckets: Tuple[int, ...]
    batch_size: int
    model_files: Dict[int, str]  # bucket -> MindIR file name inside the version folder
    vocab_file: str  # file name inside the version folder
    vocab_sha256: str
    do_lower_case: bool
    scoring: str  # "log_softmax" | "logits", as config.scoring
    compute_dtype: str
    config: BertConfig
    source: str  # checkpoint the export read
    source_sha256: str
    created: str  # ISO 8601, UTC
    tool_version: str
    runtime: str = DEFAULT_RUNTIME
    format_version: int = FORMAT_VERSION
    # MindIR file name -> sha256 at export; versions written before the field existed have none
    model_sha256: Dict[str, str] = field(default_factory=dict)
    precision: str = ""  # "" in files written before the field existed: read as fp16/fp32 from compute_dtype
    # int8: how many calibration windows, from which file, seed, seconds; None otherwise
    calibration: Optional[Dict[str, Any]] = None
    # bf16 / int8: measured against the fp32 network at export (bert_squad/runtimes/openvino.py); None otherwise
    agreement: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
        if not self.precision:
            object.__setattr__(self, "precision", "fp16" if self.compute_dtype == "float16" else "fp32")
        validate_buckets(self.buckets, self.config.max_position_embeddings)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise MetadataError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if sorted(self.model_files) != list(self.buckets):
            raise MetadataError(
                f"model_files {self.model_files} do not match the buckets {list(self.buckets)}"
            )
        if self.scoring != self.config.scoring:
            raise MetadataError(f"scoring {self.scoring!r} contradicts config.scoring {self.config.scoring!r}")
        try:
            runtime = get_runtime(self.runtime)
        except ValueError as exc:
            raise MetadataError(str(exc)) from None
        if self.precision not in runtime.PRECISIONS:
            raise MetadataError(f"runtime {self.runtime} runs precision {' or '.join(runtime.PRECISIONS)}, "
                                f"not {self.precision!r}")
        if (self.precision == "fp16") != (self.compute_dtype == "float16"):
            raise MetadataError(f"precision {self.precision!r} contradicts compute_dtype {self.compute_dtype!r}")
        if runtime.ONE_MODEL and self.buckets != (settings.MAX_SEQ_LENGTH,):
            raise MetadataError(
                f"a {self.runtime} version has one model, exported at {settings.MAX_SEQ_LENGTH} tokens and resized to "
                f"each window's length; its buckets must be [{settings.MAX_SEQ_LENGTH}], got {list(self.buckets)}"
            )
        unknown = sorted(set(self.model_sha256) - set(self.all_model_files))
        if unknown:
            raise MetadataError(f"model_sha256 names files {unknown} that are not among the model_files")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise MetadataError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
        if self.format_version != FORMAT_VERSION:
            raise MetadataError(
                f"metadata format_version {self.format_version} is not supported (this code reads "
                f"{FORMAT_VERSION}); re-export the model with this version of bert-squad-export"
            )

    @property
    def all_model_files(self) -> Tuple[str, ...]:
        """Every file of the model: model_files and the files the runtime keeps beside them (an IR's weights)."""
        return get_runtime(self.runtime).all_files(self.model_files.values())

    @property
    def mindir_files(self) -> Tuple[str, ...]:
        """The model files that are MindIR protobufs (none where the runtime's are not)."""
        return tuple(sorted(set(self.model_files.values()))) if get_runtime(self.runtime).MINDIR else ()

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format_version": self.format_version,
            "runtime": self.runtime,
            "buckets": list(self.buckets),
            "batch_size": self.batch_size,
            "model_files": {str(b): name for b, name in sorted(self.model_files.items())},
            "vocab_file": self.vocab_file,
            "vocab_sha256": self.vocab_sha256,
            "do_lower_case": self.do_lower_case,
            "scoring": self.scoring,
            "compute_dtype": self.compute_dtype,
            "config": self.config.to_dict(),
            "source": self.source,
            "source_sha256": self.source_sha256,
            "created": self.created,
            "tool_version": self.tool_version,
            "model_sha256": dict(sorted(self.model_sha256.items())),
            "precision": self.precision,
            **({"calibration": self.calibration} if self.calibration is not None else {}),
            **({"agreement": self.agreement} if self.agreement is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Metadata":
        try:
            return cls(
                format_version=data["format_version"],
                runtime=data.get("runtime", DEFAULT_RUNTIME),
                buckets=tuple(data["buckets"]),
                batch_size=data["batch_size"],
                model_files={int(b): name for b, name in data["model_files"].items()},
                vocab_file=data["vocab_file"],
                vocab_sha256=data["vocab_sha256"],
                do_lower_case=data["do_lower_case"],
                scoring=data["scoring"],
                compute_dtype=data["compute_dtype"],
                config=BertConfig.from_dict(data["config"]),
                source=data["source"],
                source_sha256=data["source_sha256"],
                created=data["created"],
                tool_version=data["tool_version"],
                model_sha256=dict(data.get("model_sha256", {})),
                precision=data.get("precision", ""),
                calibration=data.get("calibration"),
                agreement=data.get("agreement"),
            )
        except KeyError as exc:
            raise MetadataError(f"metadata lacks the field {exc.args[0]!r}") from None
        except MetadataError:
            raise
        except ConfigError as exc:
            raise MetadataError(f"metadata holds a bad config: {exc}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise MetadataError(f"metadata is malformed: {exc}") from None


def check_model_files(version_dir: Union[str, Path], metadata: Metadata) -> None:
    """Each model file against the sha256 recorded at export: a flipped bit in the weights leaves a MindIR that
    still loads and answers wrongly. Reads every file whole (0.3 s for BERT-base from the page cache), so the serve
    command runs it once at start, not every worker."""
    for name, expected in sorted(metadata.model_sha256.items()):
        path = Path(version_dir) / name
        if sha256_file(path) != expected:
            raise MetadataError(
                f"model file {path} does not match the sha256 recorded at export (it changed or was corrupted "
                "since); copy it again or re-export the model"
            )


def write_metadata(version_dir: Union[str, Path], metadata: Metadata) -> Path:
    path = Path(version_dir) / METADATA_FILE
    path.write_text(json.dumps(metadata.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def read_metadata(version_dir: Union[str, Path]) -> Metadata:
    """Read and check a version folder: every model file exists and the vocabulary's
    sha256 matches, so the servable never tokenizes with the wrong vocabulary."""
    version_dir = Path(version_dir)
    path = version_dir / METADATA_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MetadataError(
            f"{path} does not exist; export a model into {version_dir} with bert-squad-export"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetadataError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MetadataError(f"{path} must hold a JSON object")
    metadata = Metadata.from_dict(data)
    missing = [name for name in metadata.all_model_files if not (version_dir / name).is_file()]
    if missing:
        raise MetadataError(f"model files {missing} listed in {path} are missing from {version_dir}")
    vocab = version_dir / metadata.vocab_file
    if not vocab.is_file():
        raise MetadataError(f"vocabulary {vocab} listed in {path} is missing")
    if sha256_file(vocab) != metadata.vocab_sha256:
        raise MetadataError(
            f"vocabulary {vocab} does not match the sha256 recorded at export; "
            "restore the original file or re-export the model"
        )
    return metadata
