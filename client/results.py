"""What the client returns, and the mapping between those types and the servable's methods, shared by the gRPC
and REST clients."""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from .errors import InvalidResponse, RequestError
from .protocol import Value

# Server defaults, mirrored from bert_squad.settings (SERVABLE_NAME, DEFAULT_GRPC_ADDRESS, DEFAULT_REST_ADDRESS,
# MAX_ANSWER_LENGTH), which this package cannot import: it installs without the server. A test checks they agree.
SERVABLE = "bert_squad"
DEFAULT_GRPC_ADDRESS = "127.0.0.1:5500"
DEFAULT_REST_ADDRESS = "127.0.0.1:1500"
API_KEY_ENV = "BERT_SQUAD_API_KEY"  # the clients' API key when none is given (server: --api-key-file)
PREDICT_MAX_ANSWER_LENGTH = 30  # the answer-length limit (tokens) the server's `predict` method applies

ANSWER_OUTPUTS = ("answer", "score", "start", "end", "top_starts", "top_ends", "top_scores")
LOGITS_OUTPUTS = ("start_logits", "end_logits")


@dataclass(frozen=True)
class Answer:
    """One answer span: text == context[start:end] (Python str offsets, end exclusive); score is a probability."""

    text: str
    score: float
    start: int
    end: int


@dataclass(frozen=True)
class Result(Answer):
    """The best answer (its fields are inherited from Answer) and the ranked top-k answers, best first;
    `model_version` is the model version that answered (the server's x-model-version), None when the server did
    not say (a server older than that header)."""

    top_k: tuple[Answer, ...] = ()
    model_version: int | None = None


@dataclass(frozen=True)
class Logits:
    """Start and end logits of one window ([seq]) or of a batch of windows ([n, seq]), and the model version that
    computed them (as Result.model_version)."""

    start_logits: np.ndarray
    end_logits: np.ndarray
    model_version: int | None = None


def answer_request(question: str, context: str, top_k: int, max_answer_length: int | None) -> tuple[str, dict]:
    """The servable method and inputs for one question: `predict` for the server defaults, else
    `predict_with_options` (Serving has no optional inputs, so it needs both values)."""
    if not isinstance(question, str) or not isinstance(context, str):
        raise TypeError(f"question and context must be str, got {type(question).__name__} "
                        f"and {type(context).__name__}")
    top_k = _positive_int("top_k", top_k)
    if top_k == 1 and max_answer_length is None:
        return "predict", {"question": question, "context": context}
    length = PREDICT_MAX_ANSWER_LENGTH if max_answer_length is None else _positive_int(
        "max_answer_length", max_answer_length)
    return "predict_with_options", {"question": question, "context": context, "top_k": np.int32(top_k),
                                    "max_answer_length": np.int32(length)}


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if not 1 <= value <= np.iinfo(np.int32).max:
        raise ValueError(f"{name} must be a positive int32, got {value}")
    return value


def _outputs(outputs: dict[str, Value], names: tuple[str, ...], method: str) -> list:
    missing = [name for name in names if name not in outputs]
    if missing:
        raise InvalidResponse(f"method {method!r} replied without outputs {missing} (got {sorted(outputs)}): "
                              f"is the server running the bert_squad servable?")
    return [outputs[name] for name in names]


def to_result(outputs: dict[str, Value], context: str, method: str, model_version: int | None = None) -> Result:
    """Result of one question; top-k texts are cut from the context (Serving cannot return string arrays);
    `model_version`: the version the reply named."""
    text, score, start, end, top_starts, top_ends, top_scores = _outputs(outputs, ANSWER_OUTPUTS, method)
    try:
        best = _span(context, int(np.asarray(start)), int(np.asarray(end)), float(np.asarray(score)))
        if not np.size(top_starts) == np.size(top_ends) == np.size(top_scores):
            raise ValueError("top_starts, top_ends and top_scores differ in length")
        top = tuple(_span(context, int(s), int(e), float(p))
                    for s, e, p in zip(np.ravel(top_starts), np.ravel(top_ends), np.ravel(top_scores)))
    except (TypeError, ValueError) as error:
        raise InvalidResponse(f"method {method!r} replied with malformed outputs: {error}") from None
    if not isinstance(text, str) or text != best.text:
        raise InvalidResponse(f"answer {text!r} is not context[{best.start}:{best.end}] = {best.text!r}: "
                              f"client and server disagree on character offsets")
    return Result(best.text, best.score, best.start, best.end, top, model_version)


def _span(context: str, start: int, end: int, score: float) -> Answer:
    if not 0 <= start <= end <= len(context):
        raise ValueError(f"span [{start}, {end}) outside the context ({len(context)} characters)")
    return Answer(context[start:end], score, start, end)


def logits_request(input_ids, input_mask, token_type_id) -> tuple[list[dict[str, np.ndarray]], bool]:
    """One instance per window, from arrays of shape [seq] (one window: True) or [n, seq] (n windows: False)."""
    arrays = [np.asarray(a) for a in (input_ids, input_mask, token_type_id)]
    if not arrays[0].shape == arrays[1].shape == arrays[2].shape or arrays[0].ndim not in (1, 2):
        raise ValueError(f"input_ids, input_mask and token_type_id must have one shape, [seq] or [n, seq]; "
                         f"got {[a.shape for a in arrays]}")
    if arrays[0].size == 0:
        raise ValueError("no tokens to send")
    if any(not np.issubdtype(a.dtype, np.integer) for a in arrays):
        raise TypeError(f"token arrays must hold integers, got {[str(a.dtype) for a in arrays]}")
    rows = [np.atleast_2d(a).astype(np.int32) for a in arrays]
    instances = [{"input_ids": ids, "input_mask": mask, "token_type_id": types} for ids, mask, types in zip(*rows)]
    return instances, arrays[0].ndim == 1


def to_logits(outcomes: list, single: bool, model_version: int | None = None) -> Logits:
    """Logits of every window; the first refused window raises its RequestError (numbered by row);
    `model_version`: the version the reply named."""
    for outcome in outcomes:
        if isinstance(outcome, RequestError):
            raise outcome
    rows = [_outputs(o, LOGITS_OUTPUTS, "predict_features") for o in outcomes]
    try:
        start = np.stack([np.asarray(r[0], dtype=np.float32) for r in rows])
        end = np.stack([np.asarray(r[1], dtype=np.float32) for r in rows])
    except ValueError as error:
        raise InvalidResponse(f"predict_features replied with malformed logits: {error}") from None
    return Logits(start[0], end[0], model_version) if single else Logits(start, end, model_version)
