"""The export on first start, on Serving's side (Python 3.9: the export needs MindSpore): the checkpoint the user
named, or the MindSpore Hub SQuAD checkpoint downloaded and verified, exported as the servable's first version.

`python -m bert_squad.serving.first_export --servable-dir DIR --name NAME ...`, started by the serve command
(bert_squad/server/first_export.py) when the servable has no version yet; its output is the serve command's.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from bert_squad.contract import EXIT_START_FAILED, PARENT_PID_ENV
from bert_squad.contract.processes import exit_with_parent


class ExportFailed(Exception):
    """Nothing could be exported; the message says why and what to do."""


def ensure_exported(args) -> None:
    """Export the checkpoint the user names, or the Hub checkpoint (the serve command found nothing exported)."""
    if importlib.util.find_spec("mindspore") is None:  # the container image serves exported models only
        raise ExportFailed(f"no exported model in {args.servable_dir / args.name}, and this installation has no "
                           f"MindSpore to export one: run bert-squad-export where MindSpore is installed (scripts/"
                           f"setup.sh) and mount or copy its version folder to {args.servable_dir / args.name}/1")
    from bert_squad.model.hub import DownloadError, fetch_checkpoint

    checkpoint, expected, vocab = args.checkpoint, None, args.vocab
    if checkpoint is None:
        if vocab is None:  # the Hub checkpoint ships none; it was trained with the uncased BERT-base one
            from bert_squad.model.vocab import VocabError, uncased_vocab

            try:
                vocab = uncased_vocab()
            except VocabError as e:
                raise ExportFailed(f"nothing is exported yet, so the MindSpore Hub checkpoint would be served, "
                                   f"but {e}") from e
            print(f"bert-squad-serve: vocabulary {vocab} (sha256 verified)", flush=True)
        print(f"bert-squad-serve: no exported model; fetching {args.hub_url}", flush=True)
        try:
            checkpoint = fetch_checkpoint(args.hub_url, args.hub_sha256, progress=_progress_bar())
        except DownloadError as e:
            raise ExportFailed(str(e)) from e
        expected = args.hub_sha256
    from bert_squad.model.checkpoint import CheckpointError
    from bert_squad.model.config import ConfigError, read_config_file
    from bert_squad.export.exporter import ExportError, export_version
    from bert_squad.metadata import MetadataError
    from bert_squad.runtimes import export_runtime

    log = lambda line: print(f"bert-squad-serve: {line}", flush=True)  # noqa: E731
    try:
        config = None
        if args.config:
            config, notes = read_config_file(args.config)
            for note in notes:
                log(note)
        export_version(checkpoint, args.servable_dir, name=args.name, vocab_file=vocab, config=config,
                       expected_sha256=expected, runtime=export_runtime(args.device),
                       log=log)
    except (ExportError, CheckpointError, ConfigError, MetadataError) as e:
        raise ExportFailed(f"cannot export {checkpoint}: {e}") from e


def _progress_bar():
    from tqdm import tqdm

    bar = tqdm(unit="B", unit_scale=True, desc="checkpoint")

    def update(done: int, total) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update


def parse_args(argv=None) -> argparse.Namespace:
    """The export's own command line: the serve command's export options, resolved by it
    (serving_python.export_command)."""
    p = argparse.ArgumentParser(prog="python -m bert_squad.serving.first_export", description=__doc__.split("\n\n")[0])
    p.add_argument("--servable-dir", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--hub-url", required=True)
    p.add_argument("--hub-sha256", required=True)
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--vocab", type=Path)
    p.add_argument("--config", type=Path)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    exit_with_parent(int(os.environ.pop(PARENT_PID_ENV)))  # a serve command killed meanwhile takes its export along
    try:
        ensure_exported(args)
    except ExportFailed as e:
        print(f"bert-squad-serve: error: {e}", file=sys.stderr, flush=True)
        return EXIT_START_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
