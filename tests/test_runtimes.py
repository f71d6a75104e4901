"""The runtime registry and its contract (bert_squad/runtimes/): every runtime module provides what base.Runtime
lists, the option lists come from the registry, and nothing outside bert_squad/runtimes/ branches on a runtime name."""
from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from bert_squad import settings
from bert_squad.runtimes import RUNTIMES, base, default_runtime, export_runtime, get_runtime

pytestmark = pytest.mark.pure

REPO = Path(__file__).resolve().parents[1]
BRANCH = re.compile(r"""(==|!=|in) *[(\[]?["'](%s)["']""" % "|".join(map(re.escape, RUNTIMES)))


def contract():
    """The names base.Runtime declares: its attributes and its functions."""
    functions = {name for name, value in vars(base.Runtime).items()
                 if inspect.isfunction(value) and not name.startswith("_")}
    return set(base.Runtime.__annotations__) | functions, functions


@pytest.mark.parametrize("name", list(RUNTIMES))
def test_every_runtime_module_provides_the_contract(name):
    module = get_runtime(name)
    names, functions = contract()
    assert not names - set(vars(module)), f"{module.__name__} lacks {sorted(names - set(vars(module)))}"
    assert all(callable(getattr(module, f)) for f in functions)
    assert module.NAME == name and module.PRECISIONS and set(module.DEFAULT_FOR) <= set(module.PRECISIONS)
    for function in functions:  # the contract's parameters, in its order
        expected = list(inspect.signature(getattr(base.Runtime, function)).parameters)[1:]
        assert list(inspect.signature(getattr(module, function)).parameters) == expected, function


def test_models_share_the_predict_of_the_model_protocol():
    from bert_squad.runtimes.lite_direct import LiteModel
    from bert_squad.runtimes.openvino import OpenVinoModel

    wanted = inspect.signature(base.Model.predict)
    for model in (LiteModel, OpenVinoModel):
        assert inspect.signature(model.predict) == wanted, model.__name__


def test_each_precision_has_one_default_runtime_that_runs_it():
    from bert_squad.runtimes import PRECISIONS

    for precision in PRECISIONS:
        homes = [name for name, module in RUNTIMES.items() if precision in module.DEFAULT_FOR]
        assert len(homes) == 1 and precision in get_runtime(homes[0]).PRECISIONS, precision
    # the documented defaults (README, bert-squad-export --help)
    assert [default_runtime(p) for p in ("fp32", "fp16", "bf16", "int8")] == \
        ["lite_direct", "serving", "openvino", "openvino"]
    with pytest.raises(ValueError, match="precision must be one of"):
        default_runtime("fp8")


def test_the_serve_commands_export_runs_on_its_device():
    assert export_runtime("cpu") == default_runtime("fp32")
    for device in ("gpu", "ascend"):
        assert not get_runtime(export_runtime(device)).CPU_ONLY


def test_an_unknown_runtime_names_the_known_ones():
    with pytest.raises(ValueError, match=r"runtime must be one of \('serving', 'lite_direct', 'openvino'\), got 'x'"):
        get_runtime("x")


def test_the_option_lists_come_from_the_registry(monkeypatch):
    """cpu_features refuses what no CPU-only runtime runs; the exporter's --precision choices are the union."""
    from bert_squad.runtimes import CPU_PRECISIONS, PRECISIONS
    from bert_squad.runtimes.cpu_features import PrecisionUnsupported, check_precision

    assert set(PRECISIONS) == {p for module in RUNTIMES.values() for p in module.PRECISIONS}
    assert set(CPU_PRECISIONS) == {p for module in RUNTIMES.values() if module.CPU_ONLY for p in module.PRECISIONS}
    for precision in set(PRECISIONS) - set(CPU_PRECISIONS):
        with pytest.raises(PrecisionUnsupported, match="is not a CPU precision"):
            check_precision(precision, {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})


def test_a_registered_module_is_a_runtime_metadata_accepts(monkeypatch):
    """Adding a runtime is one module and one registry line: metadata.json then takes its name and its files."""
    from bert_squad.metadata import Metadata, MetadataError
    from bert_squad.model.config import BertConfig

    fake = types.ModuleType("fake")
    fake.NAME, fake.PRECISIONS, fake.ONE_MODEL, fake.MINDIR = "fake", ("fp32",), True, False
    fake.all_files = lambda names: tuple(sorted(set(names) | {"weights.dat"}))
    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=settings.MAX_SEQ_LENGTH)
    fields = dict(buckets=(settings.MAX_SEQ_LENGTH,), batch_size=1, model_files={settings.MAX_SEQ_LENGTH: "m.fake"},
                  vocab_file="vocab.txt", vocab_sha256="0", do_lower_case=True, scoring=config.scoring,
                  compute_dtype="float32", config=config, source="s", source_sha256="0", created="now",
                  tool_version="t", runtime="fake")
    with pytest.raises(MetadataError, match="runtime must be one of"):
        Metadata(**fields)
    monkeypatch.setitem(RUNTIMES, "fake", fake)
    meta = Metadata(**fields)
    assert meta.all_model_files == ("m.fake", "weights.dat") and meta.mindir_files == ()
    with pytest.raises(MetadataError, match="fake version has one model"):
        Metadata(**{**fields, "buckets": (128, settings.MAX_SEQ_LENGTH),
                    "model_files": {128: "m.fake", settings.MAX_SEQ_LENGTH: "m.fake"}})
    with pytest.raises(MetadataError, match="runtime fake runs precision fp32, not 'fp16'"):
        Metadata(**{**fields, "precision": "fp16", "compute_dtype": "float16"})


def test_the_openvino_ir_keeps_its_weights_file_beside_it():
    from bert_squad.runtimes import openvino

    assert openvino.all_files([openvino.MODEL_FILE]) == tuple(sorted({openvino.MODEL_FILE, openvino.WEIGHTS_FILE}))


def test_the_serving_scorer_packs_windows_into_their_buckets():
    """The serving runtime calls each declared bucket model once with the windows that fit it best."""
    from bert_squad.runtimes import serving

    calls = {}

    class Declared:
        def __init__(self, bucket):
            self.bucket = bucket

        def call(self, rows):
            calls.setdefault(self.bucket, []).append([len(ids) for ids, _, _ in rows])
            return [(np.full(len(ids), self.bucket, np.float32), np.zeros(len(ids), np.float32)) for ids, _, _ in rows]

    models = {128: Declared(128), 384: Declared(384)}
    score = serving.open_scorer(Path("unused"), types.SimpleNamespace(buckets=(128, 384)), {}, models)
    ids = np.ones((2, settings.MAX_SEQ_LENGTH), np.int32)
    (start, _), = score([(ids, ids, np.zeros_like(ids), np.array([100, 300], np.int32))])
    assert calls == {128: [[128]], 384: [[384]]}
    assert start[0, :128].tolist() == [128] * 128 and start[1].tolist() == [384] * settings.MAX_SEQ_LENGTH


def test_no_runtime_name_is_branched_on_outside_the_runtimes_package():
    files = [p for folder in ("bert_squad", "servable", "export") for p in (REPO / folder).rglob("*.py")
             if (REPO / "bert_squad" / "runtimes") not in p.parents]
    assert len(files) > 20
    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in files
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if BRANCH.search(line)]
    assert not found, "ask bert_squad.runtimes.get_runtime instead:\n" + "\n".join(found)


def test_the_registry_imports_no_engine():
    """The servable's master and the pure tools import the registry; the engines load only in check_engine."""
    import subprocess

    code = ("import sys, bert_squad.runtimes, bert_squad.metadata; "
            "print(sorted(m for m in ('openvino', 'mindspore', 'mindspore_serving') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": ":".join(sys.path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
