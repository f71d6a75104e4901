"""SQuAD training examples as windows with answer labels, built like the served windows (bert_squad/text/windows.py).

Every window of a question is one example; its labels are the token positions of the first gold answer, or
[CLS] (position 0) for both when the window does not hold the whole answer, as the reference SQuAD code does.
No MindSpore here: the data can be checked, and counted, without it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from bert_squad import settings
from bert_squad.text.tokenizer import BertTokenizer
from bert_squad.text.windows import build_features


class TrainDataError(ValueError):
    """A training file that cannot be used; the message names the file, the place and the fix."""


@dataclass(frozen=True)
class TrainQuestion:
    id: str
    question: str
    context: str
    answer_text: str
    answer_start: int  # character offset into context


@dataclass
class TrainWindows:
    """int32 arrays, one row per window: the model inputs and the start / end labels."""

    input_ids: np.ndarray
    input_mask: np.ndarray
    token_type_id: np.ndarray
    start: np.ndarray
    end: np.ndarray

    def __len__(self) -> int:
        return len(self.start)


def read_train_file(path: Path, titles: Optional[Sequence[str]] = None) -> List[TrainQuestion]:
    """Questions with their first gold answer, from a SQuAD v1.1 JSON file (only the articles named in `titles`,
    when given) or JSON Lines of {id, question, context, answers: [{text, answer_start}]}."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainDataError(f"cannot read the training file {path}: {exc}") from None
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict) and "data" in document:
        records = []
        wanted = set(titles) if titles is not None else None
        for article in document["data"]:
            if wanted is not None and article.get("title") not in wanted:
                continue
            for paragraph in article["paragraphs"]:
                records.extend({**qa, "context": paragraph["context"]} for qa in paragraph["qas"])
        if wanted is not None:
            found = {a.get("title") for a in document["data"]} & wanted
            if found != wanted:
                raise TrainDataError(f"{path} lacks the articles {sorted(wanted - found)[:5]} named by --titles")
    else:
        if titles is not None:
            raise TrainDataError(f"--titles selects articles of a SQuAD JSON file; {path} is JSON Lines")
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as exc:
                    raise TrainDataError(f"{path}:{number} is not a JSON object: {exc}") from None
    questions = []
    for number, record in enumerate(records, 1):
        where = f"{path}: question {number} ({record.get('id', 'no id') if isinstance(record, dict) else '?'})"
        try:
            answer = record["answers"][0]
            questions.append(TrainQuestion(str(record["id"]), record["question"], record["context"],
                                           answer["text"], int(answer["answer_start"])))
        except (KeyError, IndexError, TypeError, ValueError):
            raise TrainDataError(f"{where}: needs id, question, context and answers [{{text, answer_start}}] "
                                 "with at least one answer (SQuAD v1.1 training data)") from None
        q = questions[-1]
        if q.context[q.answer_start:q.answer_start + len(q.answer_text)] != q.answer_text:
            raise TrainDataError(f"{where}: the answer {q.answer_text!r} is not at character {q.answer_start} "
                                 "of its context")
    if not questions:
        raise TrainDataError(f"{path} holds no training questions")
    return questions


def build_train_windows(tokenizer: BertTokenizer, questions: Sequence[TrainQuestion],
                        max_seq_length: int = settings.MAX_SEQ_LENGTH, doc_stride: int = settings.DOC_STRIDE,
                        max_query_length: int = settings.MAX_QUERY_LENGTH) -> TrainWindows:
    """Windows of every question (build_features, so training sees what serving sees) with their labels."""
    parts = {name: [] for name in ("input_ids", "input_mask", "token_type_id", "start", "end")}
    for q in questions:
        f = build_features(tokenizer, q.question, q.context, max_seq_length, doc_stride, max_query_length)
        first, last = q.answer_start, q.answer_start + len(q.answer_text)
        for w in range(len(f.lengths)):
            starts, ends = f.char_offsets[w, :, 0], f.char_offsets[w, :, 1]
            inside = starts >= 0
            # The answer's tokens: context tokens that overlap [first, last).
            covered = np.flatnonzero(inside & (ends > first) & (starts < last))
            whole = covered.size and starts[covered[0]] <= first and ends[covered[-1]] >= last
            start, end = (int(covered[0]), int(covered[-1])) if whole else (0, 0)
            parts["start"].append(start)
            parts["end"].append(end)
        parts["input_ids"].append(f.input_ids)
        parts["input_mask"].append(f.input_mask)
        parts["token_type_id"].append(f.token_type_id)
    return TrainWindows(
        input_ids=np.concatenate(parts["input_ids"]).astype(np.int32),
        input_mask=np.concatenate(parts["input_mask"]).astype(np.int32),
        token_type_id=np.concatenate(parts["token_type_id"]).astype(np.int32),
        start=np.array(parts["start"], np.int32),
        end=np.array(parts["end"], np.int32),
    )
