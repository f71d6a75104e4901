"""Benchmark of issue #6: our servable over real gRPC against ONNX Runtime and PyTorch, same weights.

    .stack/py39/bin/python bench/run.py [--quick] [--questions N] [--concurrency 1,2,4,8] [--out bench/results]

One run, same weights, same thread count for every stack:
  serving_exact    bert_squad servable, runtime lite_direct: one model run at each window's exact length
  serving_buckets  bert_squad servable, runtime serving, buckets 128,256,384, over gRPC (bert_squad.server.serve)
  serving_384      the same servable exported with one 384 bucket (what the zoo export gives)
  serving_bf16     bert_squad servable, runtime openvino, --precision bf16 (CPUs with native bf16)
  serving_int8     bert_squad servable, runtime openvino, --precision int8 (calibrated on --squad)
  serving_int8_2w  that int8 servable served by two workers (--device-ids 0,1), each with --threads threads
  serving_bf16_2w  the bf16 servable served the same way
  onnxruntime      the Hugging Face model exported to ONNX, dynamic shapes (Python 3.11 venv)
  onnxruntime_int8 that ONNX file through quantize_dynamic (int8 weights, QInt8) (Python 3.11 venv)
  openvino_fp32/_bf16/_int8  OpenVINO in-process on the IR of our openvino exports (Python 3.9 venv)
  pytorch          transformers eager on the same folder (Python 3.11 venv)
Not in the default set, for the cost of the front door's logs and traces (--stacks serving_exact,VARIANT,...):
  serving_exact_json    serving_exact with --log-format json; serving_exact_quiet with --access-log off
  serving_exact_traced  serving_exact exporting a span per request over OTLP gRPC to a receiver in this process
--before PYTHON serves every served stack a second time with an earlier checkout's serve command (PYTHON: the
interpreter of a venv where that checkout is installed), as <stack>_before: before and after in one run.
Writes report.md, results.json and throughput.png into --out, and prints the goal ratios.
Weights, exports and the ONNX file are cached in bench/.cache (delete it, or --fresh, to rebuild).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `python bench/run.py` puts bench/ first; the package is bench

import numpy as np  # noqa: E402

from bench import machine, questions as squad, report, serving, stacks, stats  # noqa: E402
from bert_squad import settings  # noqa: E402
from bert_squad.text.decode import decode  # noqa: E402
from bert_squad.metadata import read_metadata, sha256_file  # noqa: E402
from bert_squad.runtimes import default_runtime, get_runtime  # noqa: E402
from bert_squad.text.metric import evaluate  # noqa: E402
from bert_squad.text.tokenizer import load_tokenizer  # noqa: E402
from bert_squad.text.windows import build_features  # noqa: E402

PY39 = Path(os.environ.get("BERT_SQUAD_PY39", REPO / ".stack" / "py39" / "bin" / "python"))
PY311 = Path(os.environ.get("BERT_SQUAD_PY311", REPO / ".stack" / "py311" / "bin" / "python"))
BENCH = REPO / "bench"
SERVABLE_CONFIG = REPO / "servable" / settings.SERVABLE_NAME / "servable_config.py"
WINDOW_LENGTHS = (100, 128, 200, 256, 380, 384)  # single-window latency table (issue #6 "where we start")
STACKS = ("serving_exact", "serving_buckets", "serving_384", "serving_bf16", "serving_int8", "serving_int8_2w",
          "serving_bf16_2w", "onnxruntime",
          "onnxruntime_int8", "openvino_fp32", "openvino_bf16", "openvino_int8", "pytorch")
LABELS = {
    "serving_exact": "Serving + Lite, gRPC, exact length (lite_direct)",
    "serving_buckets": "Serving + Lite, gRPC, buckets 128/256/384",
    "serving_384": "Serving + Lite, gRPC, fixed 384",
    "serving_bf16": "Serving + OpenVINO bf16, gRPC, exact length",
    "serving_int8": "Serving + OpenVINO int8, gRPC, exact length",
    "serving_int8_2w": "Serving + OpenVINO int8, gRPC, exact length, 2 workers sharing the cores",
    "serving_bf16_2w": "Serving + OpenVINO bf16, gRPC, exact length, 2 workers sharing the cores",
    "onnxruntime": "ONNX Runtime, dynamic shape",
    "onnxruntime_int8": "ONNX Runtime int8 (quantize_dynamic), dynamic shape",
    "openvino_fp32": "OpenVINO fp32 in-process, exact length",
    "openvino_bf16": "OpenVINO bf16 in-process, exact length",
    "openvino_int8": "OpenVINO int8 (NNCF) in-process, exact length",
    "pytorch": "PyTorch eager, dynamic shape",
    "serving_exact_json": "Serving + Lite, gRPC, exact length, JSON access lines",
    "serving_exact_quiet": "Serving + Lite, gRPC, exact length, no access lines",
    "serving_exact_traced": "Serving + Lite, gRPC, exact length, traced (OTLP gRPC)",
}
TRACED = "serving_exact_traced"  # exports its spans to tests/otlp_receiver.py's receiver, started by the bench
ONNX_INT8 = "model-int8.onnx"
PAIRED_QUESTIONS = 32  # questions of the serving stacks' stage-breakdown and gRPC-vs-REST passes
BATCH_QUESTIONS, BATCH_N = 64, 8  # OIP requests of 8 questions vs single questions at concurrency 8
# paired p50 over Serving's gRPC at the master itself (issues 25, 26)
TRANSPORT_GOALS_MS = {"grpc": 0.5, "rest": 1.0, "oip_grpc": 0.5, "oip_rest": 1.0}
TRANSPORT_ROUNDS = 8  # gRPC vs REST asks each of them this many times: 256 pairs put the median within ~0.15 ms
BEFORE = "_before"  # the suffix of a stack served by --before's checkout
IDLE_CORES = 0.25  # foreign load under which the machine counts as idle
# Servable stacks: (export runtime, buckets, precision). Goals and ratios are judged on the export tool's default.
EXPORTS = {"serving_exact": ("lite_direct", (settings.MAX_SEQ_LENGTH,), "fp32"),
           "serving_buckets": ("serving", settings.BUCKETS, "fp32"),
           "serving_384": ("serving", (settings.MAX_SEQ_LENGTH,), "fp32"),
           "serving_bf16": ("openvino", (settings.MAX_SEQ_LENGTH,), "bf16"),
           "serving_int8": ("openvino", (settings.MAX_SEQ_LENGTH,), "int8"),
           "openvino_fp32_ir": ("openvino", (settings.MAX_SEQ_LENGTH,), "fp32")}  # exported, not served
# Served stacks that serve another stack's export with more serve options: (export, options).
# Two workers that each use every core: one worker's Python stages run while the other's model does.
SERVED_AS = {"serving_int8_2w": ("serving_int8", ("--device-ids", "0,1")),
             "serving_bf16_2w": ("serving_bf16", ("--device-ids", "0,1")),
             "serving_exact_json": ("serving_exact", ("--log-format", "json")),
             "serving_exact_quiet": ("serving_exact", ("--access-log", "off")),
             TRACED: ("serving_exact", ())}
VARIANTS = ("serving_exact_json", "serving_exact_quiet", TRACED)  # asked for by name only
# The in-process OpenVINO stacks run the IR of these exports.
OPENVINO_IR = {"openvino_fp32": "openvino_fp32_ir", "openvino_bf16": "serving_bf16", "openvino_int8": "serving_int8"}
SERVED = tuple(name for name in EXPORTS if name in STACKS) + tuple(SERVED_AS)
EXPORT_CODE = [REPO / "bert_squad" / "model" / "network.py", REPO / "bert_squad" / "model" / "checkpoint.py",
               REPO / "bert_squad" / "export" / "exporter.py", REPO / "bert_squad" / "export" / "calibration.py",
               REPO / "bert_squad" / "runtimes" / "openvino.py", REPO / "bert_squad" / "runtimes" / "lite_direct.py",
               REPO / "bert_squad" / "runtimes" / "serving.py"]
OURS = next(name for name, (runtime, _, precision) in EXPORTS.items()
            if runtime == default_runtime("fp32") and precision == "fp32")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="16 questions, concurrency 1,4, 3 repeats: a smoke run")
    p.add_argument("--questions", type=int, help="SQuAD dev questions in the stream (default 100, quick 16)")
    p.add_argument("--concurrency", help="comma-separated levels (default 1,2,4,8; quick 1,4)")
    p.add_argument("--repeats", type=int, help="timed runs per single-window length (default 5; quick 3)")
    p.add_argument("--threads", type=int, default=2, help="inference threads of every stack (default 2)")
    p.add_argument("--stacks", default=",".join(STACKS), help=f"subset of {','.join(STACKS)} (default: all)")
    p.add_argument("--model", choices=("base", "minilm"), default="base",
                   help="base: BERT-base sized, seeded random weights (default); minilm: real all-MiniLM-L6-v2 "
                        "encoder + seeded QA head")
    p.add_argument("--client", choices=sorted(serving.CLIENTS), default="official",
                   help="gRPC client for the servables: official (mindspore_serving.client, default) or ours "
                        "(bert_squad_client), for the single-window, paired and gRPC-vs-REST passes")
    p.add_argument("--stream", choices=serving.STREAMS, default="aio",
                   help="how the servables' stream is sent: aio (one thread, one channel, bert_squad_client."
                        "AsyncClient; default: the lightest load generator) or threads (a --client per thread)")
    p.add_argument("--transport-rounds", type=int, default=TRANSPORT_ROUNDS,
                   help=f"times each of {PAIRED_QUESTIONS} questions is asked over every protocol in the transport "
                        f"pass (default %(default)s)")
    p.add_argument("--before", type=Path, metavar="PYTHON",
                   help="also serve every served stack with an earlier checkout's serve command, run by PYTHON (a "
                        "venv with that checkout installed: pip install --no-deps -e CHECKOUT), as <stack>_before")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and of the question sample")
    p.add_argument("--squad", type=Path, default=squad.SQUAD_DEV, help="SQuAD v1.1 dev json")
    p.add_argument("--out", type=Path, default=BENCH / "results", help="report folder (default bench/results)")
    p.add_argument("--cache", type=Path, default=BENCH / ".cache", help="weights / exports cache (bench/.cache)")
    p.add_argument("--fresh", action="store_true", help="rebuild cached weights, exports and ONNX file")
    p.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                   help="before measuring (and before each retry), wait up to this long for other processes "
                        "to leave the CPU idle (default 0: do not wait)")
    p.add_argument("--retries", type=int, default=2,
                   help="measure a level or window again when other processes used more than "
                        f"{IDLE_CORES} cores meanwhile, at most this often (default 2)")
    args = p.parse_args(argv)
    args.questions = args.questions or (16 if args.quick else 100)
    args.repeats = args.repeats or (3 if args.quick else 5)
    try:
        args.levels = [int(c) for c in (args.concurrency or ("1,4" if args.quick else "1,2,4,8")).split(",")]
    except ValueError:
        p.error(f"--concurrency takes comma-separated integers such as 1,2,4,8, got {args.concurrency!r}")
    if not args.levels or min(args.levels) < 1:
        p.error("--concurrency levels must be positive integers")
    if args.levels[0] != 1:
        p.error("--concurrency must start with 1: answers and the stage breakdown are taken at concurrency 1")
    args.stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    unknown = set(args.stacks) - set(STACKS) - set(VARIANTS)
    if unknown or OURS not in args.stacks:
        p.error(f"--stacks takes names from {', '.join(STACKS + VARIANTS)} and must include {OURS} (the default "
                f"export)")
    if args.threads < 1 or args.repeats < 1 or args.retries < 0 or args.transport_rounds < 1:
        p.error("--threads, --repeats and --transport-rounds must be at least 1, --retries at least 0")
    for python in (PY39, PY311):
        if not python.is_file():
            p.error(f"{python} not found: run scripts/setup.sh (it builds .stack/py39 and .stack/py311)")
    if args.before is not None and not args.before.is_file():
        p.error(f"--before {args.before}: no such interpreter; give the python of a venv where the earlier checkout "
                f"is installed")
    return args


def before_servable(servable_dir: Path, config: Path, out: Path) -> Path:
    """`servable_dir` as --before's checkout serves it: the same version folders (hard links, not a copy of the
    model), with that checkout's servable_config.py, which imports the modules of its own layout."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:  # another file system
            shutil.copy2(src, dst)

    if not out.exists():  # a stack served twice (2 workers) shares it
        shutil.copytree(servable_dir, out, copy_function=link)
        target = out / settings.SERVABLE_NAME / "servable_config.py"
        target.unlink()  # a hard link to the export's own: writing through it would change that one
        shutil.copy2(config, target)
    return out


def before_code(python: Path) -> dict:
    """Which code --before's interpreter serves: its serve module's folder and that checkout's git revision."""
    printed = run_checked([python, "-c", "import bert_squad, os; print(os.path.dirname(bert_squad.__file__))"],
                          "finding --before's checkout", cwd="/")  # not here: our own checkout would be found
    where = Path(printed.strip().splitlines()[-1])
    done = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {"python": str(python), "code": str(where), "revision": done.stdout.strip() or "unknown",
            "servable_config": str(where.parent / "servable" / settings.SERVABLE_NAME / "servable_config.py")}


def run_checked(cmd, what: str, env=None, cwd=None) -> str:
    result = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=cwd)
    if result.returncode != 0:
        raise serving.BenchError(f"{what} failed (exit {result.returncode}):\n{result.stdout[-3000:]}")
    return result.stdout


def measure_gemm(threads: int) -> dict:
    """2048x2048 float32 numpy matmul in both venvs, BLAS pinned to `threads`; the faster sets the roofline."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    runs = [json.loads(run_checked([python, BENCH / "gemm.py"], "GEMM rate", env=env, cwd=tempfile.gettempdir())
                       .strip().splitlines()[-1]) for python in (PY39, PY311)]
    return {"runs": runs, "gflops": max(r["gflops_best"] for r in runs),
            "unset": [k for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ]}


def build_weights(args) -> Path:
    folder = args.cache / f"weights-{args.model}-seed{args.seed}"
    if args.fresh:
        shutil.rmtree(folder, ignore_errors=True)
    run_checked([PY311, BENCH / "make_weights.py", "--kind", args.model, "--seed", args.seed, "--out", folder],
                "building the weights")
    return folder


def export_code_sha256() -> str:
    """Of the code that decides what an export contains: a change to it makes cached exports stale."""
    digest = hashlib.sha256()
    for path in EXPORT_CODE:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def export_servable(args, weights: Path, weights_sha: str, stack: str) -> Path:
    """servable dir with bert_squad/1/ exported from `weights` (cached while the weights and export code match)."""
    servable_dir = args.cache / "servables" / f"{args.model}-seed{args.seed}-{stack}"
    version = servable_dir / settings.SERVABLE_NAME / "1"
    stamp, code_sha = servable_dir / "export-code.sha256", export_code_sha256()
    try:
        cached = read_metadata(version)
        fresh = (args.fresh or cached.source_sha256 != weights_sha
                 or (cached.runtime, tuple(cached.buckets), cached.precision) != EXPORTS[stack]
                 or stamp.read_text() != code_sha)
    except Exception:  # noqa: BLE001 - anything unreadable is rebuilt
        fresh = True
    if fresh:
        shutil.rmtree(servable_dir, ignore_errors=True)
        runtime, buckets, precision = EXPORTS[stack]
        log(f"exporting {stack} (runtime {runtime}, buckets {','.join(map(str, buckets))}, precision {precision})")
        shape = [] if get_runtime(runtime).ONE_MODEL else ["--buckets", ",".join(map(str, buckets))]
        run_checked([PY39, "-m", "bert_squad_export", weights, "--servable-dir", servable_dir,
                     "--name", settings.SERVABLE_NAME, "--version", "1", "--runtime", runtime, *shape,
                     "--precision", precision, "--calibration-data", args.squad.resolve()],
                    f"exporting {stack}", cwd=tempfile.gettempdir())
        stamp.write_text(code_sha)
    shutil.copyfile(SERVABLE_CONFIG, servable_dir / settings.SERVABLE_NAME / "servable_config.py")
    return servable_dir


def export_onnx(args, weights: Path, weights_sha: str) -> Path:
    """model.onnx and, beside it, model-int8.onnx (ONNX Runtime's quantize_dynamic)."""
    folder = args.cache / f"onnx-{args.model}-seed{args.seed}"
    onnx, stamp = folder / "model.onnx", folder / "source.sha256"
    if args.fresh or not onnx.is_file() or not stamp.is_file() or stamp.read_text().strip() != weights_sha:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        log("exporting ONNX")
        run_checked([PY311, BENCH / "reference.py", "export-onnx", weights, onnx], "exporting ONNX")
        stamp.write_text(weights_sha + "\n")
    if not (folder / ONNX_INT8).is_file():
        log("quantizing ONNX (dynamic int8)")
        run_checked([PY311, BENCH / "reference.py", "quantize-onnx", onnx, folder / ONNX_INT8], "quantizing ONNX")
    return onnx


def text_stages(tokenizer, questions, repeats: int = 3) -> tuple:
    """Tokenize+windows and decode per question, timed in this process with the servable's own calls
    (decode on random scores of the window's bucket length; its cost barely depends on the values).
    Also returns each question's window lengths."""
    rng = np.random.RandomState(0)
    tokenize, decode_s, windows = {}, {}, {}
    for q in questions:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            f = build_features(tokenizer, q["question"], q["context"])
            times.append(time.perf_counter() - t)
        tokenize[q["id"]] = stats.median(times)
        windows[q["id"]] = [int(n) for n in f.lengths]
        scores = [rng.standard_normal((len(f.lengths), settings.MAX_SEQ_LENGTH)).astype(np.float32) for _ in "se"]
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            decode(scores[0], scores[1], f, q["context"])
            times.append(time.perf_counter() - t)
        decode_s[q["id"]] = stats.median(times)
    return {"tokenize": tokenize, "decode": decode_s}, windows


def wait_idle(limit_s: float) -> float:
    """Cores other processes use (5 s samples), after waiting up to `limit_s` for three samples in a row
    under IDLE_CORES."""
    deadline = time.perf_counter() + limit_s
    quiet = 0
    while True:
        cpu = machine.CpuMonitor()
        time.sleep(5)
        foreign = cpu.stop()["foreign_cores"]
        quiet = quiet + 1 if foreign < IDLE_CORES else 0
        if quiet >= 3 or time.perf_counter() >= deadline:
            break
        if not quiet:
            log(f"waiting for an idle machine: other processes use {foreign:.2f} cores")
    if foreign >= IDLE_CORES:
        log(f"warning: other processes use {foreign:.2f} of the cores; numbers will be noisy")
    return foreign


def make_stacks(args, servables, weights: Path, onnx, questions, scratch: Path) -> list:
    job = {"weights": str(weights), "onnx": str(onnx), "vocab": str(weights / "vocab.txt"), "threads": args.threads,
           "questions": questions, "onnx_int8": str(Path(str(onnx)).parent / ONNX_INT8) if onnx else None,
           "openvino": {name: str(servables[ir] / settings.SERVABLE_NAME / "1" / "bert.xml")
                        for name, ir in OPENVINO_IR.items() if ir in servables}}
    made = []
    for name in args.stacks:
        if name in SERVED:
            export, options = SERVED_AS.get(name, (name, ()))
            stack = stacks.ServingStack(name, LABELS[name], servables[export], EXPORTS[export][1],
                                        args.threads, scratch / name, args.client, args.stream, options)
            if name == TRACED:
                stack.trace_to_receiver()
            made.append(stack)
            if args.before is not None:  # right after its twin: the two are measured back to back
                twin = before_servable(servables[export], args.before_config, scratch / "before" / export)
                made.append(stacks.ServingStack(name + BEFORE, f"{LABELS[name]}, before", twin,
                                                EXPORTS[export][1], args.threads, scratch / (name + BEFORE),
                                                args.client, args.stream, options, python=args.before))
        else:  # OpenVINO is in the server venv, ONNX Runtime and PyTorch in the reference venv
            python = PY39 if name in OPENVINO_IR else PY311
            made.append(stacks.ReferenceStack(name, LABELS[name], str(python), BENCH / "reference.py", job,
                                              scratch / name))
    return made


def quietly(args, what: str, measurement):
    """Run `measurement`; while other processes took more than IDLE_CORES meanwhile, wait for an idle
    machine and run it again (at most --retries times). Returns its result and the machine load."""
    for attempt in range(args.retries + 1):
        cpu = machine.CpuMonitor()
        result = measurement()
        load = {**cpu.stop(), "attempts": attempt + 1}
        if load["foreign_cores"] < IDLE_CORES or attempt == args.retries:
            return result, load
        log(f"{what}: other processes used {load['foreign_cores']:.2f} cores meanwhile; measuring again")
        t = time.perf_counter()
        wait_idle(args.wait_idle)
        args.waited_s += time.perf_counter() - t


def measure(args, running: list, questions, text_times) -> tuple:
    """Interleaved: each window length runs on every stack in turn; each concurrency level runs its first
    half of the stream on every stack in turn, then its second half in the reverse order. The GEMM rate
    is measured right before the full-length windows it is the roofline of (the machine's speed drifts).
    Returns the stacks' measurements and the GEMM rate."""
    out = {s.name: {"label": s.label, **s.info, "window_latency": {}, "window_model": {}, "levels": {}, "cpu": {}}
           for s in running}
    for length in WINDOW_LENGTHS:
        if length == settings.MAX_SEQ_LENGTH:
            log("measuring the GEMM rate")
            gemm = measure_gemm(args.threads)
        for s in running:
            if s.name != "serving_384" or length == settings.MAX_SEQ_LENGTH:  # the 384 model runs every length
                times, _ = quietly(args, f"{s.name} window {length}", lambda: s.window(length, args.repeats))
                out[s.name]["window_latency"][str(length)] = times["latency"]
                out[s.name]["window_model"][str(length)] = times["model"]
    log("single-window latencies done")
    for s in running:
        if isinstance(s, stacks.ServingStack):
            out[s.name].update(buckets=s.buckets, null_rtt=s.null_rtt(20), stages=text_times)
    answers = {s.name: [] for s in running}
    halves = [(0, len(questions) // 2), (len(questions) // 2, len(questions))]
    for c in args.levels:
        parts, loads = {s.name: [] for s in running}, {s.name: [] for s in running}
        for half, (lo, hi) in enumerate(halves):  # A B C, then C B A: a drift in machine speed weighs on all alike
            for s in running if half == 0 else running[::-1]:
                part, load = quietly(args, f"{s.name} concurrency {c} half {half + 1}",
                                     lambda: s.sweep(c, questions[lo:hi], lo))
                parts[s.name].append(part)
                loads[s.name].append(load)
        for s in running:
            result = stats.merge_rounds(parts[s.name])
            out[s.name]["cpu"][str(c)] = stats.merge_loads(loads[s.name])
            answers[s.name].append(result.pop("answers"))
            stages = result.pop("stages", None)
            if stages is not None and c == 1:
                out[s.name]["stages"] = {stage: {qid: t[k] for qid, t in stages.items()}
                                         for k, stage in enumerate(("tokenize", "model", "decode"))}
            out[s.name]["levels"][str(c)] = result
            client = (f", client CPU {1000 * result['client_cpu_s'] / len(questions):.1f} ms a question"
                      if "client_cpu_s" in result else "")
            log(f"{s.name}: concurrency {c}: {len(questions) / result['wall_s']:.2f} q/s, {result['errors']} errors, "
                f"foreign load {out[s.name]['cpu'][str(c)]['foreign_cores']:.2f} cores{client}")
    for s in running:
        if isinstance(s, stacks.ServingStack):
            out[s.name]["paired"], _ = quietly(args, f"{s.name} paired pass",
                                               lambda: s.paired_pass(questions[:PAIRED_QUESTIONS]))
    log("paired pass done (each question's predict round trip and its model time in the worker)")
    for s in running:
        if isinstance(s, stacks.ServingStack):
            transport, _ = quietly(args, f"{s.name} transports",
                                   lambda: s.transport_pass(questions[:PAIRED_QUESTIONS], args.transport_rounds))
            out[s.name]["transport"] = transport
            for name, goal in TRANSPORT_GOALS_MS.items():
                # The p50s move by +-2 ms from run to run (each question's model time varies); the median of the
                # per-question differences from Serving's own gRPC moves less, and it is what the goals are judged on.
                base = serving.BASELINE
                paired, null = (1000 * stats.median([r - g for g, r in zip(transport[prefix + base],
                                                                              transport[prefix + name])])
                                for prefix in ("", "null_"))
                log(f"{s.name}: predict p50 at the master {1000 * stats.median(transport[base]):.2f} ms, {name} "
                    f"{1000 * stats.median(transport[name]):.2f} ms; {name} - master, median of "
                    f"{len(transport[name])} paired questions: {paired:+.2f} ms (the goal is <= +{goal:g} ms); of "
                    f"as many refused requests (no model): {null:+.2f} ms")
            batch, _ = quietly(args, f"{s.name} OIP batches",
                               lambda: s.batch_pass(questions[:BATCH_QUESTIONS], BATCH_N))
            out[s.name]["oip_batch"] = batch
            log(f"{s.name}: OIP gRPC, {batch['questions']} questions: requests of {BATCH_N} one at a time "
                f"{batch['qps']['batched']:.2f} q/s, single questions at concurrency {BATCH_N} "
                f"{batch['qps']['concurrent']:.2f} q/s (the goal: batched >= concurrent)")
    for s in running:
        after = s.memory()
        out[s.name]["answers"] = answers[s.name][0]
        out[s.name]["answers_stable"] = all(a == answers[s.name][0] for a in answers[s.name])
        out[s.name]["memory"] = {"rss_ready_bytes": s.info["memory_ready"]["rss"], "rss_after_bytes": after["rss"],
                                 "hwm_bytes": after["hwm"]}
        del out[s.name]["memory_ready"]
        if getattr(s, "receiver", None) is not None:  # the traced stack: spans its receiver got, so far
            out[s.name]["spans_received"] = len(s.receiver.spans)
            log(f"{s.name}: {out[s.name]['spans_received']} spans received over OTLP")
    return out, gemm


def accuracy(dataset: dict, results: dict) -> dict:
    stacks = results["stacks"]
    ids = [q["id"] for q in results["questions"]]
    part = squad.subset(dataset, ids)
    out = {"em_f1": {name: evaluate(part, {qid: a[0] for qid, a in s["answers"].items()})
                     for name, s in stacks.items()}}
    ours = stacks[results["meta"]["ours"]]["answers"]
    for name, s in stacks.items():
        if name != results["meta"]["ours"]:
            out[f"ours_vs_{name}"] = stats.compare_answers(ours, s["answers"])
    return out


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = parse_args(argv)
    # MindSpore Serving's modules install their own SIGINT/SIGTERM handlers when imported, which would
    # leave Ctrl-C or a kill unanswered and the servers running: import them now, then take the signals
    # back so the `finally` below always stops every stack.
    importlib.import_module("mindspore_serving.client")

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    args.cache = args.cache.resolve()
    t_start = time.perf_counter()
    dataset = squad.load_dataset(args.squad)
    questions = [q.to_json() for q in squad.sample(dataset, args.questions, args.seed)]
    results = {"meta": {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "machine": machine.describe(), "threads": args.threads, "model": args.model,
                        "seed": args.seed, "levels": args.levels, "ours": OURS, "repeats": args.repeats,
                        "client": serving.CLIENTS[args.client].name, "stream": args.stream,
                        "command": " ".join([Path(sys.executable).name, "bench/run.py"] + (argv or sys.argv[1:]))},
               "questions": [{"id": q["id"]} for q in questions]}
    if args.before is not None:
        results["meta"]["before"] = before_code(args.before)
        args.before_config = Path(results["meta"]["before"]["servable_config"])
        if not args.before_config.is_file():
            raise serving.BenchError(f"--before: {args.before_config} not found: is {args.before} a venv with a "
                                     f"checkout of this project installed (pip install --no-deps -e CHECKOUT)?")

    args.waited_s = 0.0  # seconds spent waiting for an idle machine, kept out of the run time
    t = time.perf_counter()
    results["meta"]["foreign_cores_before"] = wait_idle(args.wait_idle)
    args.waited_s += time.perf_counter() - t
    weights = build_weights(args)
    config = json.loads((weights / "config.json").read_text())
    flops = stats.bert_flops(settings.MAX_SEQ_LENGTH, config["hidden_size"], config["num_hidden_layers"],
                             config["intermediate_size"])
    weights_sha = sha256_file(weights / "model.safetensors")
    results["meta"]["weights"] = {"folder": str(weights), "sha256": weights_sha,
                                  "config": {k: config[k] for k in ("hidden_size", "num_hidden_layers",
                                                                    "num_attention_heads", "intermediate_size")}}
    exports = [s for s in EXPORTS if s in args.stacks
               or s in {OPENVINO_IR.get(name) or SERVED_AS.get(name, ("",))[0] for name in args.stacks}]
    servables = {s: export_servable(args, weights, weights_sha, s) for s in exports}
    onnx = (export_onnx(args, weights, weights_sha) if {"onnxruntime", "onnxruntime_int8"} & set(args.stacks)
            else None)

    tokenizer = load_tokenizer(str(weights / "vocab.txt"))
    text_times, windows = text_stages(tokenizer, questions)
    results["windows"] = windows
    scratch = Path(tempfile.mkdtemp(prefix="bert-squad-bench-"))
    running = []
    try:
        for stack in make_stacks(args, servables, weights, onnx, questions, scratch):
            log(f"{stack.name}: starting")
            stack.start()
            running.append(stack)
            memory = stack.info["memory_ready"]["rss"] / 1e9
            log(f"{stack.name}: ready in {stack.info['cold_start_s']:.1f} s, RSS {memory:.2f} GB")
        results["stacks"], results["roofline"] = measure(args, running, questions, text_times)
        results["roofline"].update(flops_384=flops, roofline_384_s=flops / (results["roofline"]["gflops"] * 1e9))
    finally:
        for stack in running:
            stack.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    for s in results["stacks"].values():
        s["summary"] = stats.summaries(s)
        s["breakdown"] = stats.stage_breakdown(s)
    results["accuracy"] = accuracy(dataset, results)
    results["goals"] = stats.goals(results)
    results["ratios"] = stats.ratios(results)
    results["meta"]["total_s"] = time.perf_counter() - t_start - args.waited_s
    results["meta"]["waited_s"] = args.waited_s

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    plot = args.out / "throughput.png"
    run_checked([PY311, BENCH / "plot.py", args.out / "results.json", plot], "plotting")
    (args.out / "report.md").write_text(report.render(results, plot.name))
    print(report.summary_lines(results))
    log(f"done in {results['meta']['total_s']:.0f} s: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (serving.BenchError, FileNotFoundError, ValueError) as e:
        print(f"bench: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench: interrupted; every stack it started was stopped", file=sys.stderr)
        sys.exit(130)
