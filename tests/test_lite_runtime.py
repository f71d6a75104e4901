"""The lite_direct runtime: one MindIR that MindSpore Lite resizes to each window's exact length.

Lite must run in a process started with its lib/ folder on LD_LIBRARY_PATH, so every Lite call
here goes through a child process (lite_runtime.score_in_subprocess, or a short script run by
`run_lite`); a Lite crash then fails the test instead of killing pytest. The reference is the
MindSpore network in this process, run at the same exact length.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bert_squad import settings
from bert_squad.runtimes.lite_direct import min_length, score_in_subprocess, score_windows
from bert_squad.metadata import METADATA_FILE, MetadataError, read_metadata
from bert_squad.runtimes.lite_lib import with_lite_on_library_path

# Lite vs MindSpore on the 2-layer oracle (scores up to ~40 in magnitude): measured up to 1.6e-5.
TOLERANCE = 5e-5


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """The oracle exported with runtime lite_direct (batch 1 and batch 2), and its MindSpore network."""
    from bert_squad.model.checkpoint import build_network, load_checkpoint
    from bert_squad.export.exporter import export_version
    from oracle import build_oracle_checkpoint, uncased_vocab_file

    root = tmp_path_factory.mktemp("lite")
    config = build_oracle_checkpoint(root / "oracle.ckpt", uncased_vocab_file(), "paris", "france")
    versions = {batch: export_version(root / "oracle.ckpt", root / "servable", vocab_file=uncased_vocab_file(),
                                      config=config, batch_size=batch, version=batch, runtime="lite_direct",
                                      log=lambda _: None)
                for batch in (1, 2)}
    net = build_network(load_checkpoint(root / "oracle.ckpt", config))
    return {"config": config, "versions": versions, "net": net, "root": root,
            "model": versions[1] / read_metadata(versions[1]).model_files[settings.MAX_SEQ_LENGTH]}


def window(length: int, seed: int, padding: int = 0):
    """int32 [1, length + padding] ids, mask and segments: two segments, `padding` masked positions at the end."""
    rng = np.random.RandomState(seed)
    ids = np.zeros((1, length + padding), np.int32)
    ids[0, :length] = rng.randint(1000, 30000, length)
    mask = (ids != 0).astype(np.int32)
    segment = np.zeros_like(ids)
    segment[0, length // 3:length] = 1
    return ids, mask, segment


def mindspore_scores(net, case):
    import mindspore as ms

    return [t.asnumpy() for t in net(*(ms.Tensor(a) for a in case))]


def run_lite(script: str, *args: str) -> dict:
    """Run `script` in a child Python with Lite on LD_LIBRARY_PATH; it prints one JSON object."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          env=with_lite_on_library_path(dict(os.environ)), timeout=300)
    assert done.returncode == 0, f"the Lite process failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_metadata_of_a_lite_direct_version(oracle):
    version = oracle["versions"][1]
    metadata = read_metadata(version)
    assert metadata.runtime == "lite_direct" and metadata.batch_size == 1
    assert metadata.buckets == (settings.MAX_SEQ_LENGTH,)
    assert metadata.model_files == {settings.MAX_SEQ_LENGTH: "bert.mindir"}
    assert sorted(p.name for p in version.iterdir()) == ["bert.mindir", METADATA_FILE, "vocab.txt"]


def test_scores_match_mindspore_at_exact_lengths_resizing_back_and_forth(oracle):
    """Lengths in an order that shrinks and grows the model, including 1, the number of heads and
    lengths under min_length (padded inside LiteModel), and windows that carry their own padding."""
    config = oracle["config"]
    lengths = [settings.MAX_SEQ_LENGTH, 1, config.num_attention_heads, 3, 17, 128, 255, settings.MAX_SEQ_LENGTH,
               64, 5, 200, 17]
    cases = [window(n, seed=k) for k, n in enumerate(lengths)] + [window(40, seed=99, padding=60)]
    scored = score_in_subprocess(oracle["model"], cases, threads=2, min_length=min_length(config))
    for case, (start, end) in zip(cases, scored):
        assert start.shape == end.shape == case[0].shape and start.dtype == np.float32
        expected = mindspore_scores(oracle["net"], case)
        valid = case[1] == 1
        for got, want in zip((start, end), expected):
            np.testing.assert_allclose(got[valid], want[valid], atol=TOLERANCE, rtol=0)
        assert np.all(start[~valid] < -1e8)  # log-softmax scoring: padding is out of the softmax


def test_min_length_is_needed(oracle):
    """Why LiteModel pads short calls: Lite 2.0 gets length == num_attention_heads wrong and stays
    wrong for every later call of that model. If this starts failing, a newer Lite fixed it."""
    heads = oracle["config"].num_attention_heads
    cases = [window(settings.MAX_SEQ_LENGTH, seed=1), window(heads, seed=2), window(settings.MAX_SEQ_LENGTH, seed=1)]
    scored = score_in_subprocess(oracle["model"], cases, threads=1, min_length=1)
    errors = [np.abs(start - mindspore_scores(oracle["net"], case)[0]).max() for case, (start, _) in zip(cases, scored)]
    assert errors[0] < TOLERANCE and errors[1] > 0.01 and errors[2] > 0.01, errors


def test_score_windows_batches_each_length_through_a_batch_2_model(oracle):
    """The model stage of the lite_direct runtime on a model exported with batch 2: three windows of
    one length (a full chunk and a padded one) and two other lengths, from two questions."""
    model = oracle["versions"][2] / "bert.mindir"
    lengths = [[50, 50, 17], [50, 9]]
    instances = []
    for q, question in enumerate(lengths):
        rows = [window(n, seed=10 * q + w, padding=60 - n) for w, n in enumerate(question)]
        instances.append([np.concatenate([r[k] for r in rows]) for k in range(3)] + [np.array(question, np.int32)])
    np.savez(oracle["root"] / "instances.npz", **{f"{q}_{k}": a for q, inst in enumerate(instances)
                                                    for k, a in enumerate(inst)})
    result = run_lite("""
        import json, sys
        import numpy as np
        from bert_squad.runtimes.lite_direct import LiteModel, score_windows
        with np.load(sys.argv[2]) as f:
            instances = [[f[f"{q}_{k}"] for k in range(4)] for q in range(2)]
        with LiteModel(sys.argv[1], threads=2, min_length=int(sys.argv[3])) as model:
            scores = score_windows(model, instances)
            batch = model.batch_size
        np.savez(sys.argv[2], **{f"{q}_{k}": a for q, s in enumerate(scores) for k, a in enumerate(s)})
        print(json.dumps({"batch_size": batch}))
        """, str(model), str(oracle["root"] / "instances.npz"), str(min_length(oracle["config"])))
    assert result == {"batch_size": 2}
    with np.load(oracle["root"] / "instances.npz") as f:
        for q, (ids, mask, segment, question) in enumerate(instances):
            start, end = f[f"{q}_0"], f[f"{q}_1"]
            assert start.shape == end.shape == ids.shape
            for w, n in enumerate(question):
                expected = mindspore_scores(oracle["net"], (ids[w:w + 1, :n], mask[w:w + 1, :n], segment[w:w + 1, :n]))
                np.testing.assert_allclose(start[w, :n], expected[0][0], atol=TOLERANCE, rtol=0)
                np.testing.assert_allclose(end[w, :n], expected[1][0], atol=TOLERANCE, rtol=0)
                assert np.all(start[w, n:] <= -1e9)  # past the window: batching.PAD_SCORE


@pytest.mark.pure
def test_score_windows_calls_the_model_once_per_length_and_chunk():
    class Recorder:
        batch_size = 2

        def __init__(self):
            self.calls = []

        def predict(self, ids, mask, segment):
            self.calls.append(ids.shape)
            return ids.astype(np.float32), -ids.astype(np.float32)

    ids = np.arange(1, 31, dtype=np.int32).reshape(3, 10)
    instances = [(ids, np.ones_like(ids), np.zeros_like(ids), np.array([4, 10, 4], np.int32)),
                 (ids[:1], np.ones_like(ids[:1]), np.zeros_like(ids[:1]), np.array([4], np.int32))]
    model = Recorder()
    (start, end), (start2, _) = score_windows(model, instances)
    assert model.calls == [(2, 4), (2, 4), (2, 10)]  # three windows of length 4: a full chunk, then a padded one
    np.testing.assert_array_equal(start[1], ids[1])
    np.testing.assert_array_equal(start[0, :4], ids[0, :4])
    np.testing.assert_array_equal(end[2, :4], -ids[2, :4])
    np.testing.assert_array_equal(start2[0, :4], ids[0, :4])
    assert np.all(start[0, 4:] <= -1e9) and np.all(start2[0, 4:] <= -1e9)


def test_bad_models_and_calls_raise_lite_errors(oracle, tmp_path):
    data = oracle["model"].read_bytes()
    (tmp_path / "truncated.mindir").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.mindir").write_bytes(b"not a model" * 1000)
    messages = run_lite("""
        import json, sys
        import numpy as np
        from bert_squad.runtimes.lite_direct import LiteError, LiteModel
        model_path, folder = sys.argv[1], sys.argv[2]
        good = np.ones((1, 8), np.int32)
        messages = {}
        def attempt(name, action):
            try:
                action()
                messages[name] = None
            except LiteError as e:
                messages[name] = str(e)
        for name in ("missing", "truncated", "garbage"):
            attempt(name, lambda: LiteModel(f"{folder}/{name}.mindir"))
        model = LiteModel(model_path, threads=1)
        attempt("int64", lambda: model.predict(good.astype(np.int64), good, good))
        attempt("one_d", lambda: model.predict(good[0], good[0], good[0]))
        attempt("ragged", lambda: model.predict(good, good[:, :5], good))
        attempt("batch", lambda: model.predict(np.ones((2, 8), np.int32), np.ones((2, 8), np.int32),
                                              np.ones((2, 8), np.int32)))
        attempt("empty", lambda: model.predict(good[:, :0], good[:, :0], good[:, :0]))
        attempt("still_works", lambda: model.predict(good, good, good * 0))
        model.close()
        attempt("closed", lambda: model.predict(good, good, good))
        print(json.dumps(messages))
        """, str(oracle["model"]), str(tmp_path))
    assert "missing.mindir does not exist" in messages["missing"]
    for name in ("truncated", "garbage"):
        assert f"MindSpore Lite cannot load {tmp_path}/{name}.mindir" in messages[name]
        assert "complete MindIR written by bert-squad-export" in messages[name]
    assert "input_ids must be int32 [batch, length], got int64 of shape (1, 8)" in messages["int64"]
    assert "got int32 of shape (8,)" in messages["one_d"]
    assert "got shapes [(1, 8), (1, 5), (1, 8)]" in messages["ragged"]
    assert "export batch size is 1" in messages["batch"] and "(2, 8)" in messages["batch"]
    assert "length >= 1" in messages["empty"]
    assert messages["still_works"] is None
    assert "was closed" in messages["closed"]


def test_a_missing_shim_is_explained_and_no_library_path_is_needed(oracle, monkeypatch):
    from bert_squad.runtimes.lite_lib import RuntimeMissing

    with monkeypatch.context() as patch:
        patch.setenv("BERT_SQUAD_LITE_SHIM", str(oracle["root"] / "nope.so"))
        with pytest.raises(RuntimeMissing, match=r"nope.so does not exist; run scripts/setup.sh"):
            score_in_subprocess(oracle["model"], [window(5, seed=0)])
    # Without the Lite folder on LD_LIBRARY_PATH (a worker of the user's own start_servables script), the shim
    # loads the Lite libraries from that folder itself (lite_lib.load_library) and the model answers.
    load = ("import sys, numpy as np; from bert_squad.runtimes.lite_direct import LiteModel; "
            "print(LiteModel(sys.argv[1]).predict(*[np.ones((1, 8), np.int32)] * 3)[0].shape)")
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    done = subprocess.run([sys.executable, "-c", load, str(oracle["model"])], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "(1, 8)", done.stderr[-2000:]


@pytest.mark.parametrize("runtime", [[], ["--runtime", "lite_direct"]], ids=["default", "explicit"])
@pytest.mark.parametrize("extra, message", [
    (["--buckets", "128,384"], "--buckets does not apply to --runtime lite_direct (the default)"),
    # --fp16 alone now exports for Serving's buckets (the default runtime of --precision fp16)
    (["--fp16", "--runtime", "lite_direct"], "leave out --fp16, or add --runtime serving"),
])
def test_export_refuses_options_that_do_not_apply_to_lite_direct(oracle, tmp_path, capsys, runtime, extra, message):
    from bert_squad.export.cli import main
    from oracle import uncased_vocab_file

    oracle["config"].to_json_file(tmp_path / "config.json")
    argv = [str(oracle["root"] / "oracle.ckpt"), "--vocab", str(uncased_vocab_file()), "--config",
            str(tmp_path / "config.json"), "--servable-dir", str(tmp_path), *runtime, *extra]
    assert main(argv) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bert_squad").exists()


def test_metadata_runtime_field(oracle, tmp_path):
    """Files written before the field existed read as "serving"; a lite_direct version must have one bucket."""
    path = oracle["versions"][1] / METADATA_FILE
    data = json.loads(path.read_text())
    folder = tmp_path / "v"
    folder.mkdir()
    for name in ("bert.mindir", "vocab.txt"):
        (folder / name).symlink_to(oracle["versions"][1] / name)
    (folder / METADATA_FILE).write_text(json.dumps({k: v for k, v in data.items() if k != "runtime"}))
    assert read_metadata(folder).runtime == "serving"
    (folder / METADATA_FILE).write_text(json.dumps({**data, "runtime": "onnx"}))
    with pytest.raises(MetadataError, match=r"runtime must be one of \('serving', 'lite_direct', 'openvino'\), got 'onnx'"):
        read_metadata(folder)
    (folder / METADATA_FILE).write_text(json.dumps({**data, "buckets": [128, 384],
                                                    "model_files": {"128": "bert.mindir", "384": "bert.mindir"}}))
    with pytest.raises(MetadataError, match=r"lite_direct version has one model.*got \[128, 384\]"):
        read_metadata(folder)


@pytest.mark.parametrize("hf_act, form, other", [("gelu_new", "gelu_tanh", "gelu_erf"),
                                                  ("gelu", "gelu_erf", "gelu_tanh")])
def test_lite_computes_the_gelu_form_the_checkpoint_was_trained_with(tmp_path, hf_act, form, other):
    """MindSpore computes ops.GeLU as tanh, Lite as exact erf unless the op says otherwise: every export, whatever
    runs it, must compute the checkpoint's own form. Intermediate weights are scaled up so that the two forms
    differ clearly (they part most near |x| = 2)."""
    from safetensors.numpy import save_file

    from bert_squad.model.checkpoint import build_network, load_checkpoint, load_into_network, weight_names
    from bert_squad.model.config import BertConfig
    from bert_squad.model.network import BertForQuestionAnswering
    from bert_squad.export.exporter import export_version

    hf = {"model_type": "bert", "hidden_act": hf_act, "vocab_size": 30522, "hidden_size": 32,
          "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
          "max_position_embeddings": 384, "type_vocab_size": 2, "layer_norm_eps": 1e-12}
    config = BertConfig.from_hf_config(hf)
    assert config.hidden_act == form
    params = {name: p.asnumpy() for name, p in BertForQuestionAnswering(config).parameters_and_names()}
    for name in params:  # pre-activations of order 1 (where the forms part most), carried through to the scores
        if name.endswith(("intermediate.dense.weight", "layer.0.output.dense.weight", "layer.1.output.dense.weight",
                          "qa_outputs.weight")):
            params[name] = params[name] * (25 if "intermediate" in name else 50)
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({hf_name: params[ours] for ours, _, hf_name in weight_names(2)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(hf))
    (folder / "vocab.txt").write_text("\n".join(f"t{i}" for i in range(100)))
    lite = export_version(folder, tmp_path / "servable", version=1, log=lambda _: None)
    served = export_version(folder, tmp_path / "servable", version=2, runtime="serving", buckets=(64, 384),
                            log=lambda _: None)

    loaded = load_checkpoint(folder)
    same = build_network(loaded)
    different = BertForQuestionAnswering(BertConfig(**{**config.to_dict(), "hidden_act": other}))
    load_into_network(different, loaded)
    different.set_train(False)
    cases = [window(64, seed=3)]
    for model in (lite / "bert.mindir", served / "bert_64.mindir"):
        (start, end), = score_in_subprocess(model, cases, threads=2, min_length=min_length(config))
        want, wrong = mindspore_scores(same, cases[0]), mindspore_scores(different, cases[0])
        gap = max(float(np.abs(a - b).max()) for a, b in zip(want, wrong))
        off = max(float(np.abs(a - b).max()) for a, b in zip((start, end), want))
        scale = max(float(np.abs(a).max()) for a in want)
        print(f"{model.name}: Lite vs {form} {off:.2g}, {form} vs {other} {gap:.2g}, largest score {scale:.3g}")
        assert gap > 1e-3, f"the test model does not tell the GELU forms apart ({gap:.2g})"
        # The wrong form is `gap` away. Lite's tanh GELU is itself a cheaper approximation (up to 4e-6 per
        # activation against MindSpore's 4e-7; seen here 0.2 x gap after the amplified weights, 2.9e-6 on a
        # BERT-base-sized model), its erf GELU is within float noise (seen < 0.01 x gap).
        assert off < gap / (3 if form == "gelu_tanh" else 20), (
            f"{model.name} in Lite is {off:.2g} from the {form} network (forms: {gap:.2g})")
