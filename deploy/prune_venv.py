"""Uninstall from the image's venv what serving never imports.

The image serves exported models only, so the export-only distributions go (MindSpore builds the MindIR
files, NNCF calibrates int8: together ~2.8 GB with what only they need), and so does everything else that the
project's `server` extra does not need: the test tools and test weights setup.sh also installs.

Run by deploy/Dockerfile with the venv's Python: python deploy/prune_venv.py
"""
from __future__ import annotations

import subprocess
import sys
from importlib import metadata

from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name

PROJECT, EXTRAS = "bert-squad", ("server",)
EXPORT_ONLY = {"mindspore", "nncf"}
TOOLS = {"pip", "setuptools", "wheel"}  # kept: the venv stays usable for a pip install on top


def needed() -> set[str]:
    """The project and what it needs, transitively, for serving (markers evaluated, extras followed)."""
    keep: set[str] = set()
    seen: set[tuple] = set()
    todo = [(PROJECT, EXTRAS)]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in EXPORT_ONLY or (key, extras) in seen:
            continue
        seen.add((key, extras))
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:  # an optional requirement that is not installed
            continue
        keep.add(key)
        environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or any(requirement.marker.evaluate(env) for env in environments):
                todo.append((requirement.name, tuple(sorted(requirement.extras))))
    return keep


def main() -> int:
    installed = {canonicalize_name(d.metadata["Name"]) for d in metadata.distributions()}
    unneeded = sorted(installed - needed() - TOOLS)
    print(f"prune_venv: uninstalling {len(unneeded)} distributions serving does not need: {' '.join(unneeded)}",
          flush=True)
    if unneeded:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", *unneeded], check=True)
    return subprocess.run([sys.executable, "-m", "pip", "check"]).returncode


if __name__ == "__main__":
    sys.exit(main())
