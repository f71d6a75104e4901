"""Scaling out: several CPU workers in one server; a batch run over three servers, one killed and restarted.

bert-squad-predict gets the three addresses and balances over them with gRPC round_robin. While it
runs, the test SIGKILLs one server (process group: master and worker, like a machine going away) and
later starts it again on the same port. Every question must be answered exactly once and correctly,
and each server must have taken a share of the requests, the restarted one after its restart too.

The three servers run the oracle (answers span "paris" .. "france") at a size that makes a few hundred
questions last long enough to kill and restart a server in the middle of the run. The questions are
SQuAD dev questions and contexts without either word, with one marker sentence appended, so the
expected answer of every question is known. Requests per server are counted from the line Serving's
master logs for every Predict call at GLOG_v=1 (workers log each reply likewise).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import Server, export_servable

QUESTIONS = 400
MARKER = " Long ago, Paris was a small town in France."
ANSWER = "Paris was a small town in France"
KILL_AT, RESTART_AT = 0.15, 0.25  # fractions of the questions answered when the test kills and restarts
REQUEST_LINE = re.compile(r"RequestHandle Time Cost")


@pytest.fixture(scope="module")
def paced_servable(tmp_path_factory):
    """The oracle at hidden 256 x 8 layers, one 384-token bucket: tens of milliseconds of CPU per question."""
    from oracle import build_oracle_checkpoint, uncased_vocab_file

    root = tmp_path_factory.mktemp("paced")
    config = build_oracle_checkpoint(root / "oracle.ckpt", uncased_vocab_file(), "paris", "france",
                                     hidden=256, layers=8, heads=4, intermediate=1024)
    return export_servable(root / "servable", root / "oracle.ckpt", vocab_file=uncased_vocab_file(), config=config,
                           buckets=(384,), runtime="serving")


def squad_questions(squad_dev: Path, path: Path, count: int) -> dict:
    """JSON Lines of SQuAD dev questions whose context lacks both marker words, with MARKER appended."""
    records = {}
    for article in json.loads(squad_dev.read_text())["data"]:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            if "paris" in context.lower() or "france" in context.lower():
                continue
            for qa in paragraph["qas"]:
                if len(records) < count:
                    records[qa["id"]] = {"id": qa["id"], "question": qa["question"], "context": context + MARKER}
    assert len(records) == count
    path.write_text("".join(json.dumps(r) + "\n" for r in records.values()))
    return records


class Tail:
    """The complete lines appended so far to the batch's journal, which stays readable once the batch removes it."""

    def __init__(self, path: Path):
        self.path, self.file, self.rest, self.lines = path, None, "", []

    def answered(self) -> int:
        if self.file is None and self.path.exists():
            self.file = open(self.path)  # an open file outlives its name
        if self.file is not None:
            *complete, self.rest = (self.rest + self.file.read()).split("\n")
            self.lines += complete
        return max(len(self.lines) - 1, 0)  # the first line is the journal's header


def requests_handled(server: Server, offset: int = 0) -> int:
    """Predict calls Serving's master logged in the server's output since byte `offset`."""
    return len(REQUEST_LINE.findall(server.log_path.read_bytes()[offset:].decode(errors="replace")))


def test_batch_over_three_servers_survives_one_killed_and_restarted(paced_servable, tmp_path):
    from conftest import SQUAD_DEV

    records = squad_questions(SQUAD_DEV, tmp_path / "questions.jsonl", QUESTIONS)
    servers = [Server(tmp_path / f"server{i}", paced_servable,
                      extra_args=["--rest-address", "off", "--health-address", "off"], env={"GLOG_v": "1"})
               for i in range(3)]
    output = tmp_path / "predictions.json"
    journal = Tail(output.with_name(output.name + ".journal.jsonl"))
    batch = None
    try:
        for server in servers:  # one at a time: three cold starts at once overload a small machine
            server.start()
        warmed = [requests_handled(s) for s in servers]  # the serve command's own warm-up questions
        batch = subprocess.Popen(
            [sys.executable, "-m", "bert_squad_client.predict", str(tmp_path / "questions.jsonl"),
             "--output", str(output), "--nbest", str(tmp_path / "nbest.json"),
             "--server", ",".join(s.grpc_address for s in servers), "--concurrency", "6", "--timeout", "60",
             "--quiet"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        victim = servers[1]
        killed_at = restarted_at = restart_offset = None
        deadline = time.monotonic() + 240
        while batch.poll() is None and time.monotonic() < deadline:
            done = journal.answered() / QUESTIONS
            if killed_at is None and done >= KILL_AT:
                victim.kill()
                killed_at = done
            elif killed_at is not None and restarted_at is None and done >= RESTART_AT:
                restart_offset = victim.log_path.stat().st_size
                victim.start()
                restarted_at = journal.answered() / QUESTIONS
            time.sleep(0.05)
        log = batch.communicate(timeout=max(deadline - time.monotonic(), 1))[0]
        journal.answered()
    finally:
        if journal.file is not None:
            journal.file.close()
        if batch is not None and batch.poll() is None:
            batch.kill()
        for server in servers:
            server.stop()

    assert batch.returncode == 0, log
    assert killed_at is not None and restarted_at is not None and restarted_at < 0.9, (
        f"the run did not last long enough to kill and restart a server in the middle (killed at {killed_at}, "
        f"restarted at {restarted_at} of the questions)")
    ids = [json.loads(line)["id"] for line in journal.lines[1:]]
    assert sorted(ids) == sorted(records), "every question is answered exactly once"
    predictions = json.loads(output.read_text(), object_pairs_hook=lambda pairs: (len(pairs), dict(pairs)))
    assert predictions[0] == QUESTIONS and predictions[1] == {i: ANSWER for i in records}
    nbest = json.loads((tmp_path / "nbest.json").read_text())
    for i, record in records.items():
        best = nbest[i][0]
        assert record["context"][best["start"]:best["end"]] == ANSWER

    handled = [requests_handled(s) - w for s, w in zip(servers, warmed)]
    handled[1] -= 1  # the restarted server's second warm-up question
    after_restart = requests_handled(servers[1], restart_offset) - 1
    split = ", ".join(f"{s.grpc_address}: {n}" for s, n in zip(servers, handled))
    print(f"\nrequests per server: {split}; the restarted one after its restart: {after_restart}; "
          f"killed at {killed_at:.0%}, back at {restarted_at:.0%} of the questions")
    assert sum(handled) >= QUESTIONS
    for n in handled[::2]:
        assert n >= 0.1 * QUESTIONS, f"load not spread over the three servers: {split}"
    # The restarted server was up for a part of the run only (how much depends on how fast it restarted on a
    # loaded machine): while up it must have taken at least half of its third.
    up = killed_at + (1 - restarted_at)
    assert handled[1] >= 0.5 * up * QUESTIONS / 3, f"the restarted server took too little while up: {split}"
    assert after_restart >= 0.05 * QUESTIONS, f"the restarted server got {after_restart} requests after its restart"


def worker_device(pid: int) -> int:
    """The device id (on CPU: the worker number) Serving started worker `pid` with."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return int(next(a for a in args if a.startswith(b"--device_id=")).split(b"=")[1])


def thread_ticks(pid: int) -> dict:
    """{thread id: (CPU ticks so far, cores it may run on)} for every thread of process `pid`."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
            allowed = next(line.split(":")[1].strip() for line in (task / "status").read_text().splitlines()
                           if line.startswith("Cpus_allowed_list"))
        except OSError:  # the thread ended meanwhile
            continue
        threads[task.name] = (int(stat[11]) + int(stat[12]), allowed)
    return threads


def ask_concurrently(address: str, count: int, threads: int = 8) -> None:
    from mindspore_serving.client import Client

    context = "The committee met again on a rainy day. " * 20 + "Paris is the capital of France."
    errors = []

    def ask(n: int) -> None:
        client = Client(address, "bert_squad", "predict")
        for _ in range(n):
            reply = client.infer({"question": "Which capital?", "context": context})
            if not isinstance(reply, list) or reply[0].get("answer") != "Paris is the capital of France":
                errors.append(reply)

    workers = [threading.Thread(target=ask, args=(count // threads,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors[:3]


def test_four_cpu_workers_start_and_share_the_requests(oracle_servable, tmp_path):
    """On CPU each --device-ids entry is one more worker process; Serving spreads requests over them."""
    server = Server(tmp_path / "run", oracle_servable["servable_dir"],
                    extra_args=["--device-ids", "0,1,2,3", "--rest-address", "off", "--health-address", "off"],
                    env={"GLOG_v": "1"}).start()
    try:
        assert "workers=4" in server.ready_line
        pids = server.worker_pids()
        assert sorted(worker_device(p) for p in pids) == [0, 1, 2, 3]
        ask_concurrently(server.grpc_address, 160)
    finally:
        server.stop()
    replies = {k: len(re.findall(r"ReplyRequest Time Cost",
                                 (server.workdir / "serving_logs" / f"log_bert_squad_device{k}_version1.log")
                                 .read_text(errors="replace"))) for k in range(4)}
    print(f"\nreplies logged per worker: {replies}")
    for k, n in replies.items():
        assert n >= 0.1 * sum(replies.values()), f"worker {k} took almost no requests: {replies}"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning two workers needs two cores")
@pytest.mark.parametrize("runtime", ["serving", "lite_direct"])
def test_two_one_thread_workers_run_on_cores_of_their_own(oracle_servable, oracle_lite_servable, tmp_path, runtime):
    """Worker k computes on the k-th block of --threads cores (MindSpore Lite thread affinity, set by Serving for
    its models and by our shim for lite_direct); the harness starts servers with --threads 1, so on two cores each
    worker has one of its own."""
    servable_dir = oracle_servable["servable_dir"] if runtime == "serving" else oracle_lite_servable
    server = Server(tmp_path / "run", servable_dir,
                    extra_args=["--device-ids", "0,1", "--rest-address", "off", "--health-address", "off"]).start()
    try:
        devices = {pid: worker_device(pid) for pid in server.worker_pids()}
        before = {pid: thread_ticks(pid) for pid in devices}
        ask_concurrently(server.grpc_address, 160)
        after = {pid: thread_ticks(pid) for pid in devices}
    finally:
        server.stop()
    cores = sorted(os.sched_getaffinity(0))
    for pid, device in devices.items():
        own = str(cores[device])
        used = {tid: (ticks - before[pid].get(tid, (0, ""))[0], allowed)
                for tid, (ticks, allowed) in after[pid].items()}
        total = sum(t for t, _ in used.values())
        on_own_core = sum(t for t, allowed in used.values() if allowed == own)
        assert total > 0 and on_own_core >= 0.9 * total, (
            f"worker {device} (pid {pid}) spent {on_own_core} of {total} ticks on core {own} alone: {used}")


def test_every_exact_length_worker_has_its_model_loaded_when_the_server_says_ready(oracle_lite_servable, tmp_path):
    """The warm-up question reaches one worker; the others must not load their model inside a user's question."""
    server = Server(tmp_path / "run", oracle_lite_servable,
                    extra_args=["--device-ids", "0,1", "--rest-address", "off", "--health-address", "off"]).start()
    try:
        loaded = {k: re.findall(r"bert_squad: lite_direct fp32 model \S+ loaded in [0-9.]+ s",
                                (server.workdir / "serving_logs" / f"log_bert_squad_device{k}_version1.log")
                                .read_text(errors="replace")) for k in range(2)}
    finally:
        server.stop()
    assert {k: len(lines) for k, lines in loaded.items()} == {0: 1, 1: 1}, loaded
