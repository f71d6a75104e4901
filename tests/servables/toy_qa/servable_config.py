"""Toy stand-in for the `bert_squad` servable: same methods, input and output names and dtypes, but a rule
instead of a model, so client tests can predict every answer.

Rule: the candidates are the whitespace-separated words of the context that have at most `max_answer_length`
characters, in order; candidate i scores 0.5 ** (i + 1). `predict` uses top_k=1 and the server's default
max_answer_length (settings.MAX_ANSWER_LENGTH, counted in characters here).
`predict_features` returns start_logits = input_ids * input_mask and end_logits = token_type_id (float32).
An empty question, top_k outside [1, settings.MAX_TOP_K] or a context with no candidate raise ValueError,
which fails only that instance.

Test hooks, in the question: "sleep:SECONDS ..." answers after that delay; "crash-once:PATH ..." kills the
worker process if PATH does not exist yet (creating it), so Serving restarts the worker; "busy-times:N ..."
is refused as busy (the text Serving uses over --max-queued-requests) the first N times it is asked. A context starting with
"[bad-offsets]" gets an end offset one past its answer, which a client must refuse.
"""
import os
import re
import time

import numpy as np
from mindspore_serving.server import register

from bert_squad import settings

_asked = {}  # question -> times asked, for the busy-times hook


def _answer(question, context, top_k, max_answer_length):
    question, context = str(question), str(context)
    top_k, max_answer_length = int(top_k), int(max_answer_length)
    if not question.strip():
        raise ValueError("question is empty: send a non-empty question")
    hook, _, argument = question.split(" ", 1)[0].partition(":")
    if hook == "sleep":
        time.sleep(float(argument))
    if hook == "crash-once" and not os.path.exists(argument):
        open(argument, "w").close()
        os._exit(1)
    if hook == "busy-times":
        _asked[question] = _asked.get(question, 0) + 1
        if _asked[question] <= int(argument):
            raise RuntimeError(f"enqueued requests count exceeds the limit (toy): asked {_asked[question]} time(s), "
                               f"refused {argument}")
    if not 1 <= top_k <= settings.MAX_TOP_K:
        raise ValueError(f"top_k must be in [1, {settings.MAX_TOP_K}], got {top_k}")
    spans = [m.span() for m in re.finditer(r"\S+", context) if m.end() - m.start() <= max_answer_length]
    if not spans:
        raise ValueError("context has no word short enough to be an answer")
    spans = spans[:top_k]
    starts = np.array([s for s, _ in spans], np.int32)
    ends = np.array([e for _, e in spans], np.int32)
    scores = np.array([0.5 ** (i + 1) for i in range(len(spans))], np.float32)
    end = ends[0] + 1 if context.startswith("[bad-offsets]") else ends[0]
    return context[starts[0]:ends[0]], scores[0], starts[0], end, starts, ends, scores


def answer_default(question, context):
    return _answer(question, context, 1, settings.MAX_ANSWER_LENGTH)


def features(input_ids, input_mask, token_type_id):
    if not input_ids.shape == input_mask.shape == token_type_id.shape:
        raise ValueError("input_ids, input_mask and token_type_id must have the same shape")
    return (input_ids * input_mask).astype(np.float32), token_type_id.astype(np.float32)


@register.register_method(output_names=["answer", "score", "start", "end", "top_starts", "top_ends", "top_scores"])
def predict(question, context):
    answer, score, start, end, top_starts, top_ends, top_scores = register.add_stage(
        answer_default, question, context, outputs_count=7)
    return answer, score, start, end, top_starts, top_ends, top_scores


@register.register_method(output_names=["answer", "score", "start", "end", "top_starts", "top_ends", "top_scores"])
def predict_with_options(question, context, top_k, max_answer_length):
    answer, score, start, end, top_starts, top_ends, top_scores = register.add_stage(
        _answer, question, context, top_k, max_answer_length, outputs_count=7)
    return answer, score, start, end, top_starts, top_ends, top_scores


@register.register_method(output_names=["start_logits", "end_logits"])
def predict_features(input_ids, input_mask, token_type_id):
    start_logits, end_logits = register.add_stage(features, input_ids, input_mask, token_type_id, outputs_count=2)
    return start_logits, end_logits
