"""Uninstall from one of the image's venvs what it never imports.

    python deploy/prune_venv.py server    # .stack/py39: MindSpore Serving's master and workers
    python deploy/prune_venv.py front     # .stack/front: the front door (bert-squad-serve)

Each venv keeps the project and what its extra needs, transitively (markers evaluated, extras followed), and
nothing else, so the test tools and test weights setup.sh also installs go. Besides, the server venv loses:
- what only export needs (MindSpore builds the MindIR files, NNCF calibrates int8: together ~2.8 GB with what only
  they need): the image serves exported models only;
- what only the front door needs: since bert-squad-serve runs in .stack/front, the master and workers never import
  the HTTP stack (Starlette, uvicorn, httptools), Swagger UI's files or OpenTelemetry; setup.cfg's [server] extra
  keeps them for the test suite, which runs these on Python 3.9 too;
- grpcio-tools, which only generates the OIP gRPC stubs during set-up (grpc imports it only if present).
A distribution in these sets stays when something kept needs it, and `pip check` at the end fails the build
when a kept one lost a requirement. The folders of the uninstalled distributions that pip leaves empty (namespace
packages such as opentelemetry/) go too, so that nothing importable stays of them.

Run by deploy/Dockerfile with each venv's own Python.
"""
from __future__ import annotations

import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name

PROJECT = "bert-squad"
EXPORT_ONLY = {"mindspore", "nncf"}
FRONT_ONLY = {"starlette", "uvicorn", "httptools", "openapi-ui-bundles", "opentelemetry-api", "opentelemetry-sdk",
              "opentelemetry-proto", "opentelemetry-exporter-otlp-proto-grpc", "opentelemetry-exporter-otlp-proto-http"}
SETUP_ONLY = {"grpcio-tools"}
# venv: (the project's extras, distributions left out even where the extra names them, tools kept)
PROFILES = {
    # pip, setuptools and wheel stay: the venv stays usable for a pip install on top
    "server": (("server",), EXPORT_ONLY | FRONT_ONLY | SETUP_ONLY, {"pip", "setuptools", "wheel"}),
    # pip stays, for the same reason; `python -m venv` also brings setuptools, which the front door never imports
    "front": (("front",), set(), {"pip"}),
}


def needed(extras: tuple, left_out: set) -> set[str]:
    """The project and what it needs with these extras, transitively, but what is left out and what only that
    needs."""
    keep: set[str] = set()
    seen: set[tuple] = set()
    todo = [(PROJECT, extras)]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in left_out or (key, extras) in seen:
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


def folders_of(names: list) -> set:
    """Every folder under site-packages that holds a file of these distributions."""
    sites = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    folders = set()
    for name in names:
        for file in metadata.distribution(name).files or []:
            folder = Path(file.locate()).resolve().parent
            while folder not in sites and any(site in folder.parents for site in sites):
                folders.add(folder)
                folder = folder.parent
    return folders


def remove_if_empty(folders: set) -> None:
    """After the uninstall: those of `folders` that pip left empty (a namespace package's, such as opentelemetry/),
    deepest first."""
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def main(argv: list) -> int:
    if len(argv) != 1 or argv[0] not in PROFILES:
        print(f"usage: python deploy/prune_venv.py {{{','.join(PROFILES)}}}", file=sys.stderr)
        return 2
    extras, left_out, tools = PROFILES[argv[0]]
    installed = {canonicalize_name(d.metadata["Name"]) for d in metadata.distributions()}
    unneeded = sorted(installed - needed(extras, left_out) - tools)
    print(f"prune_venv: uninstalling from {sys.prefix} {len(unneeded)} distributions [{','.join(extras)}] does not "
          f"need: {' '.join(unneeded)}", flush=True)
    if unneeded:
        folders = folders_of(unneeded)
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", *unneeded], check=True)
        remove_if_empty(folders)
    return subprocess.run([sys.executable, "-m", "pip", "check"]).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
