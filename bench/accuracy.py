"""Accuracy of every precision on the real QA model, through the served path.

The model (../shared/models/minilm-squad-b, README there) was fine-tuned on the SQuAD dev articles of its
train_titles.json; it is evaluated on the other articles (eval_titles.json) and int8 is calibrated on the
training articles only. Each stack is exported with bert-squad-export, served by bert-squad-serve, and asked
every question by bert-squad-predict over gRPC; answers are scored with the official v1.1 metric and compared
with lite_direct fp32's, answer by answer.

    .stack/py39/bin/python -m bench.accuracy [--questions N] [--out DIR]

tests/test_precision_gate.py runs it on a slice; the README's accuracy table is a full run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from bench.serving import start_server, stop_server
from bert_squad.text.metric import evaluate

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO.parent / "shared" / "models" / "minilm-squad-b"
SQUAD_DEV = REPO.parent / "shared" / "data" / "squad-v1.1-dev.json"
REFERENCE = "lite_direct-fp32"
PY311 = REPO / ".stack" / "py311" / "bin" / "python"  # tritonclient's venv, for --oip
OIP_BATCH = 8  # questions per OIP request (issue 25)
# name -> bert-squad-export arguments
STACKS: Dict[str, Tuple[str, ...]] = {
    REFERENCE: ("--precision", "fp32", "--runtime", "lite_direct"),
    "openvino-fp32": ("--precision", "fp32", "--runtime", "openvino"),
    "openvino-bf16": ("--precision", "bf16"),
    "openvino-int8": ("--precision", "int8"),
}


def split_dataset(model_dir: Path, dataset: Path, out: Path, questions: Optional[int]) -> Tuple[Path, Path]:
    """(evaluation file, calibration file): the model's evaluation articles, cut after `questions` questions
    when given, and its training articles."""
    data = json.loads(dataset.read_text(encoding="utf-8"))
    titles = {name: set(json.loads((model_dir / f"{name}_titles.json").read_text())) for name in ("train", "eval")}
    evaluation, left = [], questions
    for article in (a for a in data["data"] if a["title"] in titles["eval"]):
        paragraphs = []
        for paragraph in article["paragraphs"]:
            if left is not None and left <= 0:
                break
            qas = paragraph["qas"] if left is None else paragraph["qas"][:left]
            paragraphs.append({**paragraph, "qas": qas})
            left = None if left is None else left - len(qas)
        if paragraphs:
            evaluation.append({**article, "paragraphs": paragraphs})
    out.mkdir(parents=True, exist_ok=True)
    files = out / "eval.json", out / "calibration.json"
    files[0].write_text(json.dumps({"version": data.get("version", "1.1"), "data": evaluation}))
    files[1].write_text(json.dumps({"version": "1.1", "data": [a for a in data["data"] if a["title"] in titles["train"]]}))
    return files


def export(name: str, model_dir: Path, servable: Path, calibration: Path, python: str = sys.executable) -> float:
    """Export stack `name` into its own servable folder; returns the seconds it took."""
    started = time.perf_counter()
    command = [python, "-m", "bert_squad_export", str(model_dir), "--servable-dir", str(servable), "--force",
               "--version", "1", "--calibration-data", str(calibration), *STACKS[name]]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"export of {name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def predict(servable: Path, questions: Path, workdir: Path, threads: int, python: str = sys.executable,
            oip: bool = False) -> dict:
    """Serve `servable`, answer every question of `questions` with bert-squad-predict over gRPC and, with `oip`,
    again over the Open Inference Protocol's gRPC (tritonclient.grpc, bench/oip_predict.py)."""
    server = start_server(servable, threads, workdir)
    try:
        output = workdir / "predictions.json"
        command = [python, "-m", "bert_squad_client.predict", str(questions), "-o", str(output), "--server",
                   server.address, "--concurrency", "4", "--quiet"]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"bert-squad-predict failed:\n{done.stderr[-3000:]}")
        run = {"predictions": json.loads(output.read_text()), "seconds": seconds, "ready": server.ready_line}
        if oip:
            oip_output = workdir / "predictions-oip-grpc.json"
            command = [str(PY311), str(REPO / "bench" / "oip_predict.py"), server.oip_grpc_address, str(questions),
                       str(oip_output), str(OIP_BATCH)]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
            if done.returncode != 0:
                raise RuntimeError(f"the OIP gRPC run failed:\n{done.stderr[-3000:]}")
            run["oip_grpc"] = {"predictions": json.loads(oip_output.read_text()),
                               "seconds": time.perf_counter() - started}
        return run
    finally:
        stop_server(server)


def compare(dataset: dict, runs: Dict[str, dict], reference_stack: str = REFERENCE) -> List[dict]:
    """Per stack: EM, F1, and the share of answers identical to reference_stack's; a stack also asked over OIP
    gRPC gets a row of its own ("<stack> oip-grpc") whose answers are compared with that stack's."""
    reference = runs[reference_stack]["predictions"]
    rows = []
    for name, run in runs.items():
        if "oip_grpc" in run:
            oip = run["oip_grpc"]
            same = sum(oip["predictions"].get(qid) == answer for qid, answer in run["predictions"].items())
            scores = evaluate(dataset, oip["predictions"])
            rows.append({"stack": f"{name} oip-grpc", "questions": len(oip["predictions"]),
                         "exact_match": round(scores["exact_match"], 2), "f1": round(scores["f1"], 2),
                         f"identical_to_{name}": round(100 * same / len(run["predictions"]), 2),
                         "predict_seconds": round(oip["seconds"], 1)})
        predictions = run["predictions"]
        scores = evaluate(dataset, predictions)
        same = sum(predictions.get(qid) == answer for qid, answer in reference.items()) / len(reference)
        rows.append({"stack": name, "questions": len(predictions), "exact_match": round(scores["exact_match"], 2),
                     "f1": round(scores["f1"], 2), "identical_to_" + reference_stack: round(100 * same, 2),
                     "predict_seconds": round(run["seconds"], 1)})
    return rows


def run(out: Path, questions: Optional[int], stacks: Sequence[str] = tuple(STACKS), threads: int = 2,
        model_dir: Path = MODEL, dataset: Path = SQUAD_DEV, log=print, oip: bool = False) -> List[dict]:
    """Export, serve and ask every stack; answers are compared with the first stack's."""
    eval_file, calibration = split_dataset(model_dir, dataset, out / "data", questions)
    runs = {}
    for name in stacks:
        servable = out / "servables" / name
        seconds = export(name, model_dir, servable, calibration)
        log(f"{name}: exported in {seconds:.0f} s")
        runs[name] = predict(servable, eval_file, out / "runs" / name, threads, oip=oip)
        log(f"{name}: {len(runs[name]['predictions'])} answers in {runs[name]['seconds']:.0f} s")
    rows = compare(json.loads(eval_file.read_text()), runs, stacks[0])
    (out / "accuracy.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, help="evaluation questions (default: all 5,609)")
    parser.add_argument("--out", type=Path, default=Path("bench-accuracy"), help="work and result folder")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--oip", action="store_true",
                        help=f"also ask every question over OIP gRPC (tritonclient.grpc, requests of {OIP_BATCH})")
    parser.add_argument("--stacks", default=",".join(STACKS),
                        help=f"comma-separated, the first is the reference (default: {','.join(STACKS)})")
    args = parser.parse_args(argv)
    stacks = [name.strip() for name in args.stacks.split(",") if name.strip()]
    unknown = sorted(set(stacks) - set(STACKS))
    if unknown or not stacks:
        parser.error(f"--stacks takes names from {', '.join(STACKS)}, got {unknown or 'none'}")
    for row in run(args.out, args.questions, stacks, threads=args.threads, oip=args.oip):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
