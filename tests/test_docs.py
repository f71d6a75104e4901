"""The docs tell the truth about the code: every option of every command is named in docs/, every relative link
lands on a file (and heading) that exists, the README stays a front page, and the shell examples marked runnable
run. A runnable example is a ```bash block on the line right after `<!-- runnable -->` (docs/development.md).
"""
from __future__ import annotations

import ast
import configparser
import importlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import PY39, REPO

DOCS = REPO / "docs"
README = REPO / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md")), *sorted((REPO / "bench" / "results").glob("*.md"))]
# Where commands are defined: every add_argument call in these folders is an option some command takes.
SOURCE_DIRS = ("bert_squad", "client", "export", "bench", "servable", "deploy", "scripts")
RUNNABLE = "<!-- runnable -->"
RUNNABLE_TIMEOUT_S = 120
README_MAX_LINES = 200
FIRST_SCREEN_LINES = 50
OPTION = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def commands() -> list[tuple[str, str, str]]:
    """(name, "module:function", how the docs spell its --help call) of every command: setup.cfg's console
    scripts and the benchmark's two."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    found = []
    for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines():
        name, _, target = (part.strip() for part in line.partition("="))
        found.append((name, target, f"bin/{name} --help"))
    return found + [("bench/run.py", "bench.run:main", "bench/run.py --help"),
                    ("bench.accuracy", "bench.accuracy:main", "-m bench.accuracy --help")]


def docs_text() -> str:
    return "\n".join(page.read_text(encoding="utf-8") for page in sorted(DOCS.glob("*.md")))


def undocumented(options, text: str) -> list[str]:
    return sorted(o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text))


def source_options() -> dict[str, set[str]]:
    """Option strings of every add_argument call in the project's code, by file, read with ast (no import, so
    also for commands whose modules need MindSpore)."""
    found: dict[str, set[str]] = {}
    for folder in SOURCE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "add_argument"):
                    continue
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                names = [arg.value if isinstance(arg, ast.Constant) else None for arg in node.args]
                assert names and all(isinstance(n, str) for n in names), (
                    f"{where}: add_argument with a name that is not a string literal; write the option out so "
                    "that this test can check that docs/ names it")
                options = {n for n in names if n.startswith("-")}
                if options:
                    found.setdefault(where, set()).update(options)
    return found


def help_options(text: str) -> set[str]:
    """Options listed in an argparse --help text (the lines of its options section), -h/--help left out."""
    options = set()
    for line in text.splitlines():
        if line.startswith("  -"):
            options.update(OPTION.findall(re.split(r"\s{2,}", line.strip())[0]))
    return options - {"-h", "--help"}


@pytest.mark.pure
def test_every_option_in_the_source_is_documented():
    by_place = source_options()
    assert len(by_place) > 50, "the source scan found almost no options: did the parsers move out of SOURCE_DIRS?"
    text = docs_text()
    missing = {where: undocumented(options, text) for where, options in by_place.items()}
    missing = {where: names for where, names in missing.items() if names}
    assert not missing, f"options no page of docs/ names (document each one): {missing}"


@pytest.mark.pure
@pytest.mark.parametrize("name, target, _spelling", commands(), ids=[c[0] for c in commands()])
def test_every_option_in_each_commands_help_is_documented(name, target, _spelling, capsys, monkeypatch):
    module_name, function = target.split(":")
    monkeypatch.syspath_prepend(str(REPO))  # bench/ is not installed
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        pytest.skip(f"{module_name} does not import here ({error}); "
                    "test_every_option_in_the_source_is_documented reads its options from the source")
    with pytest.raises(SystemExit) as exited:
        getattr(module, function)(["--help"])
    assert exited.value.code == 0
    options = help_options(capsys.readouterr().out)
    assert options, f"{name} --help listed no options"
    assert not undocumented(options, docs_text()), f"{name}: options no page of docs/ names"
    scanned = set().union(*source_options().values())
    assert options <= scanned, f"the source scan misses options of {name}: {sorted(options - scanned)}"


def _headings(text: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown text (code blocks left out)."""
    anchors = set()
    for line in FENCE.sub("", text).splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            title = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(title.replace(" ", "-"))
    return anchors


@pytest.mark.pure
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_relative_links_point_at_files_and_headings_that_exist(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(INLINE_CODE.sub("", FENCE.sub("", text))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in _headings(file.read_text(encoding="utf-8")):
            broken.append(f"{target} (no such heading in {file.relative_to(REPO)})")
    assert not broken, f"{page.relative_to(REPO)}: broken links {broken}"


@pytest.mark.pure
def test_readme_is_a_front_page_with_the_quick_start_on_its_first_screen():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move sections into docs/"
    first_screen = [line.split("#")[0].strip() for line in lines[:FIRST_SCREEN_LINES]]
    assert "make serve" in first_screen and "make test" in first_screen


def runnable_blocks() -> list[tuple[str, str | None]]:
    """(page:line, the block's shell code, or None when the marker is not followed by a ```bash block)."""
    blocks = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if line.strip() != RUNNABLE:
                continue
            where = f"{page.relative_to(REPO)}:{number + 1}"
            body = lines[number + 2:]
            closed = [i for i, text in enumerate(body) if text.strip() == "```"]
            if number + 1 < len(lines) and lines[number + 1].strip() == "```bash" and closed:
                blocks.append((where, "\n".join(body[:closed[0]])))
            else:
                blocks.append((where, None))
    return blocks


@pytest.mark.pure
def test_runnable_markers_mark_bash_blocks_and_every_command_has_a_runnable_help():
    blocks = runnable_blocks()
    assert not [where for where, code in blocks if code is None], f"{RUNNABLE} not followed by a ```bash block"
    code = "\n".join(code for _, code in blocks)
    assert not [spelling for _, _, spelling in commands() if spelling not in code], \
        "a command whose --help no runnable block shows"


@pytest.mark.parametrize("where, code", [b for b in runnable_blocks() if b[1]], ids=[b[0] for b in runnable_blocks()
                                                                                     if b[1]])
def test_runnable_examples_run(where, code):
    if not PY39.exists():
        pytest.skip(f"{PY39} missing: run scripts/setup.sh first")
    if "../shared/" in code and not (REPO.parent / "shared").is_dir():
        pytest.skip("the example reads ../shared/, which is not beside this checkout")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=REPO, env=os.environ.copy(),
                          capture_output=True, text=True, timeout=RUNNABLE_TIMEOUT_S)
    assert done.returncode == 0, f"{where} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
