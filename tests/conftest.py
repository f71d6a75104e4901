"""Shared test fixtures.

Tests marked `pure` import no MindSpore and also run under Python 3.11 (scripts/test.sh).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("BERT_SQUAD_SHARED_DATA", REPO.parent / "shared" / "data"))
SQUAD_DEV = SHARED_DATA / "squad-v1.1-dev.json"
SQUAD_DEV_HEAD = SHARED_DATA / "squad-v1.1-dev-head.json"
PY39 = Path(os.environ.get("BERT_SQUAD_PY39", REPO / ".stack" / "py39" / "bin" / "python"))
PY311 = Path(os.environ.get("BERT_SQUAD_PY311", REPO / ".stack" / "py311" / "bin" / "python"))
MODEL_TIMES_FILE = "model-times.jsonl"  # in the oracle servers' work dirs ($BERT_SQUAD_MODEL_TIMES)


def pytest_configure(config):
    config.addinivalue_line("markers", "pure: needs no MindSpore; also runs under Python 3.11")


def _has_mindspore() -> bool:
    import importlib.util

    return importlib.util.find_spec("mindspore") is not None


def pytest_ignore_collect(collection_path, config):
    """Without MindSpore (Python 3.11), skip importing test files that hold no `pure` test at all."""
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_") or _has_mindspore():
        return None
    return "mark.pure" not in collection_path.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def vocab_file() -> Path:
    """A real uncased BERT WordPiece vocabulary (30,522 entries)."""
    from oracle import uncased_vocab_file

    return uncased_vocab_file()


@pytest.fixture(scope="session")
def squad_head() -> Path:
    assert SQUAD_DEV_HEAD.is_file(), f"SQuAD dev head file missing: {SQUAD_DEV_HEAD}"
    return SQUAD_DEV_HEAD


ORACLE_BUCKETS = (64, 128, 384)


@pytest.fixture(scope="session")
def oracle_servable(tmp_path_factory):
    """A servable directory with the oracle model exported (answers span "paris" .. "france"), runtime serving."""
    from harness import export_servable
    from oracle import build_oracle_checkpoint, uncased_vocab_file

    root = tmp_path_factory.mktemp("oracle")
    config = build_oracle_checkpoint(root / "oracle.ckpt", uncased_vocab_file(), "paris", "france")
    servable_dir = export_servable(root / "servable", root / "oracle.ckpt", vocab_file=uncased_vocab_file(),
                                   config=config, buckets=ORACLE_BUCKETS, runtime="serving")
    return {"checkpoint": root / "oracle.ckpt", "config": config, "servable_dir": servable_dir}


@pytest.fixture(scope="module")
def oracle_servable_dir(tmp_path_factory) -> Path:
    """The oracle exported by a Python 3.9 subprocess: usable from tests running under Python 3.11 too."""
    from harness import export_oracle

    return export_oracle(tmp_path_factory.mktemp("oracle-export"))


@pytest.fixture(scope="module")
def oracle(oracle_servable_dir, tmp_path_factory):
    """A server of the subprocess-exported oracle, one per test module (client tests restart their own)."""
    from harness import Server

    with Server(tmp_path_factory.mktemp("oracle-run"), oracle_servable_dir) as server:
        yield server


@pytest.fixture(scope="session")
def oracle_lite_servable(oracle_servable, tmp_path_factory):
    """The same oracle exported for the lite_direct runtime: one resizable MindIR, exact-length windows."""
    from harness import export_servable
    from oracle import uncased_vocab_file

    return export_servable(tmp_path_factory.mktemp("oracle-lite") / "servable", oracle_servable["checkpoint"],
                           vocab_file=uncased_vocab_file(), config=oracle_servable["config"], runtime="lite_direct")


@pytest.fixture(scope="session")
def oracle_lite_server(oracle_lite_servable, tmp_path_factory):
    from harness import Server

    from bert_squad.serving.servable_glue import MODEL_TIMES_ENV

    workdir = tmp_path_factory.mktemp("oracle-lite-run")
    with Server(workdir, oracle_lite_servable, env={MODEL_TIMES_ENV: str(workdir / MODEL_TIMES_FILE)}) as server:
        yield server


@pytest.fixture(scope="session")
def oracle_server(oracle_servable, tmp_path_factory):
    from harness import Server

    from bert_squad.serving.servable_glue import MODEL_TIMES_ENV

    workdir = tmp_path_factory.mktemp("oracle-run")
    with Server(workdir, oracle_servable["servable_dir"],
                env={MODEL_TIMES_ENV: str(workdir / MODEL_TIMES_FILE)}) as server:
        yield server


@pytest.fixture(scope="session")
def oracle_model(oracle_servable):
    """The oracle network in-process (MindSpore, CPU): the reference for served outputs."""
    import mindspore as ms

    from bert_squad.model.checkpoint import build_network, load_checkpoint

    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    loaded = load_checkpoint(oracle_servable["checkpoint"], oracle_servable["config"])
    return build_network(loaded), loaded.config, ORACLE_BUCKETS
