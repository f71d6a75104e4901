"""Model inputs for one question and context: [CLS] question [SEP] window [SEP].

A context longer than one window is cut into overlapping windows, as the reference
SQuAD code does; a token seen in several windows belongs to the one where it has
the most context on both sides, and only there may an answer start.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bert_squad import settings
from bert_squad.errors import InputError
from bert_squad.text.tokenizer import BertTokenizer


@dataclass
class Features:
    """Numpy arrays for one question and context, one row per window.

    All arrays cross process boundaries as they are; `Features(**arrays)` rebuilds one.
    """

    input_ids: np.ndarray  # int32 [windows, max_seq_length], zero padded
    input_mask: np.ndarray  # int32 [windows, max_seq_length], 1 on real tokens
    token_type_id: np.ndarray  # int32 [windows, max_seq_length], 1 on the window and its [SEP]
    lengths: np.ndarray  # int32 [windows], real tokens; a model may run on [:, :bucket >= max]
    char_offsets: np.ndarray  # int32 [windows, max_seq_length, 2], context [start, end), -1 elsewhere
    max_context: np.ndarray  # bool [windows, max_seq_length], this window is the token's best


def _check_text(text, name: str, limit: int) -> None:
    if not isinstance(text, str):
        raise InputError(f"{name} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InputError(f"{name} is empty; send the text of the {name}")
    if len(text) > limit:
        raise InputError(f"{name} has {len(text)} characters, more than the limit of {limit}; shorten it")


def build_features(
    tokenizer: BertTokenizer,
    question: str,
    context: str,
    max_seq_length: int = settings.MAX_SEQ_LENGTH,
    doc_stride: int = settings.DOC_STRIDE,
    max_query_length: int = settings.MAX_QUERY_LENGTH,
) -> Features:
    """Tokenize, truncate the question, and cut the context into windows."""
    min_room = max_seq_length - max_query_length - 3  # context tokens beside the longest question
    if max_query_length < 1 or min_room < 1:
        raise InputError(
            f"max_seq_length ({max_seq_length}) must exceed max_query_length ({max_query_length}) + 3, "
            "and max_query_length must be at least 1"
        )
    if not 1 <= doc_stride < min_room:
        # A stride as large as the window would skip context (and crashes some stacks).
        raise InputError(
            f"doc_stride ({doc_stride}) must be at least 1 and smaller than the room left for the "
            f"context, max_seq_length - max_query_length - 3 = {min_room}; lower doc_stride"
        )
    _check_text(question, "question", settings.MAX_QUESTION_CHARS)
    _check_text(context, "context", settings.MAX_CONTEXT_CHARS)
    query = tokenizer.tokenize_question(question)[:max_query_length]
    if len(query) == 0:
        raise InputError("question has no tokens (only control or invisible characters); send words")
    doc, doc_offsets = tokenizer.tokenize_context(context)
    if len(doc) == 0:
        raise InputError("context has no tokens (only control or invisible characters); send words")

    room = max_seq_length - len(query) - 3
    starts = [0]
    while starts[-1] + room < len(doc):
        starts.append(starts[-1] + doc_stride)
    spans = [(s, min(room, len(doc) - s)) for s in starts]

    # Score of a token in a window: the context on its thinner side, ties to the longer window,
    # then to the earlier window (strict `>`).
    best_score = np.full(len(doc), -1.0)
    best_window = np.zeros(len(doc), np.int64)
    for w, (s, n) in enumerate(spans):
        pos = np.arange(n)
        score = np.minimum(pos, n - 1 - pos) + 0.01 * n
        better = score > best_score[s : s + n]
        best_score[s : s + n][better] = score[better]
        best_window[s : s + n][better] = w

    shape = (len(spans), max_seq_length)
    features = Features(
        input_ids=np.full(shape, tokenizer.pad_id, np.int32),
        input_mask=np.zeros(shape, np.int32),
        token_type_id=np.zeros(shape, np.int32),
        lengths=np.zeros(len(spans), np.int32),
        char_offsets=np.full(shape + (2,), -1, np.int32),
        max_context=np.zeros(shape, bool),
    )
    first = len(query) + 2  # position of the window's first context token
    for w, (s, n) in enumerate(spans):
        length = first + n + 1
        features.input_ids[w, :length] = np.concatenate(
            [[tokenizer.cls_id], query, [tokenizer.sep_id], doc[s : s + n], [tokenizer.sep_id]]
        )
        features.input_mask[w, :length] = 1
        features.token_type_id[w, first:length] = 1
        features.lengths[w] = length
        features.char_offsets[w, first : first + n] = doc_offsets[s : s + n]
        features.max_context[w, first : first + n] = best_window[s : s + n] == w
    return features
