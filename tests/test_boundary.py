"""The line between the two Pythons (docs/operations.md "Processes"): the serve process, which owns every public port,
runs on a maintained Python and must import nothing only Serving's Python 3.9 venv has; Serving's side (the master,
the servable's glue in the workers, the export on first start) must import none of the front door."""
from __future__ import annotations

import json
import subprocess

import pytest

from harness import FRONT, PY39

# What the serve process imports, at start and later (lazily: the page, keys, traces, the version switch, smoke).
FRONT_DOOR = ["bert_squad.server.serve", "bert_squad.server.http", "bert_squad.server.http_limits",
              "bert_squad.server.serving_grpc", "bert_squad.server.grpc_listen", "bert_squad.server.oip.servicer",
              "bert_squad.server.versions_live", "bert_squad.server.upstream", "bert_squad.server.supervisor",
              "bert_squad.server.tracing", "bert_squad.server.keys", "bert_squad.server.page",
              "bert_squad.server.api_docs", "bert_squad.server.openapi", "bert_squad.server.smoke"]
ONLY_PY39 = ("mindspore", "mindspore_serving", "mindspore_lite", "openvino", "nncf", "tokenizers", "_mindspore_serving")
# What runs beside Serving on Python 3.9.
SERVING_SIDE = ["bert_squad.server.master", "bert_squad.server.servable_glue", "bert_squad.server.first_export"]
FRONT_ONLY = ("starlette", "uvicorn", "httptools", "h11", "opentelemetry") + tuple(
    module for module in FRONT_DOOR if module != "bert_squad.server.first_export")

IMPORTED = ("import importlib, json, sys; [importlib.import_module(m) for m in sys.argv[1:]]; "
            "print(json.dumps(sorted(sys.modules)))")


def imported(python, modules) -> list:
    if not python.exists():
        pytest.skip(f"{python} missing: run scripts/setup.sh")
    done = subprocess.run([str(python), "-c", IMPORTED, *modules], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def under(modules, roots) -> list:
    return [m for m in modules if any(m == root or m.startswith(root + ".") for root in roots)]


@pytest.mark.pure
def test_the_front_door_imports_nothing_only_servings_python_has():
    loaded = imported(FRONT, FRONT_DOOR)
    assert not under(loaded, ONLY_PY39), under(loaded, ONLY_PY39)


@pytest.mark.pure
def test_the_front_doors_python_is_maintained_and_its_grpc_current():
    code = "import sys, grpc, google.protobuf as p; print(sys.version_info[0], sys.version_info[1], grpc.__version__)"
    major, minor, grpc_version = subprocess.run([str(FRONT), "-c", code], capture_output=True, text=True,
                                                check=True).stdout.split()
    assert (int(major), int(minor)) >= (3, 10)
    assert tuple(int(x) for x in grpc_version.split(".")[:2]) >= (1, 58)


def test_servings_side_imports_none_of_the_front_door():
    loaded = imported(PY39, SERVING_SIDE)
    assert not under(loaded, FRONT_ONLY), under(loaded, FRONT_ONLY)
