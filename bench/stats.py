"""Numbers the report is made of, computed from the raw measurements of a run.

Pure Python (no numpy, no MindSpore): it runs in the orchestrator and in tests. Raw
results keep every measured time; everything here is derived from them, so a report can
be recomputed from results.json.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

# Goals of issue #6.
GOAL_QPS_VS_ORT = 1.0  # fp32 stream throughput, our default servable / ONNX Runtime (dynamic shapes)
GOAL_QPS_VS_FIXED = 2.0  # our default servable / the same weights served with one 384 bucket
GOAL_ROOFLINE = 1.10  # model time of one 384-token window / roofline time
GOAL_OVERHEAD_S = 0.005  # p50 per question of everything but model time
GOAL_RSS_BYTES = 2e9  # worker RSS, BERT-base able to run every window length
GOAL_COLD_START_S = 30.0
# Issue #13, judged on every served bf16 / int8 stack of a run (their precision from the serve command's ready line).
GOAL13_VS_FP32 = {"int8": 2.5, "bf16": 1.7}  # throughput / our fp32 default, at every concurrency level
GOAL13_VS_OPENVINO = 1.0  # served int8 / OpenVINO int8 in-process, at concurrency 2 and up
GOAL13_VS_OPENVINO_C1 = 0.9  # the same at concurrency 1, where the in-process stack pays no server
GOAL13_OVERHEAD_S = 0.0015
GOAL13_RSS_BYTES = 1e9  # an int8 BERT-base worker
GOAL13_COLD_START_S = 15.0


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks (numpy's default)."""
    data = sorted(values)
    if not data:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    rank = q / 100 * (len(data) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def median(values: Iterable[float]) -> float:
    return percentile(values, 50)


def summarize(latencies: Sequence[float], wall_s: float) -> Dict[str, float]:
    """Latency percentiles (s) and throughput (questions/s) of one concurrency level."""
    if wall_s <= 0:
        raise ValueError(f"wall time must be positive, got {wall_s}")
    return {
        "n": len(latencies),
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
        "mean": sum(latencies) / len(latencies),
        "qps": len(latencies) / wall_s,
    }


def merge_rounds(parts: Sequence[dict]) -> dict:
    """One concurrency level from its rounds (sweeps over consecutive slices of the stream): per-question
    lists and dicts joined in order, wall times and error counts added."""
    if not parts:
        raise ValueError("a level needs at least one round")
    out: dict = {"ids": [], "latencies": [], "wall_s": 0.0, "errors": 0, "error_examples": []}
    for part in parts:
        out["ids"] += part["ids"]
        out["latencies"] += part["latencies"]
        out["wall_s"] += part["wall_s"]
        out["errors"] += part["errors"]
        out["error_examples"] = (out["error_examples"] + part["error_examples"])[:3]
        if "client_cpu_s" in part:
            out["client_cpu_s"] = out.get("client_cpu_s", 0.0) + part["client_cpu_s"]
        for key in ("answers", "stages"):
            if key in part:
                out.setdefault(key, {}).update(part[key])
    return out


def merge_loads(loads: Sequence[Mapping[str, float]]) -> Dict[str, float]:
    """Machine load over a level's rounds: cores averaged over their time, attempts added."""
    seconds = sum(load["seconds"] for load in loads)
    return {"seconds": seconds,
            "our_cores": sum(load["our_cores"] * load["seconds"] for load in loads) / seconds,
            "foreign_cores": sum(load["foreign_cores"] * load["seconds"] for load in loads) / seconds,
            "load_avg_1m": loads[-1]["load_avg_1m"], "attempts": sum(load.get("attempts", 1) for load in loads)}


def bert_flops(seq: int, hidden: int = 768, layers: int = 12, intermediate: int = 3072) -> float:
    """Multiply-add FLOPs (2 per MAC) of a BERT encoder on one window of `seq` tokens.

    Per layer: Q, K, V and output projections (4 seq*h*h MACs), the feed-forward pair
    (2 seq*h*i) and attention scores plus weighted sum (2 seq*seq*h). Embeddings,
    softmax, LayerNorm and the 2-output QA head are left out (under 0.1%).
    """
    macs = 4 * seq * hidden * hidden + 2 * seq * hidden * intermediate + 2 * seq * seq * hidden
    return 2.0 * layers * macs


def compare_answers(a: Mapping[str, Sequence], b: Mapping[str, Sequence]) -> Dict[str, object]:
    """How many questions got the same answer (text, start, end) from both; ids that differ."""
    common = sorted(set(a) & set(b))
    differ = [qid for qid in common if list(a[qid]) != list(b[qid])]
    return {"compared": len(common), "identical": len(common) - len(differ), "differ": differ,
            "missing": sorted(set(a) ^ set(b))}


def peak_qps(stack: Mapping) -> float:
    """The best throughput over the concurrency levels of a stack's sweep."""
    return max(level["qps"] for level in stack["summary"].values())


def model_time_384(stack: Mapping, statistic: Callable[[Sequence[float]], float] = median) -> Optional[float]:
    """Model time of one full 384-token window (measured): in-process stacks time the call; Serving
    stacks, the worker's model stage (its $BERT_SQUAD_MODEL_TIMES log), without queue and transport."""
    times = stack["window_model"].get("384")
    return statistic(times) if times else None


def stage_breakdown(stack: Mapping) -> Dict[str, float]:
    """p50 per question (s) of each stage at concurrency 1, and the queueing at the highest level.

    Reference stacks time tokenize, model and decode in their own process (no transport).
    Serving stacks: tokenize and decode are timed in-process with the same library calls; a
    paired pass sends the questions to `predict` one at a time and reads the worker's model-stage
    time of each from its log. All measured; queue + transport = end-to-end - tokenize - model -
    decode, overhead = end-to-end - model.
    """
    if "paired" in stack:
        paired = stack["paired"]
        e2e = dict(zip(paired["ids"], paired["e2e"]))
        model = dict(zip(paired["ids"], paired["model"]))
    else:
        level = stack["levels"]["1"]
        e2e = dict(zip(level["ids"], level["latencies"]))
        model = stack["stages"]["model"]
    tokenize, decode = stack["stages"]["tokenize"], stack["stages"]["decode"]
    rest = [e2e[q] - tokenize[q] - model[q] - decode[q] for q in e2e]
    top = max(stack["levels"], key=int)
    return {
        "e2e": median(e2e.values()),
        "tokenize": median(tokenize[q] for q in e2e),
        "model": median(model[q] for q in e2e),
        "decode": median(decode[q] for q in e2e),
        "queue_transport": median(rest),
        "overhead": median(e2e[q] - model[q] for q in e2e),
        "null_rtt": median(stack["null_rtt"]) if "null_rtt" in stack else 0.0,
        "queue_at_top": median(stack["levels"][top]["latencies"]) - median(stack["levels"]["1"]["latencies"]),
        "top_concurrency": int(top),
    }


def summaries(stack: Mapping) -> Dict[str, Dict[str, float]]:
    return {c: summarize(level["latencies"], level["wall_s"]) for c, level in stack["levels"].items()}


def goals(results: Mapping) -> List[Dict[str, object]]:
    """Each goal of issues #6 and #13: name, measured value, target, met or not."""
    stacks = results["stacks"]
    ours = stacks[results["meta"]["ours"]]
    out = []

    def goal(name, value, target, ok, unit="", note=""):
        out.append({"goal": name, "value": value, "target": target, "met": bool(ok), "unit": unit, "note": note})

    if "onnxruntime" in stacks:
        r = peak_qps(ours) / peak_qps(stacks["onnxruntime"])
        goal("stream throughput vs ONNX Runtime (peak over concurrency)", r, GOAL_QPS_VS_ORT,
             r >= GOAL_QPS_VS_ORT, "x")
    if "serving_384" in stacks:
        r = peak_qps(ours) / peak_qps(stacks["serving_384"])
        goal("stream throughput vs fixed-384 servable", r, GOAL_QPS_VS_FIXED, r >= GOAL_QPS_VS_FIXED, "x")
    t384 = model_time_384(ours)
    roof = results["roofline"]["roofline_384_s"]
    if t384 is not None and roof:
        best = model_time_384(ours, min) / roof
        goal("model time, one 384 window / roofline (p50)", t384 / roof, GOAL_ROOFLINE, t384 / roof <= GOAL_ROOFLINE,
             "x", f"fastest run {best:.2f}x")
    overhead = ours["breakdown"]["overhead"]
    goal("serving overhead p50 per question", overhead * 1000, GOAL_OVERHEAD_S * 1000,
         overhead <= GOAL_OVERHEAD_S, "ms")
    rss = ours["memory"]["rss_after_bytes"]
    goal("worker RSS, every window length", rss / 1e9, GOAL_RSS_BYTES / 1e9, rss <= GOAL_RSS_BYTES, "GB")
    goal("cold start", ours["cold_start_s"], GOAL_COLD_START_S, ours["cold_start_s"] <= GOAL_COLD_START_S, "s")
    if "serving_384" in stacks:
        same = results["accuracy"]["ours_vs_serving_384"]
        goal("answers identical to fixed-384", same["identical"], same["compared"],
             same["identical"] == same["compared"] and not same["missing"], "questions")
    for name, stack in stacks.items():
        ready = dict(re.findall(r"(\w+)=(\S+)", stack.get("ready_line", "")))
        precision = ready.get("precision")
        if precision not in GOAL13_VS_FP32:
            continue
        r = min(level_ratios(stack, ours).values())
        goal(f"{name}: throughput vs our fp32 default (lowest level)", r, GOAL13_VS_FP32[precision],
             r >= GOAL13_VS_FP32[precision], "x")
        if precision == "int8" and "openvino_int8" in stacks:
            by_level = level_ratios(stack, stacks["openvino_int8"])
            if 1 in by_level:
                goal(f"{name}: throughput vs OpenVINO int8 in-process, concurrency 1", by_level[1],
                     GOAL13_VS_OPENVINO_C1, by_level[1] >= GOAL13_VS_OPENVINO_C1, "x")
            higher = {c: v for c, v in by_level.items() if c >= 2}
            if higher:
                c, r = min(higher.items(), key=lambda item: item[1])
                goal(f"{name}: throughput vs OpenVINO int8 in-process, concurrency 2 and up (lowest)", r,
                     GOAL13_VS_OPENVINO, r >= GOAL13_VS_OPENVINO, "x", f"at concurrency {c}")
        if precision == "int8" and ready.get("workers") == "1":
            overhead = stack["breakdown"]["overhead"]
            goal(f"{name}: serving overhead p50 per question", overhead * 1000, GOAL13_OVERHEAD_S * 1000,
                 overhead <= GOAL13_OVERHEAD_S, "ms")
            rss = stack["memory"]["rss_after_bytes"]
            goal(f"{name}: worker RSS", rss / 1e9, GOAL13_RSS_BYTES / 1e9, rss <= GOAL13_RSS_BYTES, "GB")
            goal(f"{name}: cold start", stack["cold_start_s"], GOAL13_COLD_START_S,
                 stack["cold_start_s"] <= GOAL13_COLD_START_S, "s")
    return out


def level_ratios(stack: Mapping, other: Mapping) -> Dict[int, float]:
    """Throughput of `stack` over `other` at each concurrency level both ran."""
    return {int(c): level["qps"] / other["summary"][c]["qps"] for c, level in stack["summary"].items()
            if c in other["summary"]}


def ratios(results: Mapping) -> List[Dict[str, object]]:
    """Throughput and p50 latency of our default stack against every other stack, per concurrency level."""
    stacks, ours = results["stacks"], results["meta"]["ours"]
    base = stacks[ours]["summary"]
    rows = []
    for name, other in stacks.items():
        if name == ours:
            continue
        for c, qps_ratio in level_ratios(stacks[ours], other).items():
            rows.append({"other": name, "concurrency": c, "qps_ratio": qps_ratio,
                         "p50_ratio": base[str(c)]["p50"] / other["summary"][str(c)]["p50"]})
    return rows
