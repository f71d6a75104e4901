"""bert-squad-serve as a user runs it: export on first start, Hub download (from a local mirror), clear refusals."""
import hashlib
import http.server
import shutil
import subprocess
import threading

import pytest

from bert_squad.metadata import read_metadata
from harness import FRONT, Server, free_port, new_servable_dir
from wire import rest_post

QUESTION = {"question": "Which capital?", "context": "The city of Paris is the capital of France, they say."}
ANSWER = "Paris is the capital of France"


def ask(server):
    reply = rest_post(server.rest_address, "/model/bert_squad:predict", {"instances": [QUESTION]}, timeout=60)
    return reply["instances"][0]["answer"]


def oracle_files(oracle_servable, tmp_path):
    from oracle import uncased_vocab_file

    oracle_servable["config"].to_json_file(tmp_path / "config.json")
    return ["--vocab", str(uncased_vocab_file()), "--config", str(tmp_path / "config.json")]


def run_serve(*args, env=None, timeout=120):
    return subprocess.run([str(FRONT), "-m", "bert_squad.server.serve", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_first_start_exports_the_named_checkpoint_and_stops_cleanly(oracle_servable, tmp_path):
    servable = new_servable_dir(tmp_path / "servable")
    args = ["--checkpoint", str(oracle_servable["checkpoint"]), *oracle_files(oracle_servable, tmp_path)]
    server = Server(tmp_path / "run", servable, extra_args=args)
    with server:
        assert ask(server) == ANSWER
        workers = server.worker_pids()
        assert workers, "no worker process found"
    assert server.process.returncode == 0, server.output()
    assert server.worker_pids() == []
    assert "stopped" in server.output()
    assert read_metadata(servable / "bert_squad" / "1").runtime == "lite_direct"  # the CPU default


def test_a_cpu_only_export_is_refused_for_a_gpu_device(oracle_lite_servable, tmp_path):
    result = run_serve("--servable-dir", str(oracle_lite_servable), "--device", "gpu", "--workdir",
                       str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert "--runtime lite_direct, which runs on CPU only" in result.stderr and "--runtime serving" in result.stderr
    assert "Traceback" not in result.stderr


class _Mirror(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_no_checkpoint_downloads_it_from_the_hub_url_verifies_it_and_serves(oracle_servable, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(oracle_servable["checkpoint"], mirror / "squad.ckpt")
    sha = hashlib.sha256((mirror / "squad.ckpt").read_bytes()).hexdigest()
    handler = lambda *a, **k: _Mirror(*a, directory=str(mirror), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/squad.ckpt"
        args = ["--hub-url", url, "--hub-sha256", sha, *oracle_files(oracle_servable, tmp_path)]
        server = Server(tmp_path / "run", new_servable_dir(tmp_path / "servable"), extra_args=args,
                        env={"BERT_SQUAD_CACHE": str(tmp_path / "cache")})
        with server:
            assert ask(server) == ANSWER
        assert (tmp_path / "cache" / "squad.ckpt").is_file()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_no_network_names_the_url_the_checksum_and_the_flag(oracle_servable, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/squad.ckpt"  # nothing listens there
    result = run_serve("--servable-dir", str(new_servable_dir(tmp_path / "servable")), "--hub-url", url,
                       *oracle_files(oracle_servable, tmp_path), "--workdir", str(tmp_path / "run"),
                       env={"BERT_SQUAD_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    message = result.stderr
    assert url in message and "--checkpoint" in message
    assert "9e4e1a8e0cd905f9d7caf5d04fec1b0e94fcd210682f21c8bfbb354f3660bc97" in message
    assert "Traceback" not in message


@pytest.mark.parametrize("problem, files, expect", [
    ("no metadata", {"bert_384.mindir": b"x"}, "no metadata.json"),
    ("broken metadata", {"metadata.json": b"{not json"}, "not valid JSON"),
])
def test_a_bad_version_folder_is_refused_with_the_file_named(tmp_path, problem, files, expect):
    servable = new_servable_dir(tmp_path / "servable")
    version = servable / "bert_squad" / "1"
    version.mkdir()
    for name, data in files.items():
        (version / name).write_bytes(data)
    result = run_serve("--servable-dir", str(servable), "--workdir", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert expect in result.stderr and str(version) in result.stderr
    assert "Traceback" not in result.stderr


def test_the_supervisor_finds_its_worker_children_and_no_other_process():
    import sys
    import time

    from bert_squad.contract.processes import worker_pids

    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "start_worker.py"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "other.py"])
    try:
        deadline = time.monotonic() + 10  # the child's cmdline is readable once it has exec'd
        while worker_pids() != {worker.pid} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker_pids() == {worker.pid}
        worker.kill()
        worker.wait()
        assert worker_pids() == set()  # an exited (reaped) worker is gone
    finally:
        for p in (worker, other):
            p.kill()
            p.wait()
