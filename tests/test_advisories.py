"""The front door's venv is past every published advisory that docs/reliability-and-security.md lists: each package
installed there is at least the release that fixes each row, and setup.cfg's [front] floors are too."""
from __future__ import annotations

import configparser
import json
import re
import subprocess

import pytest

from harness import FRONT, REPO

DOC = REPO / "docs" / "reliability-and-security.md"
HEADING = "## Public-facing packages and their advisories"


def release(version: str) -> tuple:
    """The numeric release of a version string: '1.85.4' -> (1, 85, 4); '0.66b2' -> (0, 66)."""
    parts = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if not digits:
            break
        parts.append(int(digits.group()))
        if digits.group() != part:
            break
    return tuple(parts)


def advisories() -> list:
    """(package, advisory, fixed in) of the docs' table."""
    section = DOC.read_text().split(HEADING, 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return [tuple(cell.strip() for cell in row) for row in rows[1:] if len(row) == 3]


@pytest.mark.pure
def test_the_table_names_the_gRPC_advisories_of_the_issue():
    named = " ".join(advisory for _, advisory, _ in advisories())
    for cve in ("CVE-2023-44487", "CVE-2023-33953", "CVE-2023-4785", "CVE-2023-1428", "CVE-2023-32731"):
        assert cve in named


@pytest.mark.pure
def test_every_package_in_the_front_doors_venv_is_past_its_advisories():
    if not FRONT.exists():
        pytest.skip(f"{FRONT} missing: run scripts/setup.sh")
    names = sorted({package for package, _, _ in advisories()})
    code = ("import json, sys; from importlib import metadata as m; "
            "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    installed = json.loads(subprocess.run([str(FRONT), "-c", code, *names], capture_output=True, text=True,
                                          check=True).stdout)
    behind = [(package, installed[package], advisory, fixed) for package, advisory, fixed in advisories()
              if release(installed[package]) < release(fixed)]
    assert not behind, f"installed below an advisory's fix (package, installed, advisory, fixed in): {behind}"


@pytest.mark.pure
def test_setup_cfg_front_floors_are_past_the_advisories_of_the_packages_it_names():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    floors = {}
    for line in cfg["options.extras_require"]["front"].strip().splitlines():
        requirement = line.split(";")[0].strip()
        name, _, floor = requirement.partition(">=")
        assert floor, f"[front] {requirement}: a floor (>=), no exact or upper pin"
        floors[name.strip()] = floor.strip()
    for package, advisory, fixed in advisories():
        if package in floors:
            assert release(floors[package]) >= release(fixed), f"[front] {package}>={floors[package]} admits {advisory}"


@pytest.mark.pure
def test_release_reads_numbers_only():
    assert release("1.85.4") == (1, 85, 4) and release("0.66b2") == (0, 66) and release("2.6.0") > release("2.5.9")
