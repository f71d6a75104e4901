"""Real SQuAD windows for bert-squad-export: int8 calibration and the check of reduced precision against fp32
(bert_squad/runtimes/openvino.py write_model_files). Only questions and contexts are read, never answers."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np

from bert_squad import settings
from bert_squad.errors import InputError
from bert_squad.text.tokenizer import load_tokenizer
from bert_squad.text.windows import build_features


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
