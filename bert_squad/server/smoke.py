"""The smoke test a version passes before it takes traffic (--smoke-file, --smoke-min-f1): a few SQuAD v1.1 questions
asked through the version's own master, their answers scored against the gold answers (bert_squad.text.metric, the
official scoring), the version refused when the F1 falls short. It catches what a warm-up question cannot: a model
that answers, but wrongly (the wrong checkpoint exported, a broken quantization).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import List

from bert_squad.text import metric
from bert_squad_client import protocol, results
from bert_squad_client.errors import BertSquadError, RequestError
from bert_squad_client.predict import InputError, Question, read_questions

MAX_QUESTIONS = 200  # a smoke test, not an evaluation: it runs before every switch
BATCH = 16  # questions per request to the master


class SmokeError(Exception):
    """The smoke file cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Smoke:
    path: Path
    dataset: dict  # the SQuAD v1.1 document: metric.evaluate reads the gold answers from it
    questions: List[Question]
    min_f1: float  # 0-100, as metric.evaluate scores


def read(path: Path, min_f1: float) -> Smoke:
    """The smoke file's questions and gold answers, checked at start so that a bad file stops the serve command."""
    import json

    try:
        questions = read_questions(path)
        dataset = json.loads(path.read_text(encoding="utf-8"))
    except InputError as e:
        raise SmokeError(f"--smoke-file: {e}") from None
    if not isinstance(dataset, dict) or "data" not in dataset:
        raise SmokeError(f"--smoke-file {path} must be a SQuAD v1.1 file (its gold answers score the answers), not "
                         f"JSON Lines")
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                if not qa.get("answers"):
                    raise SmokeError(f"--smoke-file {path}: question {qa['id']!r} has no gold answers")
    if len(questions) > MAX_QUESTIONS:
        raise SmokeError(f"--smoke-file {path} holds {len(questions)} questions; a smoke test runs before every "
                         f"switch, so keep it to at most {MAX_QUESTIONS} (a few dozen catch a wrong model)")
    if not 0 <= min_f1 <= 100:
        raise SmokeError(f"--smoke-min-f1 must be between 0 and 100 (SQuAD F1 points), got {min_f1:g}")
    return Smoke(path, dataset, questions, min_f1)


async def run(smoke: Smoke, call, servable: str, version: int, timeout_s: float) -> str:
    """Ask the smoke questions through `call` (the version's Predict, upstream.py) and score them; a line saying how
    it went. Raises SmokeError (the refusal's reason) when the F1 is below the minimum or the version failed."""
    t0 = time.perf_counter()
    predictions = {}
    for start in range(0, len(smoke.questions), BATCH):
        batch = smoke.questions[start:start + BATCH]
        request = protocol.make_request(servable, "predict", version,
                                        [{"question": q.question, "context": q.context} for q in batch])
        try:
            reply = await call(request, timeout=timeout_s)
            outcomes = protocol.read_reply(reply, len(batch), "predict")
        except BertSquadError as e:
            raise SmokeError(f"the smoke questions of {smoke.path} failed: {e}") from None
        except Exception as e:  # grpc.aio.AioRpcError and the like: the version did not answer
            raise SmokeError(f"the smoke questions of {smoke.path} got no answer: {type(e).__name__}: {e}") from None
        for question, outcome in zip(batch, outcomes):
            if not isinstance(outcome, RequestError):  # a refused question scores 0
                predictions[question.id] = results.to_result(outcome, question.context, "predict").text
    scores = metric.evaluate(smoke.dataset, predictions)
    said = (f"F1 {scores['f1']:.1f} / EM {scores['exact_match']:.1f} on the {scores['total']} questions of "
            f"{smoke.path} ({time.perf_counter() - t0:.1f} s)")
    if scores["f1"] < smoke.min_f1:
        raise SmokeError(f"{said}: below --smoke-min-f1 {smoke.min_f1:g}")
    return said
