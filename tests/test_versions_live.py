"""A new model version goes live under load without a failed request, and a bad one never takes traffic
(bert_squad/server/versions_live.py), on real servers of the oracle model: version 1 answers "paris in france",
version 2 (the oracle exported with another target span) "rome to italy" about the same context, so every answer
names the version that produced it by construction. The clients are the ones people use: plain HTTP and grpcio for
MindSpore Serving's API, tritonclient over the Open Inference Protocol (each protocol in a subprocess of its own:
tritonclient.grpc registers its own copies of the protocol's messages).

The clients are installed in the Python 3.11 venv only (setup.cfg [reference]): the module runs there.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import Server, export_oracle, wait_for

pytestmark = pytest.mark.pure
triton_http = pytest.importorskip("tritonclient.http",
                                  reason="tritonclient is in setup.cfg [reference] (Python 3.11 venv)")
triton_utils = pytest.importorskip("tritonclient.utils")

QUESTION = "Where did the trip go?"
CONTEXT = "The trip went from rome to italy and then paris in france , not london in england ."
ANSWERS = {"paris": "paris in france", "rome": "rome to italy", "london": "london in england"}
GOLD = [{"text": ANSWERS[word], "answer_start": CONTEXT.index(word)} for word in ("paris", "rome")]  # both pass
SMOKE = {"version": "1.1", "data": [{"title": "trip", "paragraphs": [{"context": CONTEXT, "qas": [
    {"id": f"q{i}", "question": question, "answers": GOLD} for i, question in enumerate([QUESTION, "Which way?"])]}]}]}
POLL_S = 1.0

# One protocol's clients, in a process of their own: `threads` clients ask until the stop file appears (at most
# 300 s), one JSON line per request: protocol, start and end (time.time()), answer and version, or the error.
LOAD = r"""
import json, os, sys, threading, time
kind, address, threads, stop_file, out_file, question, context = sys.argv[1:8]
lock, out = threading.Lock(), open(out_file, "a")

def client():
    if kind == "rest":
        import http.client
        host, port = address.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        body = json.dumps({"instances": [{"question": question, "context": context}]})
        def ask():
            connection.request("POST", "/model/bert_squad:predict", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            data = json.loads(response.read())
            if response.status != 200 or "error_msg" in data["instances"][0]:
                raise RuntimeError(f"{response.status} {data}")
            return data["instances"][0]["answer"], response.getheader("X-Model-Version")
        return ask
    if kind == "grpc":
        import grpc
        from bert_squad_client import protocol
        call = grpc.insecure_channel(address).unary_unary(
            protocol.PREDICT_PATH, request_serializer=protocol.PredictRequest.SerializeToString,
            response_deserializer=protocol.PredictReply.FromString)
        request = protocol.make_request("bert_squad", "predict", 0, [{"question": question, "context": context}])
        def ask():
            reply, rpc = call.with_call(request, timeout=60)
            (outputs,) = protocol.read_reply(reply, 1, "predict")
            if isinstance(outputs, Exception):
                raise outputs
            return outputs["answer"], dict(rpc.trailing_metadata())["x-model-version"]
        return ask
    import numpy as np
    if kind == "oip_rest":
        import tritonclient.http as triton
    else:
        import tritonclient.grpc as triton
    connection = triton.InferenceServerClient(address)
    inputs = []
    for name, text in (("question", question), ("context", context)):
        tensor = triton.InferInput(name, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
        inputs.append(tensor)
    def ask():
        result = connection.infer("bert_squad", inputs)
        response = result.get_response()
        version = response["model_version"] if kind == "oip_rest" else response.model_version
        return result.as_numpy("answer")[0].decode(), version
    return ask

def run():
    ask, deadline = client(), time.monotonic() + 300
    while not os.path.exists(stop_file) and time.monotonic() < deadline:
        t0 = time.time()
        try:
            answer, version = ask()
            fields = {"answer": answer, "version": str(version)}
        except Exception as e:
            fields = {"error": f"{type(e).__name__}: {e}"}
        with lock:
            out.write(json.dumps({"protocol": kind, "t0": t0, "t1": time.time(), **fields}) + "\n")
            out.flush()

workers = [threading.Thread(target=run) for _ in range(int(threads))]
for w in workers:
    w.start()
for w in workers:
    w.join()
"""


class Load:
    """8 clients, two per protocol, asking QUESTION about CONTEXT until stopped."""

    def __init__(self, server: Server, directory: Path):
        self.stop_file, self.out = directory / "stop", directory / "answers.jsonl"
        self.stop_file.unlink(missing_ok=True)
        self.out.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
        addresses = {"rest": server.rest_address, "grpc": server.grpc_address, "oip_rest": server.rest_address,
                     "oip_grpc": server.oip_grpc_address}
        self.processes = [subprocess.Popen([sys.executable, "-c", LOAD, kind, address, "2", str(self.stop_file),
                                            str(self.out), QUESTION, CONTEXT], env=env, stderr=subprocess.PIPE)
                          for kind, address in addresses.items()]

    def records(self) -> list:
        return [json.loads(line) for line in self.out.read_text().splitlines()] if self.out.exists() else []

    def stop(self) -> list:
        self.stop_file.touch()
        for process in self.processes:
            _, err = process.communicate(timeout=120)
            assert process.returncode == 0, err.decode()[-3000:]
        return self.records()


class Sampler(threading.Thread):
    """The peak resident memory of a server's processes (the serve process, the masters, the workers) and every
    /readyz answer that was not 200, sampled until stopped."""

    def __init__(self, server: Server):
        super().__init__(daemon=True)
        self.server, self.peak_mb, self.not_ready, self._done = server, 0.0, [], threading.Event()

    def run(self):
        while not self._done.is_set():
            self.peak_mb = max(self.peak_mb, group_rss_mb(self.server))
            status = readyz(self.server)
            if status != 200:
                self.not_ready.append(status)
            self._done.wait(0.2)

    def stop(self):
        self._done.set()
        self.join(10)


def group_rss_mb(server: Server) -> float:
    total = 0
    for pid in [server.process.pid, *server._group_running(b"")]:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError):
            pass
    return total / (1 << 20)


def readyz(server: Server) -> int:
    connection = http.client.HTTPConnection(*server.rest_address.rsplit(":", 1), timeout=10)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status
    except OSError as e:
        return f"{type(e).__name__}"
    finally:
        connection.close()


def metric(server: Server, name: str, labels: str = "") -> float:
    connection = http.client.HTTPConnection(*server.rest_address.rsplit(":", 1), timeout=10)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    found = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def ask_rest(server: Server) -> tuple:
    """(answer, X-Model-Version) of one MindSpore Serving REST request."""
    connection = http.client.HTTPConnection(*server.rest_address.rsplit(":", 1), timeout=60)
    body = json.dumps({"instances": [{"question": QUESTION, "context": CONTEXT}]})
    connection.request("POST", "/model/bert_squad:predict", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    data = json.loads(response.read())
    assert response.status == 200, data
    return data["instances"][0]["answer"], response.getheader("X-Model-Version")


def log_lines(server: Server, words: str) -> list:
    return [line for line in server.output().splitlines() if words in line]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The oracle exported three times, answering "paris ...", "rome ..." and "london ..." (one version folder each)."""
    root = tmp_path_factory.mktemp("exports")
    found = {word: export_oracle(root / word, buckets=(384,), span=(word, end)) / "bert_squad" / "1"
             for word, end in (("paris", "france"), ("rome", "italy"), ("london", "england"))}
    found["short"] = export_oracle(root / "short", buckets=(128, 384)) / "bert_squad" / "1" / "bert_128.mindir"
    return found


def serving_dir(root: Path, first: Path) -> Path:
    """A servable directory holding `first` as version 1."""
    from harness import SERVABLE_CONFIG

    servable = root / "servable" / "bert_squad"
    servable.mkdir(parents=True)
    shutil.copy(SERVABLE_CONFIG, servable)
    shutil.copytree(first, servable / "1")
    return root / "servable"


@pytest.fixture(scope="module")
def polled(exports, tmp_path_factory):
    """A server polling its servable directory every second, with a smoke file; version 1 = "paris"."""
    root = tmp_path_factory.mktemp("polled")
    (root / "smoke.json").write_text(json.dumps(SMOKE))
    servables = serving_dir(root, exports["paris"])
    with Server(root / "run", servables, extra_args=[
            "--poll-seconds", str(POLL_S), "--smoke-file", str(root / "smoke.json"), "--smoke-min-f1", "90"]) as server:
        server.versions = servables / "bert_squad"
        server.root = root
        yield server


def test_a_new_version_takes_over_under_load_of_every_protocol_without_a_failed_request(polled, exports):
    assert ask_rest(polled) == (ANSWERS["paris"], "1")
    sampler = Sampler(polled)
    sampler.start()
    load = Load(polled, polled.root)
    wait_for(lambda: len(load.records()) >= 40, 120, "the clients' first answers")
    staged(exports["rome"], polled.root / "2").rename(polled.versions / "2")
    switched = wait_for(lambda: log_lines(polled, "version 2 serves every new request"), 120, "the switch")
    seen_switch = time.time()
    wait_for(lambda: log_lines(polled, "version 1 stopped"), 60, "version 1 to stop")
    count = len(load.records())
    wait_for(lambda: len(load.records()) >= count + 40, 120, "answers after the switch")
    records = load.stop()
    sampler.stop()

    failed = [r for r in records if "error" in r]
    assert not failed, failed[:5]
    by_version = {"1": ANSWERS["paris"], "2": ANSWERS["rome"]}
    wrong = [r for r in records if by_version.get(r["version"]) != r["answer"]]
    assert not wrong, wrong[:5]  # every answer is exactly one version's, and says which
    late = [r for r in records if r["t0"] > seen_switch and r["version"] != "2"]
    assert not late, late[:5]  # nothing asked after the switch went to the old version
    for protocol in ("rest", "grpc", "oip_rest", "oip_grpc"):
        versions = {r["version"] for r in records if r["protocol"] == protocol}
        assert versions == {"1", "2"}, (protocol, versions)
    assert sampler.not_ready == []  # /readyz stayed 200 through the switch
    assert metric(polled, "bert_squad_version_switches_total") == 1
    info = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^bert_squad_build_info\{.*servable_version="(\d+)".*\} (\S+)$', metrics_text(polled), re.M)}
    assert info == {"1": 0.0, "2": 1.0}
    took = re.search(r"switched (\d+\.\d) s after", switched[0]).group(1)
    print(f"\nswitch under load: {len(records)} answers ({len(failed)} failed), switched {took} s after version 2 "
          f"was found, peak memory of the server's processes {sampler.peak_mb:.0f} MB")


def metrics_text(server: Server) -> str:
    connection = http.client.HTTPConnection(*server.rest_address.rsplit(":", 1), timeout=10)
    connection.request("GET", "/metrics")
    return connection.getresponse().read().decode()


class Asker(threading.Thread):
    """One MindSpore Serving REST client asking until stopped: (answer, version) or the error of each request."""

    def __init__(self, server: Server):
        super().__init__(daemon=True)
        self.server, self.seen, self._done = server, [], threading.Event()

    def run(self):
        while not self._done.is_set():
            try:
                self.seen.append(ask_rest(self.server))
            except Exception as e:  # noqa: BLE001 (the test asserts there is none)
                self.seen.append(f"{type(e).__name__}: {e}")

    def stop(self) -> list:
        self._done.set()
        self.join(60)
        return self.seen


def copy_slowly(source: Path, folder: Path, seconds: float) -> None:
    """`source` copied into `folder` as an operator's copy over a slow link: the small files first, the model file in
    pieces over `seconds`."""
    folder.mkdir()
    for path in sorted(source.iterdir(), key=lambda p: p.suffix == ".mindir"):
        data, pieces = path.read_bytes(), 8 if path.suffix == ".mindir" else 1
        with open(folder / path.name, "wb") as f:
            for i in range(pieces):
                f.write(data[i * len(data) // pieces:(i + 1) * len(data) // pieces])
                f.flush()
                if pieces > 1:
                    time.sleep(seconds / pieces)


def staged(source: Path, folder: Path) -> Path:
    """A writable copy of an export's version folder."""
    shutil.copytree(source, folder)
    for path in folder.iterdir():
        path.chmod(0o600)
    return folder


def refusals(server: Server, version: int) -> list:
    return log_lines(server, f"version {version} refused")


def served_version(server: Server) -> int:
    return int(ask_rest(server)[1])


def test_bad_versions_are_refused_once_each_while_the_running_one_answers(polled, exports, tmp_path):
    base = served_version(polled)
    before = {reason: metric(polled, "bert_squad_version_refusals_total", f'{{reason="{reason}"}}')
              for reason in ("files", "load", "warm_up", "smoke", "memory")}
    asker = Asker(polled)
    asker.start()

    # A folder still being copied is refused (once) until it is complete, then goes live.
    slow = base + 1
    copy_slowly(exports["paris"], polled.versions / str(slow), seconds=4)
    wait_for(lambda: log_lines(polled, f"version {slow} serves every new request"), 120, "the slow copy to go live")
    assert len(refusals(polled, slow)) == 1 and "(files)" in refusals(polled, slow)[0], refusals(polled, slow)

    # A truncated model file, a model that fails its warm-up question, a model that fails the smoke file.
    # Each is made beside the servable directory and moved in whole (a rename), so that no poll sees it half copied.
    truncated, warm_up, smoke = slow + 1, slow + 2, slow + 3
    folder = staged(exports["rome"], tmp_path / "truncated")
    model = folder / "bert_384.mindir"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    folder.rename(polled.versions / str(truncated))
    wait_for(lambda: refusals(polled, truncated), 60, "the truncated version's refusal")

    folder = staged(exports["paris"], tmp_path / "warm-up")
    shutil.copy(exports["short"], folder / "bert_384.mindir")  # a 128-token model where 384 tokens go in
    meta = json.loads((folder / "metadata.json").read_text())
    meta["model_sha256"] = {"bert_384.mindir": hashlib.sha256((folder / "bert_384.mindir").read_bytes()).hexdigest()}
    (folder / "metadata.json").write_text(json.dumps(meta))
    folder.rename(polled.versions / str(warm_up))
    wait_for(lambda: refusals(polled, warm_up), 120, "the refusal of the version failing its warm-up")

    staged(exports["london"], tmp_path / "smoke").rename(polled.versions / str(smoke))
    wait_for(lambda: refusals(polled, smoke), 120, "the refusal of the version failing the smoke file")
    time.sleep(4 * POLL_S)  # more polls: nothing is refused, logged or counted again
    seen = asker.stop()

    assert set(seen) <= {(ANSWERS["paris"], str(slow)), (ANSWERS[by_answer(base)], str(base))}, set(seen)
    assert seen[-1] == (ANSWERS["paris"], str(slow))
    for version, reason, words in ((truncated, "files", "truncated or corrupted"),
                                   (warm_up, "warm_up", "the warm-up question failed"),
                                   (smoke, "smoke", "below --smoke-min-f1 90")):
        lines = refusals(polled, version)
        assert len(lines) == 1 and f"({reason})" in lines[0] and words in lines[0], lines
        assert f"version {slow} keeps serving" in lines[0]
    for version in (warm_up, smoke):  # started once, not again at each poll
        assert len(log_lines(polled, f"starting version {version} ")) == 1
    after = {reason: metric(polled, "bert_squad_version_refusals_total", f'{{reason="{reason}"}}') for reason in before}
    assert {r: after[r] - before[r] for r in after} == {"files": 2, "load": 0, "warm_up": 1, "smoke": 1, "memory": 0}
    assert served_version(polled) == slow

    # The repository load (tritonclient) answers once the newest version serves.
    good = smoke + 1
    staged(exports["rome"], tmp_path / "good").rename(polled.versions / str(good))
    client = triton_http.InferenceServerClient(polled.rest_address, network_timeout=300)
    client.load_model("bert_squad")
    assert ask_rest(polled) == (ANSWERS["rome"], str(good))
    index = client.get_model_repository_index()
    assert {(m["name"], m["version"], m["state"]) for m in index} >= {("bert_squad", str(good), "READY")}

    # Rolling back under --version-policy latest: the newer folders moved away, the newest left is served again.
    for version in (good, smoke, warm_up, truncated):
        (polled.versions / str(version)).rename(tmp_path / f"away-{version}")
    client.load_model("bert_squad")
    assert ask_rest(polled) == (ANSWERS["paris"], str(slow))


def by_answer(version: int) -> str:
    """The span word of the test's versions 1 ("paris") and 2 ("rome")."""
    return {1: "paris", 2: "rome"}[version]


def test_sighup_and_the_repository_load_look_now_and_a_version_without_memory_is_refused(exports, tmp_path):
    servables = serving_dir(tmp_path, exports["paris"])
    with Server(tmp_path / "run", servables, extra_args=["--switch-headroom-mb", str(1 << 30)]) as server:
        shutil.copytree(exports["rome"], servables / "bert_squad" / "2")
        server.process.send_signal(signal.SIGHUP)
        lines = wait_for(lambda: refusals(server, 2), 60, "the memory refusal after SIGHUP")
        assert "(memory)" in lines[0] and "MiB are available" in lines[0], lines
        client = triton_http.InferenceServerClient(server.rest_address)
        with pytest.raises(triton_utils.InferenceServerException) as refused:
            client.load_model("bert_squad")
        assert refused.value.status() == "400" and "--switch-headroom-mb" in refused.value.message()
        with pytest.raises(triton_utils.InferenceServerException) as unloading:
            client.unload_model("bert_squad")
        assert unloading.value.status() == "400" and "always serves one version" in unloading.value.message()
        assert ask_rest(server) == (ANSWERS["paris"], "1")
        assert len(refusals(server, 2)) == 1  # the load found the same reason: not said or counted again
        (servables / "bert_squad" / "2").rename(tmp_path / "away")
        server.process.send_signal(signal.SIGHUP)  # a SIGHUP with nothing new says so
        wait_for(lambda: log_lines(server, "SIGHUP: version 1 is the one --version-policy latest names; nothing to "
                                           "switch"), 30, "the SIGHUP's answer")
        assert metric(server, "bert_squad_version_refusals_total", '{reason="memory"}') == 1


def test_a_second_version_needs_the_running_ones_memory_and_the_headroom():
    from bert_squad.server.versions_live import memory_refusal

    mib = 1 << 20
    assert memory_refusal(2, 1, rss=800 * mib, available=1100 * mib, headroom=256 * mib) is None
    said = memory_refusal(2, 1, rss=800 * mib, available=1000 * mib, headroom=256 * mib)
    assert said.startswith("version 2 needs about 1056 MiB to start beside version 1") and "1000 MiB are" in said


def test_a_refused_folder_is_known_by_its_files(tmp_path):
    from bert_squad.server.versions_live import fingerprint

    folder = tmp_path / "3"
    folder.mkdir()
    (folder / "metadata.json").write_text("{}")
    first = fingerprint(folder)
    assert fingerprint(folder) == first
    (folder / "bert_384.mindir").write_bytes(b"x")
    assert fingerprint(folder) != first
