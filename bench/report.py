"""results.json -> the Markdown report and the lines run.py prints (pure Python)."""
from __future__ import annotations

from typing import List, Mapping, Sequence

from bench import serving, stats
from bert_squad.runtimes.batching import bucket_for
from bert_squad.settings import BUCKETS


STREAM_TEXT = {"aio": "one asyncio thread, one channel (bert_squad_client.AsyncClient)",
               "threads": "a blocking client per thread"}


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _window_cell(times) -> str:
    return f"{_ms(stats.median(times))} ({_ms(min(times))})" if times else "—"


def _goal_value(g: Mapping) -> str:
    if g["unit"] == "questions":
        return f"{g['value']} of {g['target']} identical"
    return f"{g['value']:.2f} {g['unit']}" + (f" ({g['note']})" if g.get("note") else "")


def _goal_target(g: Mapping) -> str:
    if g["unit"] == "questions":
        return "all"
    sign = "≥" if "throughput" in g["goal"] else "≤"
    return f"{sign} {g['target']:.2f} {g['unit']}"


def summary_lines(results: Mapping) -> str:
    """The goals, one line each, for the terminal."""
    lines = ["goal                                                        value          target        met"]
    for g in results["goals"]:
        lines.append(f"{g['goal']:<60}{_goal_value(g):<15}{_goal_target(g):<14}{'yes' if g['met'] else 'NO'}")
    for r in results["ratios"]:
        lines.append(f"{results['meta']['ours']} / {r['other']:<12} at concurrency {r['concurrency']}: "
                     f"throughput {r['qps_ratio']:.2f}x, p50 latency {r['p50_ratio']:.2f}x")
    return "\n".join(lines)


def render(results: Mapping, plot_name: str) -> str:
    meta, stacks, roof = results["meta"], results["stacks"], results["roofline"]
    windows = results["windows"]
    lengths = [n for ws in windows.values() for n in ws]
    buckets = {b: sum(1 for n in lengths if bucket_for(n, BUCKETS) == b) for b in BUCKETS}
    multi = sum(1 for ws in windows.values() if len(ws) > 1)
    m = meta["machine"]
    out = [
        "# bert_squad benchmark (issues #6 and #13)",
        "",
        f"Run {meta['started']}, `{meta['command']}`, {meta['total_s']:.0f} s in all"
        + (f" (plus {meta['waited_s']:.0f} s waiting for an idle machine). " if meta.get("waited_s") else ". ")
        + f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']:.0f} GB. Every stack: {meta['threads']} "
        f"inference threads, fp32 unless its name says bf16 or int8, the same weights ({meta['model']}: hidden {meta['weights']['config']['hidden_size']}, "
        f"{meta['weights']['config']['num_hidden_layers']} layers; sha256 {meta['weights']['sha256'][:12]}…).",
        "",
        f"Stream: {len(windows)} SQuAD v1.1 dev questions (seeded sample), {len(lengths)} windows, "
        f"{multi} questions with more than one window; window tokens p50 {stats.median(lengths):.0f}, "
        f"p90 {stats.percentile(lengths, 90):.0f}; windows per bucket: "
        + ", ".join(f"{b}: {c}" for b, c in buckets.items()) + ". Servables' stream: " + STREAM_TEXT[meta.get("stream", "threads")] + "; other passes: " + meta["client"] + ". "
        f"Other processes used {meta['foreign_cores_before']:.2f} cores just before measuring "
        "(per-phase load at the end)."
        + (f" Stacks named `*_before` (labels \"…, before\") run the serve command of an earlier checkout, "
           f"{meta['before']['revision']} ({meta['before']['code']}), on {meta['before']['python']}; the others this "
           f"checkout's." if "before" in meta else ""),
        "",
        "## Goals",
        "",
    ]
    out += _table(["goal", "measured", "target", "met"],
                  [[g["goal"], _goal_value(g), _goal_target(g), "yes" if g["met"] else "**no**"]
                   for g in results["goals"]])
    out += ["", "## Throughput and latency on the SQuAD stream", "",
            "Each concurrency level sends every question once (one question per request) with that many in flight, "
            "in two halves: the first half on every stack in turn, then the second half in the reverse order, so "
            "a drift in machine speed during a level weighs on every stack alike; questions/s = questions / the "
            "two halves' wall time. Latency is per question as the client sees it (ms).", ""]
    rows = []
    for name, s in stacks.items():
        for c, v in s["summary"].items():
            client_cpu = s["levels"][c].get("client_cpu_s")
            rows.append([s["label"], c, f"{v['qps']:.2f}", _ms(v["p50"]), _ms(v["p95"]), _ms(v["p99"]),
                         s["levels"][c]["errors"],
                         "" if client_cpu is None else f"{1000 * client_cpu / len(s['levels'][c]['ids']):.1f}"])
    out += _table(["stack", "concurrency", "questions/s", "p50", "p95", "p99", "errors",
                   "client CPU ms/question"], rows)
    out += ["", f"![throughput and latency]({plot_name})", "",
            f"Ratios ({stacks[meta['ours']]['label']} / other stack):", ""]
    out += _table(["other stack", "concurrency", "throughput ratio", "p50 latency ratio"],
                  [[stacks[r["other"]]["label"], r["concurrency"], f"{r['qps_ratio']:.2f}x", f"{r['p50_ratio']:.2f}x"]
                   for r in results["ratios"]])

    out += ["", "## One window (ms, p50 and fastest run)", "",
            "Serving: a `predict_features` gRPC round trip (model + transport, no text stages; the window runs in "
            "the smallest bucket that holds it, or at its exact length with lite_direct), and in brackets [ ] the "
            "p50 model time inside the worker for those same requests (its model-stage log, "
            "$BERT_SQUAD_MODEL_TIMES). ONNX Runtime / PyTorch: the model call in-process on exactly that many "
            "tokens.", ""]
    lengths_all = sorted({int(n) for s in stacks.values() for n in s["window_latency"]})

    def cell(s, n):  # servables (they have a null request) also show the worker's model time
        latency, model = s["window_latency"].get(str(n)), s["window_model"].get(str(n))
        if latency and model and "null_rtt" in s:
            return f"{_window_cell(latency)} [{stats.median(model) * 1000:.1f}]"
        return _window_cell(latency)

    out += _table(["tokens"] + [s["label"] for s in stacks.values()],
                  [[n] + [cell(s, n) for s in stacks.values()] for n in lengths_all])
    ours = stacks[meta["ours"]]
    model_384 = stats.model_time_384(ours)
    out += ["", f"Roofline: {roof['flops_384'] / 1e9:.1f} GFLOP per 384-token window / {roof['gflops']:.0f} GFLOP/s "
            f"(best 2048x2048 float32 numpy matmul, {meta['threads']} threads, measured right before the 384-token "
            f"windows) = {roof['roofline_384_s'] * 1000:.0f} ms. "
            f"{ours['label']}: model time at 384: {model_384 * 1000:.0f} ms = "
            f"{model_384 / roof['roofline_384_s']:.2f}x roofline. GEMM runs: "
            + "; ".join(f"Python {r['python']} numpy {r['numpy']}: {r['gflops_best']:.0f} GFLOP/s best, "
                        f"{r['gflops_median']:.0f} median ({r['kernel']})" for r in roof["runs"])
            + (f". Unset for the GEMM run: {', '.join(roof['unset'])}." if roof["unset"] else ".")]

    out += ["", "## Where the time goes (p50 per question, concurrency 1, ms)", "",
            "Measured: every ONNX Runtime / PyTorch stage (timed in their process; no transport); for the servables, "
            "tokenize+windows and decode (the same library calls, timed in the benchmark process) and, in a paired "
            "pass over the first questions, each question's `predict` round trip and the worker's model-stage time "
            "for it (its $BERT_SQUAD_MODEL_TIMES log). Then queue + transport = end-to-end − tokenize − model − "
            "decode, overhead = end-to-end − model; the null request is a request the first stage refuses "
            "(Serving's fixed cost). Queue at the top level = p50 latency there − p50 at concurrency 1.", ""]
    out += _table(["stack", "end-to-end", "tokenize", "model", "decode", "queue + transport", "overhead",
                   "null request", "queue at top level"],
                  [[s["label"]] + [_ms(s["breakdown"][k]) for k in
                                   ("e2e", "tokenize", "model", "decode", "queue_transport", "overhead")]
                   + [_ms(s["breakdown"]["null_rtt"]) if "null_rtt" in s else "—",
                      f"{_ms(s['breakdown']['queue_at_top'])} (c={s['breakdown']['top_concurrency']})"]
                   for s in stacks.values()])

    with_transport = [s for s in stacks.values() if "transport" in s]
    if with_transport:
        out += ["", "## Protocols (p50 per question, concurrency 1, ms)", "",
                "Each question asked over every protocol in turn (the first rotating): Serving's gRPC at the "
                "master itself (`serving`, the baseline: no front door), and through the front door its gRPC and "
                "REST APIs and the Open Inference Protocol's gRPC and REST; `bare_aio` and `bare_sync`: Serving's gRPC "
                "through bench/passthrough.py (bytes forwarded to the master and nothing else; grpc.aio, and grpc.server "
                "on a thread pool) on the serve command's interpreter, the least a front door in its grpcio costs. "
                "Paired: the median of each question's "
                "difference from the baseline; refused: the same for a request the first stage refuses (no model "
                "time). OIP batches: requests of N questions one at a time vs single questions from N threads, "
                "over OIP gRPC (best of two runs).", ""]
        rows = []
        for s in with_transport:
            tr = s["transport"]
            for name in [k for k in serving.TRANSPORTS if k in tr]:
                paired = [stats.median([r - g for g, r in zip(tr[p + serving.BASELINE], tr[p + name])])
                          for p in ("", "null_")]
                rows.append([s["label"], name, _ms(stats.median(tr[name])),
                             "—" if name == serving.BASELINE else f"{paired[0] * 1000:+.2f}",
                             "—" if name == serving.BASELINE else f"{paired[1] * 1000:+.2f}"])
        out += _table(["stack", "protocol", "p50", "paired − serving", "refused − serving"], rows)
        batches = [(s["label"], s["oip_batch"]) for s in with_transport if "oip_batch" in s]
        if batches:
            out += [""] + _table(["stack", "questions", "N", "q/s, requests of N", "q/s, N single at once"],
                                 [[label, b["questions"], b["n"], f"{b['qps']['batched']:.2f}",
                                   f"{b['qps']['concurrent']:.2f}"] for label, b in batches])

    out += ["", "## Memory and cold start", "",
            "Serving: the worker processes (start_worker.py) under the serve command, summed, /proc VmRSS when ready and "
            "after the run, VmHWM = peak. Reference stacks: their runner process (Python, tokenizer and model). "
            "Cold start: process start to the first answer being possible (serve's ready line, after its warm-up "
            "question; the runner's ready line after one question).", ""]
    out += _table(["stack", "cold start (s)", "RSS ready (GB)", "RSS after run (GB)", "peak RSS (GB)"],
                  [[s["label"], f"{s['cold_start_s']:.1f}", f"{s['memory']['rss_ready_bytes'] / 1e9:.2f}",
                    f"{s['memory']['rss_after_bytes'] / 1e9:.2f}", f"{s['memory']['hwm_bytes'] / 1e9:.2f}"]
                   for s in stacks.values()])

    acc = results["accuracy"]
    out += ["", "## Answers", ""]
    untrained = {"base": "The weights are random (seeded)",
                 "minilm": "The encoder is the real all-MiniLM-L6-v2, but its QA head is random (seeded)"}
    out += [f"{untrained[meta['model']]}, so answers are arbitrary and EM/F1 are near zero; they show that every "
            "stack was scored, not model quality. What matters is that the stacks agree.", ""]
    out += _table(["stack", "EM", "F1", "answers same at every concurrency"],
                  [[s["label"], f"{acc['em_f1'][n]['exact_match']:.1f}", f"{acc['em_f1'][n]['f1']:.1f}",
                    "yes" if s["answers_stable"] else "**no**"] for n, s in stacks.items()])
    out += [""]
    for key, cmp in acc.items():
        if key.startswith("ours_vs_"):
            other = stacks[key[len("ours_vs_"):]]["label"]
            line = (f"- {ours['label']} vs {other}: {cmp['identical']} of {cmp['compared']} answers identical "
                    f"(text, start, end)")
            if cmp["differ"]:
                line += "; differ: " + ", ".join(cmp["differ"][:10]) + ("…" if len(cmp["differ"]) > 10 else "")
            out.append(line + ".")
    out += ["", "## Machine load while measuring", "",
            "Average cores used by the benchmark's own processes and by everything else on the machine during the "
            "kept attempt of each level (a level is measured again, up to --retries times, when other processes "
            "took more than a quarter of a core meanwhile).", ""]
    out += _table(["stack", "concurrency", "seconds", "our cores", "foreign cores", "load avg (1 min) at end",
                   "attempts"],
                  [[s["label"], c, f"{v['seconds']:.0f}", f"{v['our_cores']:.2f}", f"{v['foreign_cores']:.2f}",
                    f"{v['load_avg_1m']:.2f}", v.get("attempts", 1)] for s in stacks.values() for c, v in s["cpu"].items()])
    versions = [f"{s['label']}: {s['version']}" for s in stacks.values() if "version" in s]
    if versions:
        out += ["", "Versions: " + "; ".join(versions) + "."]
    return "\n".join(out) + "\n"
