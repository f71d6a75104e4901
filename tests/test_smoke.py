"""The smoke test a version passes before it takes traffic (bert_squad/server/smoke.py): the file's checks, and the
scoring of a version's answers against the gold answers, with the official SQuAD metric."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from bert_squad.server import smoke
from bert_squad_client import protocol

pytestmark = pytest.mark.pure

CONTEXT = "The trip went from rome to italy and then paris in france ."


def squad(qas) -> dict:
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}


def question(qid: str, *golds: str) -> dict:
    return {"id": qid, "question": "Where?", "answers": [{"text": g, "answer_start": CONTEXT.index(g)} for g in golds]}


@pytest.mark.parametrize("document, words", [
    ({"data": []}, "holds no questions"),
    (squad([{"id": "a", "question": "Where?", "answers": []}]), "question 'a' has no gold answers"),
    (squad([question(str(i), "paris") for i in range(smoke.MAX_QUESTIONS + 1)]), "keep it to at most"),
])
def test_an_unusable_smoke_file_is_refused_with_the_reason(tmp_path, document, words):
    path = tmp_path / "smoke.json"
    path.write_text(json.dumps(document))
    with pytest.raises(smoke.SmokeError, match=words):
        smoke.read(path, 50)


def test_json_lines_and_a_minimum_outside_0_to_100_are_refused(tmp_path):
    lines = tmp_path / "smoke.jsonl"
    lines.write_text(json.dumps({"id": "a", "question": "Where?", "context": CONTEXT}) + "\n")
    with pytest.raises(smoke.SmokeError, match="must be a SQuAD v1.1 file"):
        smoke.read(lines, 50)
    good = tmp_path / "smoke.json"
    good.write_text(json.dumps(squad([question("a", "paris in france")])))
    with pytest.raises(smoke.SmokeError, match="between 0 and 100"):
        smoke.read(good, 101)


def answering(spans):
    """A stand-in for a version's Predict: answers the i-th question with spans[i] (cut from CONTEXT), or refuses it
    when the span is None."""

    async def call(request, timeout):
        reply = protocol.PredictReply()
        for instance in request.instances:
            span = spans.pop(0)
            if span is None:
                error = reply.error_msg.add()
                error.error_code, error.error_msg = 2, b"refused"
                reply.instances.add()
                continue
            start = CONTEXT.index(span)
            outputs = {"answer": span, "score": 0.9, "start": start, "end": start + len(span), "top_starts": [start],
                       "top_ends": [start + len(span)], "top_scores": [0.9]}
            item = reply.instances.add()
            for name, value in outputs.items():
                kind = "float32" if "score" in name else "int32"
                protocol.fill_tensor(item.items[name], value if name == "answer" else np.asarray(value, dtype=kind))
            reply.error_msg.add()  # one entry per instance: error code 0
        return reply

    return call


def test_the_answers_are_scored_with_squad_f1_against_the_minimum(tmp_path):
    path = tmp_path / "smoke.json"
    path.write_text(json.dumps(squad([question("a", "paris in france", "rome to italy"), question("b", "paris")])))
    test = smoke.read(path, 60)
    said = asyncio.run(smoke.run(test, answering(["rome to italy", "paris in france"]), "bert_squad", 1, 5))
    assert said.startswith("F1 75.0 / EM 50.0 on the 2 questions")  # 100 and 2*0.33*1/(1.33) = 50
    with pytest.raises(smoke.SmokeError, match=r"F1 50\.0 / EM 50\.0 .* below --smoke-min-f1 60"):
        asyncio.run(smoke.run(test, answering(["paris in france", None]), "bert_squad", 1, 5))
