"""Export on first start: when the servable has no version yet, the serve command exports the checkpoint the user
names, or downloads and exports the MindSpore Hub SQuAD checkpoint, before it serves."""
from __future__ import annotations

import importlib.util

from bert_squad import versions
from bert_squad.server.options import ServeError


def ensure_exported(args) -> None:
    """Export the checkpoint the user names, or the Hub checkpoint, when nothing is exported yet."""
    if versions.numbers(args.servable_dir / args.name) or args.version:
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


def _progress_bar():
    from tqdm import tqdm

    bar = tqdm(unit="B", unit_scale=True, desc="checkpoint")

    def update(done: int, total) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update
