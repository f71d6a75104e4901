"""The model stage: pack the windows of several questions by sequence-length bucket.

A window of n real tokens runs in the smallest bucket >= n, so a short question pays
for 128 positions, not 384. Windows of all questions in one server batch that share a
bucket go to the model together, and the scores come back to their own question.
Pure numpy: the model is passed in as a callable, so this is tested without a server.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

# Score given to positions past a window's bucket; they are padding and never decoded.
PAD_SCORE = -1e9

# (bucket, input_ids, input_mask, token_type_id) -> (start, end), arrays [n, bucket].
ModelCall = Callable[[int, np.ndarray, np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray]"]


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `length` tokens."""
    for b in sorted(buckets):
        if length <= b:
            return b
    raise ValueError(f"a window of {length} tokens does not fit the largest bucket {max(buckets)}")


def run_windows(instances: Sequence[tuple], call: ModelCall, buckets: Sequence[int]) -> list:
    """Score every window of every instance, one model call per bucket.

    Each instance is (input_ids, input_mask, token_type_id, lengths) with the id arrays
    [n_windows, seq] and lengths [n_windows]; returns per instance (start, end), each
    [n_windows, seq] float32, PAD_SCORE past the bucket the window ran in.
    """
    owners: dict = {}  # bucket -> list of (instance index, window index)
    for i, (_, _, _, lengths) in enumerate(instances):
        for w, n in enumerate(np.asarray(lengths).reshape(-1)):
            owners.setdefault(bucket_for(int(n), buckets), []).append((i, w))

    results = []
    for ids, _, _, _ in instances:
        shape = np.asarray(ids).shape
        results.append((np.full(shape, PAD_SCORE, np.float32), np.full(shape, PAD_SCORE, np.float32)))

    for bucket, members in sorted(owners.items()):
        stacked = [np.stack([_fit(np.asarray(instances[i][k])[w], bucket) for i, w in members]) for k in range(3)]
        start, end = call(bucket, *stacked)
        for row, (i, w) in enumerate(members):
            seq = results[i][0].shape[1]
            results[i][0][w, :bucket] = start[row][:seq]
            results[i][1][w, :bucket] = end[row][:seq]
    return results


def _fit(row: np.ndarray, bucket: int) -> np.ndarray:
    """A window row cut or zero-padded (padding is masked out) to the bucket width, as int32."""
    out = np.zeros(bucket, np.int32)
    out[: min(bucket, len(row))] = row[:bucket]
    return out


def zero_pad(a: np.ndarray, rows: int, width: int) -> np.ndarray:
    """int32 [rows, width], C-contiguous, with `a` ([<= rows, <= width]) in its top-left corner and zeros elsewhere:
    the padding the runtimes add to a call (np.pad took ~41 us a call here, this 1-3 us)."""
    if a.shape == (rows, width) and a.dtype == np.int32 and a.flags.c_contiguous:
        return a
    out = np.zeros((rows, width), np.int32)
    out[: a.shape[0], : a.shape[1]] = a
    return out
