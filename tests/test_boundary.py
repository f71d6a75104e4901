"""The line between the two Pythons, as the folders draw it (docs/development.md "Where the code lives"):
bert_squad/front and bert_squad/server run in the serve process on a maintained Python and import nothing only
Serving's Python 3.9 venv has; bert_squad/serving runs beside MindSpore Serving on 3.9 and imports neither of them;
bert_squad/contract, which both import, imports none of the three. Every import counts, at module level or inside a
function (the graph is read from the source, as tests/test_imports.py reads it)."""
from __future__ import annotations

import ast
import json
import subprocess

import pytest

from harness import FRONT, REPO
from test_imports import PACKAGES, import_graph, module_files

pytestmark = pytest.mark.pure

ONLY_PY39 = {"mindspore", "mindspore_serving", "mindspore_lite", "openvino", "nncf", "tokenizers"}
FRONT_SIDE = ("bert_squad.front", "bert_squad.server")


def inside(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def reachable(start, graph) -> set:
    seen, todo = set(), list(start)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, ()))
    return seen


def imported_names(modules) -> set:
    """Top-level names of everything `modules` import (ours, the standard library's and third parties')."""
    files, found = module_files(PACKAGES), set()
    for module in modules:
        for node in ast.walk(ast.parse(files[module].read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            found.update(name.split(".")[0] for name in names)
    return found


def test_servings_side_imports_neither_the_front_door_nor_the_serve_command():
    graph = import_graph(PACKAGES)
    serving = [m for m in graph if inside(m, ("bert_squad.serving",))]
    assert serving
    crossed = sorted(m for m in reachable(serving, graph) if inside(m, FRONT_SIDE))
    assert not crossed, f"bert_squad.serving reaches {crossed}"


def test_the_contract_imports_none_of_the_three_sides():
    graph = import_graph(PACKAGES)
    contract = [m for m in graph if inside(m, ("bert_squad.contract",))]
    crossed = sorted(m for m in reachable(contract, graph) if inside(m, FRONT_SIDE + ("bert_squad.serving",)))
    assert not crossed, f"bert_squad.contract reaches {crossed}"


def test_the_serve_process_imports_nothing_only_servings_python_has():
    graph = import_graph(PACKAGES)
    front = [m for m in graph if inside(m, FRONT_SIDE)]
    assert "bert_squad.server.serve" in front and "bert_squad.front.http" in front
    ours = reachable(front, graph)
    serving = sorted(m for m in ours if inside(m, ("bert_squad.serving",)))
    assert not serving, f"the serve process reaches {serving}"
    # what the serve process's own modules import, anywhere in them (the library modules it reaches, such as the
    # runtimes' registry, import their engines inside functions that only the workers call: the next test imports
    # all of it on the front door's Python)
    assert not imported_names(front) & ONLY_PY39, sorted(imported_names(front) & ONLY_PY39)


def test_every_module_of_the_serve_process_imports_on_the_front_doors_python():
    if not FRONT.exists():
        pytest.skip(f"{FRONT} missing: run scripts/setup.sh")
    modules = [m for m in module_files(PACKAGES) if inside(m, FRONT_SIDE) and not m.endswith("_pb2_grpc")]
    code = ("import importlib, json, sys; [importlib.import_module(m) for m in sys.argv[1:]]; "
            "print(json.dumps([sys.version_info[:2], sorted(sys.modules)]))")
    done = subprocess.run([str(FRONT), "-c", code, *modules], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    version, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert tuple(version) >= (3, 10)
    assert not {m.split(".")[0] for m in loaded} & ONLY_PY39
