"""ONNX Runtime (fp32 and dynamic int8) and PyTorch on the benchmark's weights (run by the Python 3.11 venv), and
OpenVINO on the IR of our openvino exports (run by the Python 3.9 venv, where OpenVINO is installed).

The same text pipeline as the servable (bert_squad.text.windows.build_features before the
model, bert_squad.text.decode.decode after it), but the model runs in-process on each window
cut to its real length (dynamic shapes, no padding) with batch 1. Concurrency is that
many threads calling the model at once, as a simple threaded server would.

    python bench/reference.py export-onnx WEIGHTS_DIR OUT.onnx
    python bench/reference.py quantize-onnx IN.onnx OUT.onnx
    python bench/reference.py serve --job job.json

`serve` loads the stack named in the job, answers one question, then reads one JSON
command per line on stdin (window, sweep of a slice of the questions, memory) and answers
each with one stdout line `reference: {json}`; the first such line (ready) ends the cold start.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from bert_squad.text.decode import decode
from bert_squad.text.tokenizer import load_tokenizer
from bert_squad.text.windows import build_features

ONNX_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
ONNX_OUTPUTS = ["start_logits", "end_logits"]
ONNX_OPSET = 17
REPLY = "reference: "


def export_onnx(weights: Path, out: Path) -> None:
    """Hugging Face folder -> ONNX with dynamic batch and sequence axes (TorchScript exporter)."""
    import torch
    from transformers import BertForQuestionAnswering

    model = BertForQuestionAnswering.from_pretrained(str(weights)).eval()
    ids = torch.ones(1, 16, dtype=torch.long)
    partial = out.with_name(out.name + ".partial")
    torch.onnx.export(model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(partial),
                      input_names=ONNX_INPUTS, output_names=ONNX_OUTPUTS, opset_version=ONNX_OPSET,
                      dynamic_axes={name: {0: "batch", 1: "sequence"} for name in ONNX_INPUTS + ONNX_OUTPUTS},
                      dynamo=False)
    partial.rename(out)


def onnxruntime_model(job: dict):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = job["threads"]
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(job["onnx"], options, providers=["CPUExecutionProvider"])

    def run(ids, mask, segment):
        feed = dict(zip(ONNX_INPUTS, (ids.astype(np.int64), mask.astype(np.int64), segment.astype(np.int64))))
        start, end = session.run(ONNX_OUTPUTS, feed)
        return start[0], end[0]

    return run, f"onnxruntime {ort.__version__}"


def onnxruntime_int8_model(job: dict):
    run, version = onnxruntime_model({**job, "onnx": job["onnx_int8"]})
    return run, version + " int8 (quantize_dynamic)"


def quantize_onnx(onnx: Path, out: Path) -> None:
    """ONNX Runtime's own int8 path: dynamic quantization, int8 weights (QInt8), activations at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(onnx), str(out), weight_type=QuantType.QInt8)


def openvino_model(job: dict):
    """Our openvino export's IR in OpenVINO itself, no server (stack openvino_<precision>; Python 3.9 venv)."""
    import openvino

    from bert_squad import settings
    from bert_squad.runtimes.openvino import OpenVinoModel

    precision = job["stack"].rsplit("_", 1)[1]
    # the servable's settings (length step, every step length compiled first), so the two differ by the server only
    model = OpenVinoModel(job["openvino"][job["stack"]], precision, job["threads"],
                          step=settings.OPENVINO_LENGTH_STEP, warm_up=True)

    def run(ids, mask, segment):
        start, end = model.predict(ids, mask, segment)
        return start[0], end[0]

    return run, f"openvino {openvino.__version__} {precision}"


def pytorch_model(job: dict):
    import torch
    import transformers
    from transformers import BertForQuestionAnswering

    torch.set_num_threads(job["threads"])
    torch.set_num_interop_threads(1)
    model = BertForQuestionAnswering.from_pretrained(job["weights"]).eval()

    def run(ids, mask, segment):
        with torch.inference_mode():
            out = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                        attention_mask=torch.from_numpy(mask.astype(np.int64)),
                        token_type_ids=torch.from_numpy(segment.astype(np.int64)))
        return out.start_logits[0].numpy(), out.end_logits[0].numpy()

    attention = getattr(model.config, "_attn_implementation", "?")
    return run, f"torch {torch.__version__} eager (attention {attention}), transformers {transformers.__version__}"


def answer(model, tokenizer, question: str, context: str):
    """One question: answer (text, start, end) and seconds spent in tokenize, model, decode."""
    t0 = time.perf_counter()
    f = build_features(tokenizer, question, context)
    t1 = time.perf_counter()
    starts, ends = [], []
    for w, n in enumerate(f.lengths):
        start, end = model(f.input_ids[w:w + 1, :n], f.input_mask[w:w + 1, :n], f.token_type_id[w:w + 1, :n])
        starts.append(start)
        ends.append(end)
    t2 = time.perf_counter()
    best = decode(starts, ends, f, context)[0]
    t3 = time.perf_counter()
    return [best.text, best.start, best.end], (t1 - t0, t2 - t1, t3 - t2)


def stream(questions: list, concurrency: int, make_ask: Callable[[], Callable[[dict], object]],
           join_timeout: Optional[Callable[[float], float]] = None) -> dict:
    """Every question once, `concurrency` threads taking the next one as they finish; each thread asks
    through its own `make_ask()` (question -> result). `join_timeout(elapsed)` bounds the wait for each
    thread (None: wait); a thread still running then raises TimeoutError. Shared by every stack's sweep.
    wall_s ends at the last answer: a client's teardown after it (our gRPC Client's close() waits up to 0.2 s
    for grpc's polling thread) is not serving time, and counting it cost served stacks up to 8 % of a level."""
    n = len(questions)
    latencies, answered, results, errors = [0.0] * n, [0.0] * n, [None] * n, []
    cursor, lock = iter(range(n)), threading.Lock()

    def worker():
        ask = make_ask()
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            t = time.perf_counter()
            try:
                results[i] = ask(questions[i])
            except Exception as e:  # noqa: BLE001 - counted and reported, the level goes on
                errors.append(f"{questions[i]['id']}: {e}")
            answered[i] = time.perf_counter()
            latencies[i] = answered[i] - t

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    t0, cpu = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(None if join_timeout is None else join_timeout(time.perf_counter() - t0))
        if t.is_alive():
            raise TimeoutError(f"concurrency {concurrency}: requests still open after {time.perf_counter() - t0:.0f} s")
    return level_result(questions, latencies, answered, results, errors, t0, time.process_time() - cpu)


def level_result(questions: list, latencies: list, answered: list, results: list, errors: list, t0: float,
                 cpu_s: float) -> dict:
    """What a stream returns: per question (input order) its latency, answer time since t0 and result, and the
    CPU this process took from t0 to the end of the stream."""
    return {"ids": [q["id"] for q in questions], "latencies": latencies, "wall_s": max(answered, default=t0) - t0,
            "ends": [a - t0 for a in answered], "errors": len(errors), "error_examples": errors[:3],
            "results": results, "cpu_s": cpu_s}


def sweep(model, tokenizer, questions: list, concurrency: int) -> dict:
    """The stream with the model in this process; answers and per-stage times per question."""
    level = stream(questions, concurrency,
                   lambda: lambda q: answer(model, tokenizer, q["question"], q["context"]))
    done = [(qid, r) for qid, r in zip(level["ids"], level.pop("results")) if r is not None]
    return {**level, "answers": {qid: r[0] for qid, r in done}, "stages": {qid: r[1] for qid, r in done}}


def window_input(length: int):
    """The synthetic window every stack times at `length` tokens (same ids everywhere)."""
    ids = np.random.RandomState(length).randint(1000, 30000, (1, length)).astype(np.int32)
    return ids, np.ones_like(ids), np.zeros_like(ids)


def memory() -> dict:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kb = lambda key: int(status[key].split()[0]) * 1024  # noqa: E731
    return {"rss": kb("VmRSS"), "hwm": kb("VmHWM")}


def serve(job: dict) -> None:
    """Load the stack, answer one question, then run the caller's commands (one JSON line each)."""
    makers = {"onnxruntime": onnxruntime_model, "onnxruntime_int8": onnxruntime_int8_model, "pytorch": pytorch_model,
              **{f"openvino_{p}": openvino_model for p in ("fp32", "bf16", "int8")}}
    model, version = makers[job["stack"]](job)
    tokenizer = load_tokenizer(job["vocab"])
    questions = job["questions"]
    answer(model, tokenizer, questions[0]["question"], questions[0]["context"])  # warm-up
    reply({"ready": True, "version": version, "memory": memory()})
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "window":
            inputs = window_input(command["length"])
            model(*inputs)
            times = []
            for _ in range(command["repeats"]):
                t = time.perf_counter()
                model(*inputs)
                times.append(time.perf_counter() - t)
            reply({"times": times})
        elif command["cmd"] == "sweep":
            part = questions[command.get("first", 0):][:command.get("count", len(questions))]
            reply(sweep(model, tokenizer, part, command["concurrency"]))
        elif command["cmd"] == "memory":
            reply(memory())
        else:
            reply({"error": f"unknown command {command['cmd']!r}"})


def reply(message: dict) -> None:
    print(REPLY + json.dumps(message), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export-onnx", help="write the ONNX model of a Hugging Face folder")
    e.add_argument("weights", type=Path)
    e.add_argument("out", type=Path)
    q = sub.add_parser("quantize-onnx", help="write the dynamic-int8 ONNX Runtime model of an ONNX file")
    q.add_argument("onnx", type=Path)
    q.add_argument("out", type=Path)
    r = sub.add_parser("serve", help="load one stack and take commands on stdin")
    r.add_argument("--job", type=Path, required=True)
    args = p.parse_args(argv)
    if args.command == "export-onnx":
        export_onnx(args.weights, args.out)
    elif args.command == "quantize-onnx":
        quantize_onnx(args.onnx, args.out)
    else:
        serve(json.loads(args.job.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
