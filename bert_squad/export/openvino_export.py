"""The openvino runtime's part of bert-squad-export: the IR built from the checkpoint's weights, int8
calibration on real SQuAD windows, and the check against the MindSpore network.

fp32 must compute what the network computes (checked like the Lite export, at several exact lengths);
bf16 and int8 are expected to differ a little, so their check measures how often the best start and
end positions of real windows stay those of fp32 and records it in metadata.json (`agreement`).
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Sequence, Tuple, Union

import numpy as np

from bert_squad import settings
from bert_squad.errors import InputError
from bert_squad.runtimes import openvino as ov_runtime
from bert_squad.text.tokenizer import load_tokenizer
from bert_squad.text.windows import build_features

# fp32 OpenVINO vs the MindSpore network, per unit of the largest score (at least 1): measured ~1e-6 on the
# oracle and on MiniLM (the same sums in another order); a wrong graph is off by far more.
FP32_TOLERANCE = 1e-4
# Reduced precision is refused when its scores correlate less than this with fp32's (median over the windows):
# a broken quantization, not rounding. Measured: > 0.999 for bf16 and int8 on the real QA model. The share of
# windows that keep their best start and end is recorded too, but on random weights (the benchmark's) its scores are
# flat enough for rounding to move the maximum, so it is no test of a broken model.
MIN_CORRELATION = 0.9


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two score rows; 1 when both are constant (a one-token window)."""
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 1.0
    return float(np.corrcoef(a, b)[0, 1])


class CalibrationError(ValueError):
    """The calibration file cannot give windows; the message says what to pass instead."""


@dataclass(frozen=True)
class Calibration:
    """Where int8 calibration windows come from (inputs only: the answers are never read)."""

    squad_file: Path
    windows: int = settings.CALIBRATION_WINDOWS
    seed: int = settings.CALIBRATION_SEED


Window = Tuple[np.ndarray, np.ndarray, np.ndarray]


def squad_windows(squad_file: Union[str, Path], vocab_file: Path, do_lower_case: bool, count: int,
                  seed: int) -> List[Window]:
    """`count` exact-length windows (int32 [1, length] each) of questions drawn at random (seeded) from a
    SQuAD v1.1 file, one window per question, chosen at random among its windows."""
    path = Path(squad_file)
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))["data"]
        pairs = [(qa["question"], paragraph["context"]) for article in articles
                 for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    except FileNotFoundError:
        raise CalibrationError(f"calibration file {path} does not exist; pass --calibration-data with a SQuAD v1.1 "
                               "JSON file (train or dev: only its questions and contexts are read)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CalibrationError(f"calibration file {path} is not a SQuAD v1.1 JSON file ({exc!r}); pass "
                               "--calibration-data with one") from None
    if len(pairs) < count:
        raise CalibrationError(f"calibration file {path} holds {len(pairs)} questions; {count} windows need at least "
                               f"as many (pass a larger file or a smaller --calibration-windows)")
    rng = random.Random(seed)
    tokenizer = load_tokenizer(str(vocab_file), do_lower_case)
    windows = []
    for question, context in rng.sample(pairs, count):
        try:
            features = build_features(tokenizer, question, context)
        except InputError:
            continue
        w = rng.randrange(len(features.lengths))
        n = int(features.lengths[w])
        windows.append(tuple(np.ascontiguousarray(a[w:w + 1, :n], np.int32)
                             for a in (features.input_ids, features.input_mask, features.token_type_id)))
    return windows


def export_model(weights, config, folder: Path, precision: str, network: Callable, check_windows: Sequence[Window],
                 synthetic_windows: Sequence[Window], calibration_windows: Sequence[Window],
                 threads: int, log: Callable[[str], None] = print) -> dict:
    """Write the IR of `precision` into `folder`, check it against `network` (the MindSpore network as a
    function of numpy inputs) and return the metadata fields it adds (calibration, agreement)."""
    model = ov_runtime.build_model(weights, config)
    extra: dict = {}
    if precision == "int8":
        model, seconds = ov_runtime.quantize(model, calibration_windows, log)
        extra["calibration"] = {"windows": len(calibration_windows), "seconds": round(seconds, 1)}
    path = ov_runtime.save_model(model, folder)
    compiled = ov_runtime.OpenVinoModel(path, precision, threads)
    if precision == "fp32":
        difference, largest = 0.0, 1.0
        for window in synthetic_windows:
            valid = window[1] == 1
            for actual, expected in zip(compiled.predict(*window), network(*window)):
                difference = max(difference, float(np.abs(actual - expected)[valid].max()))
                largest = max(largest, float(np.abs(expected[valid]).max()))
        if not difference <= FP32_TOLERANCE * largest:
            raise RuntimeError(f"{path.name} computes scores in OpenVINO up to {difference:.3g} away from the network "
                               f"(tolerance {FP32_TOLERANCE} x largest score {largest:.3g}); the export is broken, "
                               "please report it")
        log(f"OpenVINO fp32 at lengths {', '.join(str(w[0].shape[1]) for w in synthetic_windows)}: verified "
            f"(max difference {difference:.2g})")
        return extra
    started = time.perf_counter()
    same, differences, correlations = 0, [], []
    for window in check_windows:
        actual, expected = compiled.predict(*window), network(*window)
        valid = window[1][0] == 1
        same += all(int(a.argmax()) == int(e.argmax()) for a, e in zip(actual, expected))
        differences.append(max(float(np.abs(a - e).max()) for a, e in zip(actual, expected)))
        correlations.append(min(_correlation(a[0][valid], e[0][valid]) for a, e in zip(actual, expected)))
    share, correlation = same / len(check_windows), float(np.median(correlations))
    extra["agreement"] = {"windows": len(check_windows), "same_best_start_and_end": round(share, 4),
                          "median_score_correlation": round(correlation, 5),
                          "max_score_difference": round(max(differences), 4),
                          "median_score_difference": round(float(np.median(differences)), 4)}
    log(f"OpenVINO {precision} vs fp32 on {len(check_windows)} windows: best start and end unchanged in "
        f"{100 * share:.1f} %, score correlation {correlation:.4f}, difference median {np.median(differences):.3g}, "
        f"max {max(differences):.3g} ({time.perf_counter() - started:.1f} s)")
    if not correlation >= MIN_CORRELATION:
        raise RuntimeError(f"the {precision} model's scores correlate only {correlation:.3f} with fp32's (median over "
                           f"{len(check_windows)} windows); the export is broken, please report it")
    return extra
