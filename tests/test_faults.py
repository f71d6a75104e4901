"""Faults: a worker killed under load, and damaged files refused at export or start with the file named."""
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest

import wire
from bert_squad.metadata import sha256_file
from harness import FRONT, Server, new_servable_dir, wait_for

FILLER = "The committee met again on a rainy day to talk about roads, bridges and trains. "
CONTEXT = FILLER * 30 + "Later Paris became the capital of France again. " + FILLER * 3  # 2 windows
ANSWER = "Paris became the capital of France"
RECOVERY_LIMIT = 60.0


class Traffic:
    """Clients of one protocol (no retries) asking one question over and over; every outcome is kept.

    One protocol at a time: Serving's master can crash when gRPC and REST requests meet (test_load)."""

    def __init__(self, server: Server, protocol: str, clients: int = 6):
        self.server, self.protocol, self.stop = server, protocol, threading.Event()
        self.outcomes = []  # (monotonic time the request was sent, "answer" | "wrong: ..." | error message)
        self.threads = [threading.Thread(target=self._loop) for _ in range(clients)]

    def _loop(self) -> None:
        instances = [{"question": "Which capital?", "context": CONTEXT}] * 4
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                if self.protocol == "rest":
                    reply = wire.rest_predict(self.server.rest_address, "predict", {"instances": instances}, timeout=60)
                else:
                    reply = wire.grpc_predict(self.server.grpc_address, "predict", instances, timeout=60)
            except Exception as e:  # noqa: BLE001 - a transport error is an outcome too
                reply = f"{type(e).__name__}: {e}"
            for result in [reply] if isinstance(reply, str) else reply:
                if isinstance(result, str):
                    self.outcomes.append((sent, result))
                elif "error" in result:
                    self.outcomes.append((sent, result["error"]))
                else:
                    self.outcomes.append((sent, "answer" if result["answer"] == ANSWER else f"wrong: {result}"))
            if isinstance(reply, str):
                time.sleep(0.05)  # the servable is away: do not spin

    def __enter__(self) -> "Traffic":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(90)

    def first_answer_sent_after(self, moment: float):
        """When the first request sent after `moment` that got an answer was sent (None: none yet)."""
        return min((t for t, outcome in list(self.outcomes) if t > moment and outcome == "answer"), default=None)


def test_a_killed_worker_fails_its_requests_clearly_and_is_back_within_a_minute(oracle_servable, tmp_path):
    server = Server(tmp_path, oracle_servable["servable_dir"])
    recoveries, outcomes = [], []
    with server:
        for protocol in ("grpc", "rest"):  # the second kill hits a restarted worker: it must be restarted too
            with Traffic(server, protocol) as traffic:
                (worker,) = server.worker_pids()
                started = time.monotonic()
                wait_for(lambda: traffic.first_answer_sent_after(started), 60, "answers before the kill")
                killed = time.monotonic()
                os.kill(worker, signal.SIGKILL)
                answered = wait_for(lambda: traffic.first_answer_sent_after(killed), RECOVERY_LIMIT, "an answer")
                recoveries.append(answered - killed)
                (new_worker,) = server.worker_pids()
                assert new_worker != worker
                wait_for(lambda: f"worker {new_worker} answers again" in server.output(), 30, "the serve command's log")
            outcomes += [outcome for _, outcome in traffic.outcomes]
    assert server.process.returncode == 0, server.output()

    assert not [o for o in outcomes if o.startswith("wrong")], "a wrong answer was returned"
    errors = {o for o in outcomes if o != "answer"}
    assert errors, "no request was in flight when the worker was killed"
    assert errors <= {"Request servable(bert_squad) method(predict) , servable is not available"}, errors
    print(f"\nworker SIGKILL: answering again after {recoveries[0]:.1f} s (gRPC traffic) and {recoveries[1]:.1f} s "
          f"(REST traffic); {outcomes.count('answer')} answers, {len(outcomes) - outcomes.count('answer')} "
          f"instance errors")


def test_when_serving_gives_up_on_its_worker_the_master_is_started_again(oracle_servable, tmp_path):
    """Serving does not restart a worker that died before it answered anything; its master then stops.
    The serve command keeps the master in a child process, so it starts a new one, which answers."""
    server = Server(tmp_path, oracle_servable["servable_dir"])
    with server:
        (worker,) = server.worker_pids()
        os.kill(worker, signal.SIGKILL)
        restarted = wait_for(lambda: [p for p in server.worker_pids() if p != worker], 30, "the restarted worker")
        os.kill(restarted[0], signal.SIGKILL)  # before its models are loaded, so before it answered anything
        wait_for(lambda: "Serving's master died (exit code 3); starting it again" in server.output(), 60,
                 "the master's restart")
        wait_for(lambda: "Serving's master answers again" in server.output(), 120, "the new master")
        reply = wire.grpc_predict(server.grpc_address, "predict", [{"question": "Which capital?", "context": CONTEXT}])
        assert reply[0]["answer"] == ANSWER
        assert "MindSpore Serving stopped on its own" in server.output()
    assert server.process.returncode == 0, server.output()
    assert server.running() == []


# ---------------------------------------------------------------- damaged files

def copy_version(oracle_servable, tmp_path):
    servable = tmp_path / "servable"
    shutil.copytree(oracle_servable["servable_dir"], servable)
    version = servable / "bert_squad" / "1"
    for path in version.iterdir():
        path.chmod(0o644)
    return servable, version


def serve_refuses(servable, tmp_path, *extra, env=None):
    done = subprocess.run([str(FRONT), "-m", "bert_squad.server.serve", "--servable-dir", str(servable),
                           "--workdir", str(tmp_path / "run"), "--grpc-address", "127.0.0.1:1",
                           "--rest-address", "off", "--oip-grpc-address", "off", *extra], capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


@pytest.mark.parametrize("damage, expect", [
    ("truncate", "is truncated or corrupted: it is not one complete MindIR protobuf"),
    ("garbage", "is truncated or corrupted"),
    ("empty", "is truncated or corrupted"),
])
def test_a_damaged_mindir_is_refused_at_start_with_its_name(oracle_servable, tmp_path, damage, expect):
    servable, version = copy_version(oracle_servable, tmp_path)
    model = version / "bert_128.mindir"
    data = model.read_bytes()
    model.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}[damage])
    message = serve_refuses(servable, tmp_path)
    assert str(model) in message and expect in message


def test_a_flipped_bit_in_the_weights_is_refused_at_start_with_its_name(oracle_servable, tmp_path):
    """A flipped bit inside a weight leaves a complete protobuf that loads and answers wrongly: only the
    sha256 recorded at export tells it apart."""
    from bert_squad.versions import complete_protobuf

    servable, version = copy_version(oracle_servable, tmp_path)
    model = version / "bert_128.mindir"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x10  # the middle of the file is weight bytes
    model.write_bytes(bytes(data))
    assert complete_protobuf(model), "the flip broke the protobuf structure; it should only change a weight"
    message = serve_refuses(servable, tmp_path)
    assert str(model) in message and "does not match the sha256 recorded at export" in message


def test_a_missing_mindir_is_refused_at_start_with_its_name(oracle_servable, tmp_path):
    servable, version = copy_version(oracle_servable, tmp_path)
    (version / "bert_64.mindir").unlink()
    message = serve_refuses(servable, tmp_path)
    assert "model files ['bert_64.mindir']" in message and "missing" in message and str(version) in message


def test_a_changed_vocabulary_is_refused_at_start_with_its_name(oracle_servable, tmp_path):
    servable, version = copy_version(oracle_servable, tmp_path)
    vocab = version / "vocab.txt"
    vocab.write_text(vocab.read_text().replace("paris", "london"))  # same size, other words
    message = serve_refuses(servable, tmp_path)
    assert f"vocabulary {vocab} does not match the sha256 recorded at export" in message


def test_a_truncated_checkpoint_is_refused_at_export_with_its_name(oracle_servable, tmp_path):
    checkpoint = tmp_path / "cut.ckpt"
    data = oracle_servable["checkpoint"].read_bytes()
    checkpoint.write_bytes(data[: len(data) // 3])
    servable = new_servable_dir(tmp_path / "servable") / "bert_squad"
    oracle_servable["config"].to_json_file(tmp_path / "config.json")
    from oracle import uncased_vocab_file

    message = serve_refuses(servable.parent, tmp_path, "--checkpoint", str(checkpoint), "--vocab",
                            str(uncased_vocab_file()), "--config", str(tmp_path / "config.json"))
    assert f"cannot export {checkpoint}" in message and "not a readable MindSpore checkpoint" in message
    assert not any(p.name.isdigit() for p in servable.iterdir()), "a version folder was left behind"


def test_a_checkpoint_with_another_sha256_is_refused_before_export(oracle_servable, tmp_path):
    """The serve command's first start verifies a downloaded Hub checkpoint against --hub-sha256."""
    import http.server

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(oracle_servable["checkpoint"], mirror / "squad.ckpt")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = lambda *a, **k: Quiet(*a, directory=str(mirror), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    servable = new_servable_dir(tmp_path / "servable") / "bert_squad"
    from oracle import uncased_vocab_file

    try:
        message = serve_refuses(servable.parent, tmp_path, "--hub-url",
                                f"http://127.0.0.1:{httpd.server_address[1]}/squad.ckpt", "--hub-sha256", "ab" * 32,
                                "--vocab", str(uncased_vocab_file()), env={"BERT_SQUAD_CACHE": str(tmp_path / "cache")})
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert f"has sha256 {sha256_file(mirror / 'squad.ckpt')}, expected {'ab' * 32}" in message
    assert not (tmp_path / "cache" / "squad.ckpt").exists()
