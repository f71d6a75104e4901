"""A model version switched under load on the real QA model, the answers of each version checked against its own.

../shared/models/minilm-squad-b is exported twice with bench/accuracy.py's stacks: lite_direct fp32 as version 1 of
the served folder, openvino int8 beside it. bert-squad-serve --poll-seconds 1 serves version 1; each version is first
asked every question once, alone (its reference answers; version 2's after the load). Four clients (two over
MindSpore Serving's REST, reading X-Model-Version; two over its gRPC with grpcio, reading the trailing x-model-version)
go round the questions; after about one round the int8 folder is renamed in as version 2. The clients go on until
every question has been answered by version 2 after the "version 1 stopped" line. Pass: no failed request, every
answer equal to its version's reference answer, nothing asked after the switch line answered by version 1, and the
EM/F1 of each version's answers under load equal to its reference's over the same questions.

    .stack/py39/bin/python -m bench.switch [--questions N|all] [--out DIR]

Writes DIR/switch.json; exit code 1 when a check fails.
"""
from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import psutil

from bench import accuracy
from bench.questions import Question, all_questions, subset
from bench.serving import start_server, stop_server_proc
from bert_squad.text.metric import evaluate

FP32, INT8 = accuracy.REFERENCE, "openvino-int8"
TIMEOUT_S = 120.0  # one request
Ask = Callable[[Question], Tuple[str, str]]  # (answer, version)


def rest_asker(address: str) -> Ask:
    """MindSpore Serving's REST API through the front door, one keep-alive connection (a new one after an error)."""
    host, port = address.rsplit(":", 1)
    connection = [None]

    def ask(q: Question) -> Tuple[str, str]:
        if connection[0] is None:
            connection[0] = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
        body = json.dumps({"instances": [{"question": q.question, "context": q.context}]})
        try:
            connection[0].request("POST", "/model/bert_squad:predict", body, {"Content-Type": "application/json"})
            response = connection[0].getresponse()
            data = json.loads(response.read())
        except Exception:
            connection[0].close()
            connection[0] = None
            raise
        if response.status != 200 or "error_msg" in data["instances"][0]:
            raise RuntimeError(f"HTTP {response.status}: {data}")
        return data["instances"][0]["answer"], response.getheader("X-Model-Version")
    return ask


def grpc_asker(address: str) -> Ask:
    """MindSpore Serving's gRPC (MSService.Predict) with plain grpcio; the version is in the trailing metadata."""
    import grpc
    from bert_squad_client import protocol

    call = grpc.insecure_channel(address).unary_unary(
        protocol.PREDICT_PATH, request_serializer=protocol.PredictRequest.SerializeToString,
        response_deserializer=protocol.PredictReply.FromString)

    def ask(q: Question) -> Tuple[str, str]:
        request = protocol.make_request("bert_squad", "predict", 0, [{"question": q.question, "context": q.context}])
        reply, rpc = call.with_call(request, timeout=TIMEOUT_S)
        (outputs,) = protocol.read_reply(reply, 1, "predict")
        if isinstance(outputs, Exception):
            raise outputs
        return str(outputs["answer"]), dict(rpc.trailing_metadata()).get("x-model-version")
    return ask


def reference_pass(ask: Ask, questions: List[Question]) -> dict:
    """Every question once, one at a time, nothing else asking: a version's own answers."""
    records = []
    for q in questions:
        try:
            answer, version = ask(q)
            records.append({"id": q.id, "answer": answer, "version": version})
        except Exception as e:  # noqa: BLE001 - counted as a failed request
            records.append({"id": q.id, "error": f"{type(e).__name__}: {e}"})
    return {"answers": {r["id"]: r["answer"] for r in records if "answer" in r},
            "versions": dict(Counter(r.get("version", "failed") for r in records)),
            "errors": [r for r in records if "error" in r]}


class Load:
    """Client threads going round the questions (each from its own offset, so that a part of a round already
    covers them all), one record per request: protocol, question id, start time, answer and version, or the error."""

    def __init__(self, askers: Dict[str, Ask], questions: List[Question]):
        self.records: List[dict] = []
        self._lock, self._done = threading.Lock(), threading.Event()
        offsets = [k * len(questions) // len(askers) for k in range(len(askers))]
        self._threads = [threading.Thread(target=self._run, args=(name, ask, questions, offset), daemon=True)
                         for offset, (name, ask) in zip(offsets, askers.items())]
        for thread in self._threads:
            thread.start()

    def _run(self, name: str, ask: Ask, questions: List[Question], offset: int) -> None:
        for i in itertools.count(offset):
            if self._done.is_set():
                return
            q = questions[i % len(questions)]
            record = {"protocol": name.split("-")[0], "id": q.id, "t0": time.time()}
            try:
                record["answer"], record["version"] = ask(q)
            except Exception as e:  # noqa: BLE001 - counted as a failed request
                record["error"] = f"{type(e).__name__}: {e}"
            with self._lock:
                self.records.append(record)

    def stop(self) -> List[dict]:
        self._done.set()
        for thread in self._threads:
            thread.join(TIMEOUT_S + 10)
        return list(self.records)


class TreeMemory(threading.Thread):
    """Peak summed RSS of the serve process and all its descendants (masters, workers), sampled every 0.2 s; the
    pids seen, so that none outlives the run."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.pids, self._done = pid, 0, {pid}, threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                root = psutil.Process(self.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for process in tree:
                try:
                    total += process.memory_info().rss
                    self.pids.add(process.pid)
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)
            self._done.wait(0.2)

    def stop(self) -> None:
        self._done.set()
        self.join(10)


class Coverage:
    """Called: whether every question has been answered by version 2 in a request sent after `since` (reads the
    load's new records only)."""

    def __init__(self, load: Load, questions: List[Question], since: float):
        self.load, self.since, self.seen, self.left = load, since, 0, {q.id for q in questions}

    def __call__(self) -> bool:
        fresh = self.load.records[self.seen:]
        self.seen += len(fresh)
        self.left -= {r["id"] for r in fresh if r.get("version") == "2" and r["t0"] > self.since}
        return not self.left


def wait_for(condition: Callable, timeout: float, what: str):
    """The first truthy value of condition(), polled every 0.1 s; RuntimeError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def log_line(log: Path, words: str) -> Optional[str]:
    return next((line for line in log.read_text(errors="replace").splitlines() if words in line), None)


def scores(dataset: dict, answers: Dict[str, str]) -> dict:
    """EM and F1 over the questions `answers` covers (the official v1.1 metric on that part of the dataset)."""
    found = evaluate(subset(dataset, list(answers)), answers)
    return {"questions": found["total"], "exact_match": found["exact_match"], "f1": found["f1"]}


def judge(dataset: dict, records: List[dict], references: Dict[str, dict], switch_seen: float) -> Tuple[dict, list]:
    """Per version under load: answers, questions covered, answers unlike the reference, EM/F1 of the last answer
    to each question against the reference's over the same questions. Also the failed requests and the checks that
    did not hold."""
    failures, result = [], {"versions": {}}
    answered = [r for r in records if "answer" in r]
    for version, reference in references.items():
        mine = [r for r in answered if r["version"] == version]
        last = {r["id"]: r["answer"] for r in mine}
        mismatches = [r for r in mine if r["answer"] != reference["answers"].get(r["id"])]
        under_load = scores(dataset, last)
        alone = scores(dataset, {i: reference["answers"][i] for i in last if i in reference["answers"]})
        result["versions"][version] = {
            "stack": reference["stack"], "answers_under_load": len(mine), "questions_under_load": len(last),
            "mismatches": len(mismatches), "mismatch_examples": mismatches[:5],
            "under_load": {k: round(v, 4) for k, v in under_load.items()},
            "reference_same_questions": {k: round(v, 4) for k, v in alone.items()},
            "reference_all": {k: round(v, 4) for k, v in scores(dataset, reference["answers"]).items()},
            "reference_versions": reference["versions"], "reference_failed": len(reference["errors"]),
            "reference_identical_to_version_1": sum(a == references["1"]["answers"].get(i)
                                                    for i, a in reference["answers"].items())}
        if mismatches:
            failures.append(f"version {version}: {len(mismatches)} answers under load differ from its reference")
        if (under_load["exact_match"], under_load["f1"]) != (alone["exact_match"], alone["f1"]):
            failures.append(f"version {version}: EM/F1 under load {under_load} != reference {alone}")
        if reference["errors"] or reference["versions"] != {version: len(reference["answers"])}:
            failures.append(f"version {version}'s reference pass: {reference['versions']}, "
                            f"{len(reference['errors'])} failed: {reference['errors'][:3]}")
    failed = [r for r in records if "error" in r]
    strays = [r for r in answered if r["version"] not in references]
    late = [r for r in answered if r["t0"] > switch_seen and r["version"] != "2"]
    result["requests"] = {"total": len(records), "failed": len(failed), "failed_examples": failed[:5],
                          "untagged_or_unknown_version": len(strays), "version_1_after_switch_line": len(late),
                          "by_protocol_and_version": {f"{p} v{v}": n for (p, v), n in sorted(Counter(
                              (r["protocol"], r.get("version", "failed")) for r in records).items())}}
    for what, found in (("failed requests", failed), ("answers of no known version", strays),
                        ("requests sent after the switch line answered by version 1", late)):
        if found:
            failures.append(f"{len(found)} {what}: {found[:3]}")
    for protocol in ("rest", "grpc"):
        if {r["version"] for r in answered if r["protocol"] == protocol} != set(references):
            failures.append(f"{protocol} did not see both versions")
    return result, failures


def run(out: Path, n: Optional[int], log=print) -> Tuple[dict, list]:
    started = time.monotonic()

    def say(text: str) -> None:
        log(f"[{time.monotonic() - started:4.0f} s] {text}")

    out.mkdir(parents=True, exist_ok=True)
    eval_file, calibration = accuracy.split_dataset(accuracy.MODEL, accuracy.SQUAD_DEV, out / "data", n)
    dataset = json.loads(eval_file.read_text())
    questions = all_questions(dataset)
    servable, staging = out / "servable", out / "staging"
    for name, folder in ((FP32, servable), (INT8, staging)):
        say(f"{name}: exported in {accuracy.export(name, accuracy.MODEL, folder, calibration):.0f} s")
    incoming, version_2 = staging / "bert_squad" / "1", servable / "bert_squad" / "2"

    server = start_server(servable, 2, out / "run", ["--poll-seconds", "1"])
    memory = TreeMemory(server.proc.pid)
    memory.start()
    result: dict = {"questions": len(questions), "command": " ".join(["python -m bench.switch", *sys.argv[1:]]),
                    "ready": server.ready_line, "load_average_at_start": os.getloadavg()}
    load = None
    try:
        references = {"1": {"stack": FP32, **reference_pass(grpc_asker(server.address), questions)}}
        say(f"version 1 reference: {len(references['1']['answers'])} answers")
        askers = {"rest-1": rest_asker(server.rest_address), "rest-2": rest_asker(server.rest_address),
                  "grpc-1": grpc_asker(server.address), "grpc-2": grpc_asker(server.address)}
        load = Load(askers, questions)
        budget = TIMEOUT_S + len(questions)  # seconds for each wait below; a round took 0.04 s a question on 2 cores
        wait_for(lambda: len(load.records) >= len(questions), budget, "one round of the questions")
        peak_before = memory.peak
        renamed = time.time()
        os.rename(incoming, version_2)
        say(f"version 2 renamed in after {len(load.records)} requests")
        switched = wait_for(lambda: log_line(server.log, "version 2 serves every new request"), budget,
                            "the switch line")
        switch_seen = time.time()
        stopped = wait_for(lambda: log_line(server.log, "version 1 stopped"), budget, "version 1 to stop")
        stopped_seen = time.time()
        say(switched.strip() + "\n" + stopped.strip())
        wait_for(Coverage(load, questions, stopped_seen), budget, "every question answered by version 2")
        records = load.stop()
        say(f"every question answered by version 2 after version 1 stopped; {len(records)} requests under load")
        references["2"] = {"stack": INT8, **reference_pass(grpc_asker(server.address), questions)}
        refused = [line for line in server.log.read_text(errors="replace").splitlines() if "refused" in line]
    finally:
        if load is not None:
            load.stop()
        memory.stop()
        stop_server_proc(server.proc, sorted(memory.pids - {server.proc.pid}))
    checked, failures = judge(dataset, records, references, switch_seen)
    if refused:
        failures.append(f"refusals in the log: {refused}")
    took = re.search(r"switched (\S+) s after", switched)
    result.update(checked, switch={
        "line": switched.strip(), "stopped_line": stopped.strip(),
        "switched_s_after_found": float(took.group(1)) if took else None,
        "seen_s_after_rename": round(switch_seen - renamed, 2),
        "stopped_seen_s_after_rename": round(stopped_seen - renamed, 2)},
        seconds=round(time.monotonic() - started), load_average_at_end=os.getloadavg(),
        peak_rss_mb={"before_rename": round(peak_before / 2**20), "whole_run": round(memory.peak / 2**20)},
        failures=failures)
    (out / "switch.json").write_text(json.dumps(result, indent=2) + "\n")
    return result, failures


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.switch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=lambda text: None if text == "all" else int(text), default=300,
                        help="the first N evaluation questions, or all (5,609; default 300)")
    parser.add_argument("--out", type=Path, default=Path("bench-switch"), help="work and result folder")
    args = parser.parse_args(argv)
    result, failures = run(args.out, args.questions)
    for version, v in result["versions"].items():
        load, ref, full = v["under_load"], v["reference_same_questions"], v["reference_all"]
        print(f"version {version} ({v['stack']}): {v['answers_under_load']} answers under load to "
              f"{v['questions_under_load']} questions, {v['mismatches']} unlike its reference; EM/F1 under load "
              f"{load['exact_match']:.2f}/{load['f1']:.2f}, reference on the same questions {ref['exact_match']:.2f}/"
              f"{ref['f1']:.2f}, reference on all {full['questions']} {full['exact_match']:.2f}/{full['f1']:.2f} "
              f"({v['reference_identical_to_version_1']} answers identical to version 1's)")
    print(f"requests: {result['requests']['by_protocol_and_version']}, failed {result['requests']['failed']}")
    print(f"switch: {result['switch']['switched_s_after_found']} s after found; peak RSS of the server's processes "
          f"{result['peak_rss_mb']['whole_run']} MB ({result['peak_rss_mb']['before_rename']} MB before the rename)")
    print("PASS" if not failures else "FAIL:\n" + "\n".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
