"""The newcomer's path (issue 15): a verified vocabulary with no arguments, a servable directory that export
makes complete, the zoo's config as written, and the servable started from the user's own start_servables script."""
from __future__ import annotations

import hashlib
import json
import http.server
import shutil
import subprocess
import sys
import textwrap
import threading

import pytest

from bert_squad import settings
from bert_squad.metadata import read_metadata
from harness import PY39, Server, free_port

QUESTION = {"question": "Which capital?", "context": "The city of Paris is the capital of France, they say."}
ANSWER = "Paris is the capital of France"

# The oracle's config (tests/oracle.py) as the zoo writes task_squad_config.yaml: run settings, then bert_net_cfg
# with the training-only fields and the zoo's spellings, then the help and choices documents.
ZOO_YAML = """\
enable_modelarts: False
device_target: "Ascend"
do_train: "false"
epoch_num: 3
train_batch_size: 32
optimizer_cfg:
    optimizer: 'Lamb'
    AdamWeightDecay:
        learning_rate: 0.00005
        eps: 0.000001
bert_net_cfg:
    seq_length: 384
    vocab_size: 30522
    hidden_size: 32
    num_hidden_layers: 2
    num_attention_heads: 2
    intermediate_size: 64
    hidden_act: "gelu"
    hidden_dropout_prob: 0.1
    attention_probs_dropout_prob: 0.1
    max_position_embeddings: 512
    type_vocab_size: 2
    initializer_range: 0.02
    use_relative_positions: False
    dtype: mstype.float32
    compute_type: mstype.float16
---
# Help description for each configuration
device_target: "Device target, default is Ascend."
---
device_target: ["Ascend", "GPU"]
"""


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server of the files put in the returned folder; yields (folder, base URL)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: _Files(*a, directory=str(folder), **k))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def ask(server) -> str:
    from wire import rest_post  # MindSpore Serving's protos: not under Python 3.11

    reply = rest_post(server.rest_address, "/model/bert_squad:predict", {"instances": [QUESTION]}, timeout=60)
    return reply["instances"][0]["answer"]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- 1. the vocabulary


@pytest.mark.pure
def test_the_uncased_vocabulary_comes_from_the_installed_package_verified():
    from bert_squad.model.vocab import packaged_vocab, uncased_vocab

    vocab = uncased_vocab()
    assert vocab == packaged_vocab()
    data = vocab.read_bytes()
    assert len(data) == 231_508 and len(data.decode("utf-8").splitlines()) == 30_522
    assert hashlib.sha256(data).hexdigest() == "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"


@pytest.mark.pure
def test_a_changed_packaged_vocabulary_is_not_used_the_pinned_download_is(tmp_path, mirror):
    from bert_squad.model.vocab import packaged_vocab, uncased_vocab

    changed = tmp_path / "vocab.txt"
    changed.write_bytes(packaged_vocab().read_bytes().replace(b"paris", b"pariz"))
    folder, url = mirror
    shutil.copy(packaged_vocab(), folder / "vocab.txt")
    got = uncased_vocab(packaged=changed, url=f"{url}/vocab.txt", cache_dir=tmp_path / "cache")
    assert got == tmp_path / "cache" / "vocab.txt"
    assert sha256(got) == settings.UNCASED_VOCAB_SHA256


@pytest.mark.pure
def test_offline_without_the_package_the_message_names_both_ways_out(tmp_path):
    from bert_squad.model.vocab import VocabError, uncased_vocab

    url = f"http://127.0.0.1:{free_port()}/vocab.txt"  # nothing listens there
    with pytest.raises(VocabError) as caught:
        uncased_vocab(packaged=tmp_path / "not-installed" / "vocab.txt", url=url, cache_dir=tmp_path / "cache",
                      attempts=1)
    message = str(caught.value)
    assert url in message and "scripts/setup.sh" in message and "pip install" in message
    assert settings.UNCASED_VOCAB_PACKAGE in message and "--vocab" in message
    assert settings.UNCASED_VOCAB_SHA256 in message


@pytest.mark.pure
def test_the_set_up_check_of_the_packaged_vocabulary(tmp_path, monkeypatch):
    """scripts/setup.sh reinstalls the package when `python -m bert_squad.model.vocab --check-packaged` fails."""
    from bert_squad.model import vocab

    assert vocab.main(["--check-packaged"]) == 0
    changed = tmp_path / "vocab.txt"
    changed.write_bytes(vocab.packaged_vocab().read_bytes()[:-1])
    monkeypatch.setattr(vocab, "packaged_vocab", lambda: changed)
    assert vocab.main(["--check-packaged"]) == 1
    monkeypatch.setattr(vocab, "packaged_vocab", lambda: None)
    assert vocab.main(["--check-packaged"]) == 1


def test_serve_with_no_vocabulary_takes_the_verified_one_into_a_fresh_servable_dir(oracle_servable, tmp_path,
                                                                                      mirror):
    """`make serve` with nothing exported: the Hub checkpoint (here from a local mirror) gets the verified uncased
    vocabulary, whose sha256 metadata.json records; the servable folder did not exist and export completes it."""
    folder, url = mirror
    shutil.copy(oracle_servable["checkpoint"], folder / "squad.ckpt")
    oracle_servable["config"].to_json_file(tmp_path / "config.json")  # the oracle is not BERT-base
    servable = tmp_path / "fresh"  # no servable_config.py anywhere
    args = ["--hub-url", f"{url}/squad.ckpt", "--hub-sha256", sha256(folder / "squad.ckpt"),
            "--config", str(tmp_path / "config.json")]
    server = Server(tmp_path / "run", servable, extra_args=args, env={"BERT_SQUAD_CACHE": str(tmp_path / "cache")})
    with server:
        assert ask(server) == ANSWER
    assert "sha256 verified" in server.output()
    assert read_metadata(servable / "bert_squad" / "1").vocab_sha256 == settings.UNCASED_VOCAB_SHA256
    assert (servable / "bert_squad" / "servable_config.py").is_file()


# ---------------------------------------------------------------- 2 + 3. export into a new folder, zoo YAML


def test_export_into_a_new_folder_with_the_zoo_yaml_as_written_is_served(oracle_servable, tmp_path):
    (tmp_path / "task_squad_config.yaml").write_text(ZOO_YAML)
    servable = tmp_path / "new"
    done = subprocess.run([str(PY39), "-m", "bert_squad_export", str(oracle_servable["checkpoint"]),
                           "--config", str(tmp_path / "task_squad_config.yaml"),
                           "--vocab", str(_vocab()), "--servable-dir", str(servable)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ("ignored training-only fields seq_length, hidden_dropout_prob, attention_probs_dropout_prob, "
            "initializer_range") in done.stdout
    assert "compute_type float16" in done.stdout
    meta = read_metadata(servable / "bert_squad" / "1")
    assert meta.config == oracle_servable["config"]  # gelu read as the zoo's tanh GELU, eps the zoo's
    with Server(tmp_path / "run", servable) as server:
        assert ask(server) == ANSWER


def _vocab():
    from oracle import uncased_vocab_file

    return uncased_vocab_file()


# ---------------------------------------------------------------- 5. the user's own start_servables script

USER_SCRIPT = textwrap.dedent("""\
    import sys
    from mindspore_serving import server

    servable_dir, grpc_address, rest_address = sys.argv[1:4]
    try:
        server.start_servables(server.ServableStartConfig(servable_directory=servable_dir,
                                                          servable_name="bert_squad", device_ids=0),
                               enable_lite=True)
    except RuntimeError as e:
        print(f"start_servables raised: {e}", flush=True)
        sys.exit(3)
    server.start_grpc_server(grpc_address)
    server.start_restful_server(rest_address)
    print("bert-squad-serve: ready (the user's own script)", flush=True)
""")


def _user_server(tmp_path, servable_dir, env=None) -> Server:
    script = tmp_path / "my_server.py"
    script.write_text(USER_SCRIPT)
    grpc_port, rest_port = free_port(), free_port()
    command = [str(PY39), str(script), str(servable_dir), f"127.0.0.1:{grpc_port}", f"127.0.0.1:{rest_port}"]
    clean = {k: v for k, v in __import__("os").environ.items() if k != "LD_LIBRARY_PATH"}
    server = Server(tmp_path / "run", command=command, grpc_port=grpc_port, rest_port=rest_port, env=env)
    server.env = {**clean, **(env or {})}  # no Lite folder on LD_LIBRARY_PATH: the servable finds it itself
    return server


def test_the_servable_started_from_the_users_own_start_servables_script_answers(oracle_lite_servable, tmp_path):
    with _user_server(tmp_path, oracle_lite_servable) as server:
        assert ask(server) == ANSWER


def test_a_runtime_that_cannot_load_makes_start_servables_raise(oracle_lite_servable, tmp_path):
    broken = tmp_path / "libbert_lite.so"
    broken.write_bytes(b"not a shared library")
    server = _user_server(tmp_path, oracle_lite_servable, env={"BERT_SQUAD_LITE_SHIM": str(broken)})
    with pytest.raises(RuntimeError):
        server.start(timeout=300)
    assert server.process.returncode == 3, server.output()
    assert "start_servables raised" in server.output()


# ---------------------------------------------------------------- 6. EM/F1 through a running server


def test_evaluate_through_a_running_server_prints_the_official_scores(oracle, tmp_path):
    """The oracle answers "Paris ... France": one question's truth is that span (EM 1, F1 1), the other's is
    "France" (EM 0; F1 of 'paris is capital of france' against 'france': P 1/5, R 1, F1 1/3). Mean: 50.00 / 66.67."""
    context = "The city of Paris is the capital of France, they say."
    qas = [{"id": "a", "question": "Which capital?", "answers": [{"text": ANSWER, "answer_start": 12}]},
           {"id": "b", "question": "Which country?", "answers": [{"text": "France", "answer_start": 37}]}]
    dataset = tmp_path / "dev.json"
    dataset.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": context, "qas": qas}]}]}))
    command = [sys.executable, "-m", "bert_squad.text.metric", str(dataset), "--server"]
    done = subprocess.run([*command, oracle.grpc_address], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "exact_match 50.00  f1 66.67  (2 questions, 0 without prediction)"
    rest = subprocess.run([*command, oracle.rest_address, "--rest", "--json", "--min-f1", "70"],
                          capture_output=True, text=True, timeout=300)
    assert rest.returncode == 1 and "F1 66.67 is below --min-f1 70" in rest.stderr
    assert json.loads(rest.stdout)["exact_match"] == 50.0

