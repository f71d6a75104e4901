"""From per-token start/end scores to ranked answers cut from the context.

Both scoring styles rank a span by start score + end score: log-softmax outputs
(zoo checkpoint) add log-probabilities, raw logits (Hugging Face) add logits. As in
the reference SQuAD code, the merged n-best sums go through a softmax to give each
answer a probability.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import List, Sequence, Union

import numpy as np

from bert_squad import settings
from bert_squad.errors import InputError
from bert_squad.text.windows import Features

Scores = Union[np.ndarray, Sequence[np.ndarray]]


@dataclass(frozen=True)
class Answer:
    """An answer: text == context[start:end] (Python str offsets) and a probability."""

    text: str
    start: int
    end: int
    score: float


# Returned alone when no span passes the rules: nothing to cut, nothing to trust.
NO_ANSWER = Answer(text="", start=0, end=0, score=0.0)


def _whole(value, name: str, low: int, high: int) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise InputError(f"{name} must be a whole number, got {value!r}") from None
    if not low <= value <= high:
        raise InputError(f"{name} is {value}; use a value from {low} to {high}")
    return value


def decode(
    start_scores: Scores,
    end_scores: Scores,
    features: Features,
    context: str,
    top_k: int = settings.DEFAULT_TOP_K,
    max_answer_length: int = settings.MAX_ANSWER_LENGTH,
    n_best: int = settings.N_BEST,
) -> List[Answer]:
    """The best `top_k` distinct answers, best first; [NO_ANSWER] if no span is valid.

    Scores are [windows, seq] per-token outputs; each row may be padded or cut to a
    bucket length, as long as it covers the window's real tokens (features.lengths).
    Fewer than `top_k` answers come back when fewer distinct valid spans exist.
    """
    top_k = _whole(top_k, "top_k", 1, settings.MAX_TOP_K)
    max_answer_length = _whole(max_answer_length, "max_answer_length", 1, settings.MAX_SEQ_LENGTH)
    n_windows = len(features.lengths)
    if len(start_scores) != n_windows or len(end_scores) != n_windows:
        raise ValueError(
            f"got scores for {len(start_scores)} / {len(end_scores)} windows, features have {n_windows}"
        )

    totals, starts, ends = [], [], []
    for w in range(n_windows):
        length = int(features.lengths[w])
        start = np.asarray(start_scores[w], np.float64).reshape(-1)[:length]
        end = np.asarray(end_scores[w], np.float64).reshape(-1)[:length]
        if len(start) < length or len(end) < length:
            got = min(len(start), len(end))
            raise ValueError(f"window {w} has {length} tokens but scores for only {got}")
        if np.isnan(start).any() or np.isnan(end).any():
            raise ValueError(f"the model returned NaN scores for window {w}")
        # Top n_best positions of the window (padding excluded, so buckets do not matter),
        # then keep starts the window owns and ends inside the context.
        i = np.argsort(-start, kind="stable")[:n_best]
        j = np.argsort(-end, kind="stable")[:n_best]
        i = i[features.max_context[w, i]]
        j = j[features.char_offsets[w, j, 0] >= 0]
        i, j = np.meshgrid(i, j, indexing="ij")
        ok = (j >= i) & (j - i < max_answer_length)
        i, j = i[ok], j[ok]
        total = start[i] + end[j]
        keep = np.isfinite(total)  # a -inf score rules a position out
        totals.append(total[keep])
        starts.append(features.char_offsets[w, i[keep], 0])
        ends.append(features.char_offsets[w, j[keep], 1])

    totals, starts, ends = (np.concatenate(a) for a in (totals, starts, ends))
    best, seen = [], set()
    for c in np.argsort(-totals, kind="stable"):
        span = (int(starts[c]), int(ends[c]))
        if span not in seen:  # the same span seen from two windows counts once, at its best
            seen.add(span)
            best.append((float(totals[c]),) + span)
            if len(best) == n_best:
                break
    if not best:
        return [NO_ANSWER]
    sums = np.array([b[0] for b in best])
    probs = np.exp(sums - sums.max())
    probs /= probs.sum()
    return [
        Answer(text=context[s:e], start=s, end=e, score=float(p))
        for (_, s, e), p in zip(best[:top_k], probs[:top_k])
    ]
