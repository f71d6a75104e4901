"""Export on first start: when the servable has no version yet, the serve command exports the checkpoint the user
names, or downloads and exports the MindSpore Hub SQuAD checkpoint, before it serves. The export needs MindSpore, so
it runs in a child process on Serving's Python (bert_squad/serving/first_export.py, serving_python.export_command).
"""
from __future__ import annotations

import os
import subprocess

from bert_squad import versions
from bert_squad.contract import PARENT_PID_ENV
from bert_squad.server.options import ServeError
from bert_squad.server.serving_python import export_command


def export_first(args) -> None:
    """In the serve process: when nothing is exported yet, export in a child process on the Serving side's Python,
    its output on ours; ServeError when it fails (its own error line says why)."""
    if versions.numbers(args.servable_dir / args.name) or args.version:
        return
    code = subprocess.call(export_command(args), env={**os.environ, PARENT_PID_ENV: str(os.getpid())})
    if code != 0:
        raise ServeError(f"nothing is exported in {args.servable_dir / args.name}, and the export on first start "
                         f"failed (exit code {code}; its error is above)")
