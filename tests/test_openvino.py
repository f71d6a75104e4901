"""The openvino runtime: the IR built from our weights computes what network.py computes, the export
writes and checks each precision, and every precision answers through real Serving over gRPC and REST.

References are independent of the code under test: the MindSpore network, the float64 numpy forward
pass of tests/oracle.py, and the oracle's known answer.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from bert_squad import settings
from bert_squad.metadata import METADATA_FILE, MetadataError, read_metadata
from bert_squad.model.config import BertConfig
from bert_squad.runtimes import openvino as ov_runtime

pytest.importorskip("openvino")

# fp32 OpenVINO vs MindSpore / float64 numpy on the 2-layer oracle (scores up to ~40): measured up to 1.5e-5.
TOLERANCE = 1e-4
LENGTHS = (1, 2, 7, 130, 384)
CONTEXT = "The city of Paris is the capital of France, they say."


def window(length: int, seed: int, batch: int = 2):
    """int32 [batch, length] inputs, two segments; row 1 has its second half padded."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(1000, 30000, (batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    if batch > 1 and length > 1:
        mask[1, length // 2 + 1:] = 0
        ids[1, length // 2 + 1:] = 0
    segment = np.zeros_like(ids)
    segment[:, length // 3:] = 1
    return ids, mask, segment * mask


def _runs_natively(precision: str) -> bool:
    """Whether this CPU runs `precision` natively: the export refuses bf16 where it would be emulated."""
    from bert_squad.runtimes.cpu_features import PrecisionUnsupported, check_precision, read_flags

    try:
        check_precision(precision, read_flags())
    except PrecisionUnsupported:
        return False
    return True


PRECISIONS = tuple(p for p in ("fp32", "bf16", "int8") if _runs_natively(p))
NEEDS_BF16 = pytest.mark.skipif("bf16" not in PRECISIONS, reason="this CPU has no native bf16 (AVX512_BF16 or "
                                                                  "AMX-BF16): the export refuses bf16 here")


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """The oracle checkpoint, its MindSpore network, and one export per precision (calibrated on SQuAD dev-head)."""
    from bert_squad.model.checkpoint import build_network, load_checkpoint
    from bert_squad.export.exporter import export_version
    from bert_squad.export.calibration import Calibration
    from conftest import SQUAD_DEV_HEAD
    from harness import new_servable_dir
    from oracle import build_oracle_checkpoint, uncased_vocab_file

    root = tmp_path_factory.mktemp("openvino")
    config = build_oracle_checkpoint(root / "oracle.ckpt", uncased_vocab_file(), "paris", "france")
    servable = new_servable_dir(root / "servable")
    versions = {}
    for number, precision in enumerate(PRECISIONS, 1):
        versions[precision] = export_version(
            root / "oracle.ckpt", servable, vocab_file=uncased_vocab_file(), config=config, version=number,
            precision=precision, runtime="openvino", calibration=Calibration(SQUAD_DEV_HEAD, windows=20),
            log=lambda _: None)
    loaded = load_checkpoint(root / "oracle.ckpt", config)
    return {"config": config, "loaded": loaded, "net": build_network(loaded), "servable": servable,
            "versions": versions, "root": root}


def mindspore_scores(net, arrays):
    import mindspore as ms

    return [t.asnumpy() for t in net(*(ms.Tensor(a) for a in arrays))]


def test_penalties_are_the_networks():
    from bert_squad.model import network

    assert ov_runtime.ATTENTION_MASK_PENALTY == network.ATTENTION_MASK_PENALTY
    assert ov_runtime.SCORE_MASK_PENALTY == network.SCORE_MASK_PENALTY


def test_fp32_ir_matches_mindspore_and_the_numpy_reference_at_exact_lengths(oracle):
    import mindspore as ms

    from oracle import reference_forward

    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    model = ov_runtime.OpenVinoModel(oracle["versions"]["fp32"] / ov_runtime.MODEL_FILE, "fp32", threads=2)
    zoo_weights = {name: p.asnumpy() for name, p in ms.load_checkpoint(str(oracle["root"] / "oracle.ckpt")).items()}
    for length in (*LENGTHS, 64, 3):  # back and forth: every call runs at its own shape
        arrays = window(length, seed=length)
        valid = arrays[1] == 1
        actual = model.predict(*arrays)
        for expected in (mindspore_scores(oracle["net"], arrays),
                         reference_forward(zoo_weights, oracle["config"], *arrays)):
            for a, e in zip(actual, expected):
                assert a.shape == arrays[0].shape and a.dtype == np.float32
                assert np.abs(a - e)[valid].max() < TOLERANCE


def test_padding_to_the_length_step_keeps_the_scores(oracle):
    """The served model pads each call to a multiple of settings.OPENVINO_LENGTH_STEP: masked, so the real
    tokens score as at their exact length, and the output keeps the call's length."""
    path = oracle["versions"]["fp32"] / ov_runtime.MODEL_FILE
    exact = ov_runtime.OpenVinoModel(path, "fp32")
    stepped = ov_runtime.OpenVinoModel(path, "fp32", step=settings.OPENVINO_LENGTH_STEP, warm_up=True)
    for length in (1, 17, 100, 384):
        arrays = window(length, seed=length)
        valid = arrays[1] == 1
        for a, e in zip(stepped.predict(*arrays), exact.predict(*arrays)):
            assert a.shape == e.shape == arrays[0].shape
            assert np.abs(a - e)[valid].max() < 1e-5


@pytest.mark.parametrize("hidden_act", ["gelu_erf", "gelu_tanh"])
@pytest.mark.parametrize("scoring", ["logits", "log_softmax"])
def test_numerics_follow_the_config(tmp_path, hidden_act, scoring):
    """GELU form, LayerNorm epsilon and scoring come from the config, as in network.py; a trained-looking
    network (weights scaled up so the GELU form matters) agrees with MindSpore in each combination."""
    import mindspore as ms

    from bert_squad.model.network import BertForQuestionAnswering

    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    config = BertConfig(vocab_size=500, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=96, max_position_embeddings=384, layer_norm_eps=1e-3,
                        hidden_act=hidden_act, scoring=scoring)
    ms.set_seed(1)
    net = BertForQuestionAnswering(config)
    for name, p in net.parameters_and_names():
        if name.endswith(".weight") or "embeddings" in name:
            p.set_data(ms.Tensor(p.asnumpy() * 40))
    net.set_train(False)
    weights = {name: p.asnumpy() for name, p in net.parameters_and_names()}
    model = ov_runtime.OpenVinoModel(ov_runtime.save_model(ov_runtime.build_model(weights, config), tmp_path),
                                     "fp32")
    arrays = tuple(a % 500 if k == 0 else a for k, a in enumerate(window(40, seed=5)))
    valid = arrays[1] == 1
    for a, e in zip(model.predict(*arrays), mindspore_scores(net, arrays)):
        assert np.abs(a - e)[valid].max() < 1e-3 * max(1.0, np.abs(e[valid]).max())


def test_metadata_records_precision_calibration_and_agreement(oracle):
    from conftest import SQUAD_DEV_HEAD

    for precision, version in oracle["versions"].items():
        meta = read_metadata(version)
        assert (meta.runtime, meta.precision, meta.compute_dtype) == ("openvino", precision, "float32")
        assert sorted(p.name for p in version.iterdir()) == ["bert.bin", "bert.xml", METADATA_FILE, "vocab.txt"]
        assert set(meta.model_sha256) == {"bert.xml", "bert.bin"}
        assert (meta.calibration is not None) == (precision == "int8")
        assert (meta.agreement is not None) == (precision != "fp32")
    int8 = read_metadata(oracle["versions"]["int8"])
    assert int8.calibration["windows"] == 20 and int8.calibration["seed"] == settings.CALIBRATION_SEED
    assert int8.calibration["file"] == str(SQUAD_DEV_HEAD.resolve()) and int8.calibration["seconds"] > 0
    for precision in [p for p in PRECISIONS if p != "fp32"]:
        agreement = read_metadata(oracle["versions"][precision]).agreement
        assert agreement["windows"] == settings.AGREEMENT_WINDOWS
        assert 0.5 <= agreement["same_best_start_and_end"] <= 1.0 and agreement["median_score_correlation"] > 0.9


@NEEDS_BF16
def test_int8_ir_holds_quantized_matmuls_and_bf16_differs_from_fp32(oracle):
    """The int8 IR is quantized (FakeQuantize nodes); bf16 runs the fp32 IR in another precision: close to
    fp32, not equal."""
    xml = {p: (v / ov_runtime.MODEL_FILE).read_text() for p, v in oracle["versions"].items()}
    assert "FakeQuantize" in xml["int8"] and "FakeQuantize" not in xml["fp32"]
    weights = {p: (v / ov_runtime.WEIGHTS_FILE).read_bytes() for p, v in oracle["versions"].items()}
    assert weights["bf16"] == weights["fp32"]
    path = oracle["versions"]["bf16"] / ov_runtime.MODEL_FILE
    arrays = window(100, seed=9, batch=1)
    fp32 = ov_runtime.OpenVinoModel(path, "fp32").predict(*arrays)
    bf16 = ov_runtime.OpenVinoModel(path, "bf16").predict(*arrays)
    difference = max(float(np.abs(a - b).max()) for a, b in zip(fp32, bf16))
    assert 0 < difference < 1.0


def test_changed_weights_file_is_refused(oracle, tmp_path):
    import shutil

    from bert_squad.metadata import check_model_files

    copy = tmp_path / "1"
    shutil.copytree(oracle["versions"]["fp32"], copy)
    data = bytearray((copy / "bert.bin").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "bert.bin").write_bytes(bytes(data))
    with pytest.raises(MetadataError, match="bert.bin does not match the sha256"):
        check_model_files(copy, read_metadata(copy))
    (copy / "bert.bin").unlink()
    with pytest.raises(MetadataError, match=r"model files \['bert.bin'\].*missing"):
        read_metadata(copy)


def export_cli(oracle, tmp_path, *extra):
    from bert_squad.export.cli import main
    from oracle import uncased_vocab_file

    oracle["config"].to_json_file(tmp_path / "config.json")
    return main([str(oracle["root"] / "oracle.ckpt"), "--vocab", str(uncased_vocab_file()), "--config",
                 str(tmp_path / "config.json"), "--servable-dir", str(tmp_path / "out"), *extra])


@pytest.mark.parametrize("extra, message", [
    (["--precision", "int8", "--runtime", "lite_direct"], "--runtime lite_direct runs precision fp32; int8 runs in "
                                                          "--runtime openvino"),
    (["--precision", "bf16", "--runtime", "serving"], "--runtime serving runs precision fp32 or fp16"),
    (["--precision", "fp16", "--runtime", "openvino"], "--precision fp16 is for GPU/Ascend"),
    (["--precision", "int8", "--buckets", "128,384"], "--buckets does not apply to --runtime openvino"),
    (["--precision", "int8", "--calibration-data", "/nonexistent/squad.json"],
     "calibration file /nonexistent/squad.json does not exist; pass --calibration-data"),
])
def test_export_refuses_what_cannot_run(oracle, tmp_path, capsys, extra, message):
    assert export_cli(oracle, tmp_path, *extra) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "bert_squad" / "1").exists()


def test_bf16_refused_on_a_cpu_without_bf16(oracle, tmp_path, capsys, monkeypatch):
    from bert_squad.export import exporter

    monkeypatch.setattr(exporter, "read_flags", lambda: frozenset({"avx2", "avx512f", "avx512_vnni"}))
    assert export_cli(oracle, tmp_path, "--precision", "bf16") == 1
    err = capsys.readouterr().err
    assert "no native bf16" in err and "--precision int8" in err


def test_fp16_flag_is_the_old_spelling_of_precision_fp16(oracle, tmp_path, capsys):
    with pytest.raises(SystemExit):
        export_cli(oracle, tmp_path, "--fp16", "--precision", "int8")
    assert "--fp16 contradicts --precision int8" in capsys.readouterr().err


def test_old_metadata_reads_as_fp32_and_precision_must_fit_the_runtime(oracle, tmp_path):
    import shutil

    folder = tmp_path / "v"
    shutil.copytree(oracle["versions"]["int8"], folder)
    data = json.loads((folder / METADATA_FILE).read_text())
    (folder / METADATA_FILE).write_text(json.dumps({**data, "precision": "fp16"}))
    with pytest.raises(MetadataError, match="runtime openvino runs precision fp32 or bf16 or int8, not 'fp16'"):
        read_metadata(folder)
    old = {k: v for k, v in data.items() if k not in ("precision", "calibration", "agreement")}
    (folder / METADATA_FILE).write_text(json.dumps(old))
    assert read_metadata(folder).precision == "fp32"


@pytest.fixture(scope="module", params=["fp32", pytest.param("bf16", marks=NEEDS_BF16), "int8"])
def served(request, oracle, tmp_path_factory):
    from harness import Server

    version = oracle["versions"][request.param].name
    with Server(tmp_path_factory.mktemp(f"ov-{request.param}"), oracle["servable"],
                extra_args=["--version", version]) as server:
        yield request.param, server


def test_every_precision_answers_over_grpc_and_rest(served):
    from mindspore_serving.client import Client

    from wire import rest_post

    precision, server = served
    assert f"precision={precision} runtime=openvino" in server.ready_line
    start = CONTEXT.index("Paris")
    expected = (CONTEXT[start:CONTEXT.index("France") + len("France")], start)
    contexts = [CONTEXT, "Paris, France.", "Filler words here. " * 60 + CONTEXT]
    replies = Client(server.grpc_address, "bert_squad", "predict").infer(
        [{"question": "Which capital?", "context": c} for c in contexts])
    for context, reply in zip(contexts, replies):
        first = context.index("Paris")
        assert (reply["answer"], int(reply["start"])) == (context[first:context.index("France") + 6], first)
    rest = rest_post(server.rest_address, "/model/bert_squad:predict",
                     {"instances": [{"question": "Which capital?", "context": CONTEXT}]}, timeout=60)
    result = rest["instances"][0]
    assert (result["answer"], result["start"]) == expected and 0.5 < result["score"] <= 1.0
