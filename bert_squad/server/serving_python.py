"""The Python that runs MindSpore Serving: found and checked at start, and the command lines the serve process starts
with it.

MindSpore Serving 2.0.2 exists only for CPython 3.7-3.9 (end of life), so the serve process, which owns every public
port, runs on a maintained Python, and only Serving's master and workers and an export on first start (bert_squad/
serving) run on this one, as child processes. They meet at the master's internal unix socket and bert_squad.contract.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bert_squad.runtimes.lite_lib import REPO_ROOT

SERVING_PYTHON_ENV = "BERT_SQUAD_SERVING_PYTHON"
SETUP_VENV = REPO_ROOT / ".stack" / "py39" / "bin" / "python"  # what scripts/setup.sh builds
_PROBE = ("import importlib.util as u, sys; print('%d.%d' % sys.version_info[:2], "
          "u.find_spec('mindspore_serving') is not None)")


class ServingPythonError(Exception):
    """The Python meant to run Serving cannot; the message says why and what to do."""


def default() -> Path:
    """$BERT_SQUAD_SERVING_PYTHON, else the Python 3.9 venv scripts/setup.sh builds."""
    return Path(os.environ.get(SERVING_PYTHON_ENV) or SETUP_VENV)


def check(python: Path) -> str:
    """Its version ('3.9') when `python` runs and has mindspore_serving; else ServingPythonError."""
    fix = (f"run scripts/setup.sh (it builds {SETUP_VENV}), or give --serving-python (or ${SERVING_PYTHON_ENV}) the "
           f"python of a CPython 3.7-3.9 environment with mindspore-serving 2.0.2 installed")
    try:
        done = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise ServingPythonError(f"cannot run the Serving side's Python {python}: {e.strerror or e}; {fix}") from None
    except subprocess.TimeoutExpired:
        raise ServingPythonError(f"the Serving side's Python {python} did not answer within 60 s; {fix}") from None
    words = done.stdout.split()
    if done.returncode != 0 or len(words) != 2:
        raise ServingPythonError(f"the Serving side's Python {python} failed: {done.stderr.strip()[-500:]}; {fix}")
    version, has_serving = words
    if has_serving != "True":
        raise ServingPythonError(f"the Serving side's Python {python} (Python {version}) has no mindspore_serving; "
                                 f"{fix}")
    return version


def master_command(args, version: int) -> "list[str]":
    """A master process's command line (bert_squad/serving/master.py): what Serving needs of the serve command's
    options, with the version resolved; the master's threads come in its environment (contract.THREADS_ENV)."""
    return [str(args.serving_python), "-m", "bert_squad.serving.master", "--servable-dir", str(args.servable_dir),
            "--name", args.name, "--version", str(version), "--device", args.device, "--device-ids", args.device_ids,
            "--python-workers", str(args.python_workers), "--max-queued-requests", str(args.max_queued_requests),
            "--max-message-mb", str(args.max_message_mb), "--warmup-timeout", str(args.warmup_timeout),
            "--log-format", args.log_format]


def export_command(args) -> "list[str]":
    """The export on first start (bert_squad/serving/first_export.py): the serve command's export options."""
    command = [str(args.serving_python), "-m", "bert_squad.serving.first_export", "--servable-dir",
               str(args.servable_dir), "--name", args.name, "--device", args.device, "--hub-url", args.hub_url,
               "--hub-sha256", args.hub_sha256]
    for flag in ("checkpoint", "vocab", "config"):
        if getattr(args, flag):
            command += [f"--{flag}", str(getattr(args, flag))]
    return command
