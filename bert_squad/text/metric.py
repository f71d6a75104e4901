"""SQuAD v1.1 exact match and F1, scored the way the official evaluation script scores.

Both compare normalized answers (lower case, no ASCII punctuation, no a/an/the, single
spaces) and take the best match over a question's ground truths. A question without a
prediction scores 0 on both.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import string
import sys
import tempfile
from typing import Dict, List, Optional

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation, then articles, then collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1(prediction: str, ground_truth: str) -> float:
    """Harmonic mean of token precision and recall; 0 when nothing is shared (even both empty)."""
    predicted = normalize_answer(prediction).split()
    truth = normalize_answer(ground_truth).split()
    shared = sum((collections.Counter(predicted) & collections.Counter(truth)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(truth)
    return 2 * precision * recall / (precision + recall)


def evaluate(dataset: dict, predictions: Dict[str, str]) -> dict:
    """EM and F1 (x100) of `predictions` (question id -> answer) on a SQuAD v1.1 dataset dict."""
    total = missing = 0
    em_sum = f1_sum = 0.0
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    missing += 1
                    continue
                truths = [answer["text"] for answer in qa["answers"]]
                prediction = predictions[qa["id"]]
                em_sum += max(exact_match(prediction, t) for t in truths)
                f1_sum += max(f1(prediction, t) for t in truths)
    if total == 0:
        raise ValueError("the dataset has no questions")
    return {
        "exact_match": 100.0 * em_sum / total,
        "f1": 100.0 * f1_sum / total,
        "total": total,
        "missing": missing,
    }


class _BadFile(Exception):
    pass


def _load(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise _BadFile(f"cannot read the {what} file {path}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _BadFile(f"the {what} file {path} is not valid UTF-8 JSON: {e}") from None


def _predict_through(server: str, rest: bool, dataset: str, output: str) -> int:
    """bert-squad-predict DATASET -o OUTPUT --server SERVER (it reports its own errors). Returns 0, or the exit
    status for main: 130 when interrupted, else 2 (a file or server problem: nothing was scored)."""
    from bert_squad_client import predict  # the client: gRPC/REST, no MindSpore

    status = predict.main([dataset, "-o", output, "--server", server, *(["--rest"] if rest else [])])
    if status == 0 or status == predict.EXIT_INTERRUPTED:
        return status
    print(f"bert-squad-evaluate: bert-squad-predict stopped with exit status {status}; nothing was scored",
          file=sys.stderr)
    return 2


def main(argv: Optional[List[str]] = None) -> int:
    """`bert-squad-evaluate`: score a predictions file; exit 1 under a threshold, 2 on bad files."""
    parser = argparse.ArgumentParser(
        prog="bert-squad-evaluate",
        description="Official SQuAD v1.1 exact match and F1 of a predictions file, or of the answers a running "
        "server gives to every question of the dataset (--server).",
    )
    parser.add_argument("dataset", help="SQuAD v1.1 dataset JSON, e.g. dev-v1.1.json")
    parser.add_argument("predictions", nargs="?", help='JSON object {"question id": "answer text", ...}')
    parser.add_argument("--server", metavar="ADDRESS",
                        help="ask this bert_squad server (host:port, gRPC unless --rest) every question of the "
                        "dataset through bert-squad-predict, then score its answers")
    parser.add_argument("--rest", action="store_true", help="with --server: use its REST endpoint")
    parser.add_argument("--keep-predictions", metavar="FILE",
                        help="with --server: write the predictions here (re-running resumes an interrupted run) "
                        "instead of a temporary file")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--min-f1", type=float, help="exit 1 if F1 is below this (0-100)")
    parser.add_argument("--min-em", type=float, help="exit 1 if exact match is below this (0-100)")
    args = parser.parse_args(argv)
    if bool(args.server) == bool(args.predictions):
        parser.error("give either a predictions file or --server ADDRESS (not both)")
    if (args.rest or args.keep_predictions) and not args.server:
        parser.error("--rest and --keep-predictions go with --server")

    try:
        dataset = _load(args.dataset, "dataset")
        if args.server:
            with tempfile.TemporaryDirectory(prefix="bert-squad-evaluate-") as tmp:
                path = args.keep_predictions or os.path.join(tmp, "predictions.json")
                status = _predict_through(args.server, args.rest, args.dataset, path)
                if status != 0:
                    return status
                predictions = _load(path, "predictions")
        else:
            predictions = _load(args.predictions, "predictions")
        if not isinstance(predictions, dict) or not all(isinstance(v, str) for v in predictions.values()):
            raise _BadFile(
                f"the predictions file {args.predictions} must hold one JSON object mapping "
                "question ids to answer strings"
            )
        if not isinstance(dataset, dict) or dataset.get("version") != "1.1":
            print("warning: the dataset does not say version 1.1; scoring it anyway", file=sys.stderr)
        try:
            result = evaluate(dataset, predictions)
        except (KeyError, TypeError, ValueError) as e:
            raise _BadFile(
                f"the dataset file {args.dataset} is not a SQuAD v1.1 dataset "
                f"(data/paragraphs/qas/id/answers/text): {type(e).__name__} {e}"
            ) from None
    except _BadFile as e:
        print(f"bert-squad-evaluate: {e}", file=sys.stderr)
        return 2

    if result["missing"]:
        print(f"{result['missing']} questions have no prediction and score 0", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"exact_match {result['exact_match']:.2f}  f1 {result['f1']:.2f}  "
            f"({result['total']} questions, {result['missing']} without prediction)"
        )
    failed = [
        f"{name} {result[key]:.2f} is below {flag} {limit:g}"
        for name, key, flag, limit in (
            ("F1", "f1", "--min-f1", args.min_f1),
            ("exact match", "exact_match", "--min-em", args.min_em),
        )
        if limit is not None and result[key] < limit
    ]
    for message in failed:
        print(f"FAIL: {message}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
