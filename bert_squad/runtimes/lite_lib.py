"""Where the server's native pieces live, and the environment its worker processes need.

MindSpore Serving runs models on CPU only through MindSpore Lite, which it dlopens as
`libmindspore-lite.so`. Workers are child processes started with the master's
environment, so the master puts the Lite folder first on LD_LIBRARY_PATH before it
starts them (first: MindSpore's own lib/ ships a different `libmindspore_core.so`). Our shim
does without it (load_library), so a worker started by the user's own start_servables
script runs lite_direct versions too.
"""
from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LITE_LIB_ENV = "BERT_SQUAD_LITE_LIB"
LITE_LIBRARY = "libmindspore-lite.so"
_MISSING = re.compile(r"(?:\S+: )?([^\s:/]+\.so[.\d]*): cannot open shared object file")


class RuntimeMissing(RuntimeError):
    """A native runtime the server needs is not installed."""


def lite_lib_dir() -> Path:
    """The MindSpore Lite lib/ folder: $BERT_SQUAD_LITE_LIB, else the one scripts/setup.sh built."""
    configured = os.environ.get(LITE_LIB_ENV)
    folder = Path(configured) if configured else REPO_ROOT / ".stack" / "lite" / "lib"
    if not (folder / LITE_LIBRARY).is_file():
        raise RuntimeMissing(
            f"MindSpore Lite runtime not found: {folder / LITE_LIBRARY} does not exist. "
            f"Run scripts/setup.sh (it builds .stack/lite/lib), or set {LITE_LIB_ENV} to the lib/ folder "
            f"of a MindSpore Lite 2.0 runtime that has {LITE_LIBRARY}."
        )
    return folder


def load_library(path: Path) -> ctypes.CDLL:
    """dlopen `path` (a library built against Lite), finding the Lite libraries it needs in lite_lib_dir() even
    when that folder is not on LD_LIBRARY_PATH (a Serving worker of the user's own start_servables script): each
    library the loader reports missing is loaded from that folder by its full path first (the loader then reuses
    it for that name), leaves first. Local scope, as the loader would have loaded them: with RTLD_GLOBAL, Lite's
    libraries bind each other's duplicate symbols and Lite crashes loading a model."""
    loaded = set()
    while True:
        try:
            return ctypes.CDLL(str(path))
        except OSError as exc:
            match = _MISSING.match(str(exc))
            if not match or match.group(1) in loaded or not (lite_lib_dir() / match.group(1)).is_file():
                raise
            load_library(lite_lib_dir() / match.group(1))
            loaded.add(match.group(1))


def with_lite_on_library_path(env: dict) -> dict:
    """A copy of `env` whose LD_LIBRARY_PATH starts with the Lite folder (once)."""
    folder = str(lite_lib_dir())
    parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != folder]
    return {**env, "LD_LIBRARY_PATH": os.pathsep.join([folder] + parts)}
