"""The benchmark's questions: a deterministic sample of the SQuAD v1.1 dev set.

Real questions and contexts give real sequence lengths (and the occasional context
that needs several windows); a seeded shuffle keeps every run on the same questions.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Union

SQUAD_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad-v1.1-dev.json"


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    context: str
    answers: tuple  # ground-truth answer texts

    def to_json(self) -> dict:
        return {**asdict(self), "answers": list(self.answers)}


def load_dataset(path: Union[str, Path] = SQUAD_DEV) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SQuAD v1.1 dev set not found at {path}; pass --squad with its path")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def all_questions(dataset: dict) -> List[Question]:
    return [Question(qa["id"], qa["question"], paragraph["context"], tuple(a["text"] for a in qa["answers"]))
            for article in dataset["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]


def sample(dataset: dict, n: int, seed: int = 0) -> List[Question]:
    """`n` questions drawn without replacement by a seeded shuffle (same seed, same questions)."""
    questions = all_questions(dataset)
    if not 1 <= n <= len(questions):
        raise ValueError(f"asked for {n} questions; the dataset has {len(questions)}, pick 1 to {len(questions)}")
    random.Random(seed).shuffle(questions)
    return questions[:n]


def subset(dataset: dict, ids: Sequence[str]) -> dict:
    """The dataset cut down to the questions `ids`, for EM/F1 over just those."""
    keep = set(ids)
    articles = []
    for article in dataset["data"]:
        paragraphs = [{**p, "qas": [qa for qa in p["qas"] if qa["id"] in keep]} for p in article["paragraphs"]]
        paragraphs = [p for p in paragraphs if p["qas"]]
        if paragraphs:
            articles.append({**article, "paragraphs": paragraphs})
    return {"version": dataset.get("version", "1.1"), "data": articles}


def by_id(questions: Sequence[Question]) -> Dict[str, Question]:
    return {q.id: q for q in questions}
