"""Command line of bert-squad-export."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Tuple

from bert_squad import settings
from bert_squad.model.config import ConfigError, read_config_file
from bert_squad.metadata import MetadataError
from bert_squad.runtimes import NAMES, PRECISIONS, RUNTIMES


def _buckets(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 128,256,384, got {text!r}"
        ) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _precision(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """--fp16 is kept as the old spelling of --precision fp16."""
    if args.fp16 and args.precision not in ("fp32", "fp16"):
        parser.error(f"--fp16 contradicts --precision {args.precision}; give one of them")
    return "fp16" if args.fp16 else args.precision


def _calibration(args: argparse.Namespace):
    from pathlib import Path

    from .exporter import default_calibration_file
    from .calibration import Calibration

    return Calibration(Path(args.calibration_data) if args.calibration_data else default_calibration_file(),
                       args.calibration_windows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bert-squad-export",
        description=(
            "Export a BERT SQuAD checkpoint to SERVABLE_DIR/NAME/N/: the MindIR files of the "
            "runtime (one per sequence-length bucket, or one resizable file), vocab.txt and metadata.json."
        ),
    )
    parser.add_argument(
        "checkpoint",
        help="MindSpore model zoo .ckpt file, or Hugging Face folder with config.json, "
        "model.safetensors and vocab.txt",
    )
    parser.add_argument("--vocab", help="vocab.txt (required for .ckpt files but the Hub one, which gets the "
                        "verified uncased BERT-base vocabulary)")
    parser.add_argument(
        "--config",
        help="config of a .ckpt file: the zoo's task_squad_config.yaml as written (its bert_net_cfg section), or "
        "JSON of those fields or of ours; fields left out keep the zoo BERT-base SQuAD values (default: BERT-base)",
    )
    case = parser.add_mutually_exclusive_group()
    case.add_argument("--lower-case", dest="do_lower_case", action="store_true", default=None,
                      help="lower-case text before WordPiece (default: from tokenizer_config.json, else yes)")
    case.add_argument("--no-lower-case", dest="do_lower_case", action="store_false",
                      help="keep case (cased models)")
    parser.add_argument("--servable-dir", default="servable", help="servable directory (default: %(default)s)")
    parser.add_argument("--name", default=settings.SERVABLE_NAME, help="servable name (default: %(default)s)")
    parser.add_argument("--version", type=_positive, help="version number (default: next free)")
    parser.add_argument("--force", action="store_true", help="replace an existing version")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="what the model computes in: fp32; bf16 or int8 on CPU (OpenVINO; bf16 needs AVX512_BF16 or AMX, "
        "int8 is calibrated on --calibration-data); fp16 for GPU/Ascend (default: %(default)s)",
    )
    parser.add_argument(
        "--runtime",
        choices=NAMES,
        help="serving: one MindIR per bucket, run by MindSpore Serving; lite_direct: one MindIR that "
        "MindSpore Lite resizes to each window's exact length (needs the shim of scripts/setup.sh); openvino: one "
        "OpenVINO IR run at each window's exact length (default: %s)"
        % ", ".join(f"{name} for {' and '.join(module.DEFAULT_FOR)}" for name, module in sorted(
            RUNTIMES.items(), key=lambda item: PRECISIONS.index(item[1].DEFAULT_FOR[0]))),
    )
    parser.add_argument("--calibration-data", metavar="SQUAD_JSON",
                        help="int8: SQuAD v1.1 file whose questions and contexts (never answers) calibrate the int8 "
                        "ranges and measure agreement with fp32 (default: $BERT_SQUAD_SHARED_DATA/%s, else "
                        "../shared/data/%s beside the repository)"
                        % (settings.DEFAULT_CALIBRATION_FILE, settings.DEFAULT_CALIBRATION_FILE))
    parser.add_argument("--calibration-windows", type=_positive, default=settings.CALIBRATION_WINDOWS,
                        help="int8: windows to calibrate on, one per question drawn with seed %d "
                        "(default: %%(default)s)" % settings.CALIBRATION_SEED)
    parser.add_argument(
        "--buckets",
        type=_buckets,
        help="runtime serving: sequence lengths to export, ascending, ending at %d (default: %s)"
        % (settings.MAX_SEQ_LENGTH, ",".join(map(str, settings.BUCKETS))),
    )
    parser.add_argument("--batch-size", type=_positive, default=1,
                        help="windows per model call (default: %(default)s; 1 suits CPU)")
    parser.add_argument("--fp16", action="store_true",
                        help="the same as --precision fp16 (float16 matmuls for GPU/Ascend, as the zoo trained)")
    sha = parser.add_mutually_exclusive_group()
    sha.add_argument("--expect-sha256", metavar="HEX", help="refuse a checkpoint with another sha256")
    sha.add_argument("--hub", action="store_true",
                     help="the checkpoint is the MindSpore Hub SQuAD file: verify its sha256 "
                     "(automatic when the file keeps its Hub name)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from bert_squad.model.checkpoint import CheckpointError  # imports MindSpore: after --help

    from .exporter import ExportError, export_version

    try:
        config = None
        if args.config:
            config, notes = read_config_file(args.config)
            for note in notes:
                print(note)
        export_version(
            args.checkpoint,
            args.servable_dir,
            name=args.name,
            vocab_file=args.vocab,
            do_lower_case=args.do_lower_case,
            config=config,
            buckets=args.buckets,
            batch_size=args.batch_size,
            version=args.version,
            force=args.force,
            precision=_precision(parser, args),
            expected_sha256=settings.HUB_CHECKPOINT_SHA256 if args.hub else args.expect_sha256,
            runtime=args.runtime,
            calibration=_calibration(args),
        )
    except (ExportError, CheckpointError, ConfigError, MetadataError) as exc:
        print(f"bert-squad-export: error: {exc}", file=sys.stderr)
        return 1
    return 0
