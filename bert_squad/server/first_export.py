"""Export on first start: when the servable has no version yet, the serve command exports the checkpoint the user
names, or downloads and exports the MindSpore Hub SQuAD checkpoint, before it serves.

The export needs MindSpore, so it runs in a child process on the Serving side's Python (serving_python.py):
`python -m bert_squad.server.first_export <bert-squad-serve options>`.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from bert_squad import versions
from bert_squad.server.contract import EXIT_START_FAILED, PARENT_PID_ENV
from bert_squad.server.options import ServeError, parse_args


def nothing_exported(args) -> bool:
    return not (versions.numbers(args.servable_dir / args.name) or args.version)


def export_first(args) -> None:
    """In the serve process: when nothing is exported yet, export in a child process on the Serving side's Python,
    its output on ours; ServeError when it fails (its own error line says why)."""
    from bert_squad.server.serving_python import export_command

    if not nothing_exported(args):
        return
    code = subprocess.call(export_command(args), env={**os.environ, PARENT_PID_ENV: str(os.getpid())})
    if code != 0:
        raise ServeError(f"nothing is exported in {args.servable_dir / args.name}, and the export on first start "
                         f"failed (exit code {code}; its error is above)")


def ensure_exported(args) -> None:
    """Export the checkpoint the user names, or the Hub checkpoint, when nothing is exported yet."""
    if not nothing_exported(args):
        return
    if importlib.util.find_spec("mindspore") is None:  # the container image serves exported models only
        raise ServeError(f"no exported model in {args.servable_dir / args.name}, and this installation has no "
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
                raise ServeError(f"nothing is exported yet, so the MindSpore Hub checkpoint would be served, "
                                 f"but {e}") from e
            print(f"bert-squad-serve: vocabulary {vocab} (sha256 verified)", flush=True)
        print(f"bert-squad-serve: no exported model; fetching {args.hub_url}", flush=True)
        try:
            checkpoint = fetch_checkpoint(args.hub_url, args.hub_sha256, progress=_progress_bar())
        except DownloadError as e:
            raise ServeError(str(e)) from e
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
        raise ServeError(f"cannot export {checkpoint}: {e}") from e


def main(argv=None) -> int:
    from bert_squad.server.processes import exit_with_parent

    args = parse_args(argv)
    exit_with_parent(int(os.environ.pop(PARENT_PID_ENV)))  # a serve command killed meanwhile takes its export along
    try:
        ensure_exported(args)
    except ServeError as e:
        print(f"bert-squad-serve: error: {e}", file=sys.stderr, flush=True)
        return EXIT_START_FAILED
    return 0


def _progress_bar():
    from tqdm import tqdm

    bar = tqdm(unit="B", unit_scale=True, desc="checkpoint")

    def update(done: int, total) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update


if __name__ == "__main__":
    sys.exit(main())
