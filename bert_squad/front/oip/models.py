"""The two models the Open Inference Protocol sees, one home for their tensors (names, datatypes, shapes), and
the mapping between decoded tensors and the servable's instances, shared by the REST and gRPC codecs.

`bert_squad` answers N questions: `question` and `context` BYTES [N] (or [N, 1]); the options `top_k` and
`max_answer_length` are optional INT32 inputs of shape [1] (every question) or [N]. Inputs rather than request
parameters because inputs are typed and listed in the model metadata, so a client (or a load generator that
only reads metadata) discovers them, and they can differ per question. `bert_squad_features` scores windows the
caller tokenized, as the servable's `predict_features` does.

A question the servable refuses (empty, too long) does not fail the others: the response carries the `error`
output, BYTES [N], "" for each question answered and the reason for each refused one, whose other outputs hold
"" / 0 / -1. Only when every question fails is the whole request refused (400, the reasons in the message).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Mapping, Optional, Sequence

import numpy as np

from bert_squad import settings
from bert_squad_client.errors import InvalidResponse
from bert_squad_client.results import LOGITS_OUTPUTS, logits_request, to_result

PLATFORM = "mindspore_serving"  # "<project>_<format>" as the protocol's platform names are written
FEATURES_SUFFIX = "_features"
ERROR_OUTPUT = "error"
TOP_ANSWERS = "top_answers"  # the top-k answer texts (the servable returns offsets only; cut from the context)
# The servable's methods (servable/bert_squad/servable_config.py).
PREDICT, PREDICT_WITH_OPTIONS, PREDICT_FEATURES = "predict", "predict_with_options", "predict_features"
NUMPY = {"BYTES": np.object_, "INT32": np.dtype("<i4"), "FP32": np.dtype("<f4")}


class OipError(Exception):
    """A whole request refused or failed: HTTP `status`, a message saying what was wrong and what to send instead,
    and Retry-After seconds when retrying helps. The gRPC codec maps the status to a gRPC status code."""

    def __init__(self, status: int, message: str, retry_after: Optional[int] = None):
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


@dataclass(frozen=True)
class Tensor:
    """One input or output: `shape` as the metadata shows it (-1: variable); `shapes` the forms an input takes,
    written for messages (N: the batch; 1: that dimension is 1)."""

    name: str
    datatype: str
    shape: tuple
    shapes: tuple = ()
    optional: bool = False

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def check(self, datatype: str, shape: Sequence[int]) -> None:
        """400 unless `datatype` and the form of `shape` are this input's."""
        forms = " or ".join(f"[{', '.join(form)}]" for form in self.shapes)
        if datatype != self.datatype:
            raise OipError(400, f"input {self.name!r} has datatype {datatype!r}; send {self.datatype} "
                                f"({_WHAT[self.datatype]}) of shape {forms}")
        if not any(len(form) == len(shape) and all(f != "1" or d == 1 for f, d in zip(form, shape))
                   for form in self.shapes):
            raise OipError(400, f"input {self.name!r} has shape {list(shape)}; send shape {forms}")


_WHAT = {"BYTES": "UTF-8 text", "INT32": "32-bit integers", "FP32": "32-bit floats"}
_BATCH = (("N",), ("N", "1"))
_OPTION = (("1",), ("N",), ("N", "1"))
_WINDOWS = (("N", "seq"),)


@dataclass(frozen=True)
class Model:
    name: str
    method: str  # the servable method of a request without options
    inputs: tuple
    outputs: tuple

    def input(self, name: str) -> Tensor:
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        raise OipError(400, f"model {self.name!r} has no input {name!r}; its inputs are "
                            f"{', '.join(t.name for t in self.inputs)}")

    def output_names(self, requested: Optional[Sequence[str]]) -> list:
        """The outputs to send: those requested (each checked), else all."""
        names = [t.name for t in self.outputs]
        if requested is None:
            return names
        for name in requested:
            if name not in names:
                raise OipError(400, f"model {self.name!r} has no output {name!r}; ask for any of {', '.join(names)}")
        if len(set(requested)) != len(requested):
            raise OipError(400, f"outputs {list(requested)} name an output twice; ask for each once")
        return list(requested)

    def output_type(self, name: str) -> str:
        return next(t.datatype for t in self.outputs if t.name == name)

    def metadata(self, version: str) -> dict:
        return {"name": self.name, "versions": [version], "platform": PLATFORM,
                "inputs": [t.metadata() for t in self.inputs], "outputs": [t.metadata() for t in self.outputs]}


def models(servable: str = settings.SERVABLE_NAME) -> dict:
    """Model name -> Model, for a servable served under `servable`."""
    answers = Model(servable, PREDICT, inputs=(
        Tensor("question", "BYTES", (-1,), _BATCH), Tensor("context", "BYTES", (-1,), _BATCH),
        Tensor("top_k", "INT32", (-1,), _OPTION, optional=True),
        Tensor("max_answer_length", "INT32", (-1,), _OPTION, optional=True)), outputs=(
        Tensor("answer", "BYTES", (-1,)), Tensor("score", "FP32", (-1,)), Tensor("start", "INT32", (-1,)),
        Tensor("end", "INT32", (-1,)), Tensor(TOP_ANSWERS, "BYTES", (-1, -1)),
        Tensor("top_starts", "INT32", (-1, -1)), Tensor("top_ends", "INT32", (-1, -1)),
        Tensor("top_scores", "FP32", (-1, -1)), Tensor(ERROR_OUTPUT, "BYTES", (-1,))))
    features = Model(servable + FEATURES_SUFFIX, PREDICT_FEATURES, inputs=tuple(
        Tensor(name, "INT32", (-1, -1), _WINDOWS) for name in ("input_ids", "input_mask", "token_type_id")),
        outputs=(*(Tensor(name, "FP32", (-1, -1)) for name in LOGITS_OUTPUTS), Tensor(ERROR_OUTPUT, "BYTES", (-1,))))
    return {answers.name: answers, features.name: features}


def find_model(table: Mapping[str, Model], name: str, version: Optional[str], served: str) -> Model:
    """The model a path or ModelInferRequest names, or 404 saying what is served."""
    model = table.get(name)
    if model is None:
        raise OipError(404, f"no model {name!r}; this server serves {', '.join(sorted(table))}")
    if version and version != served:
        raise OipError(404, f"model {name!r} has no version {version!r}; it serves version {served} "
                            f"(or leave the version out)")
    return model


@dataclass
class Request:
    """What the codecs decoded, ready for the servable: the method, one instance per question (or window), and
    the contexts the top-k answer texts are cut from."""

    model: Model
    method: str
    instances: list
    contexts: list

    def __len__(self) -> int:
        return len(self.instances)


@dataclass
class Parsed:
    """An inference request as a codec decoded it: the servable request, the request id, and the outputs to send
    with whether each goes as binary data."""

    request: Request
    id: Optional[str]
    outputs: list  # [(name, binary)]

    def sent(self, outputs: Mapping[str, np.ndarray]) -> list:
        """The outputs to send: those asked for, plus `error` whenever a question failed, so that no failure
        passes silently (binary when any other output is)."""
        sent = list(self.outputs)
        if any(outputs[ERROR_OUTPUT]) and ERROR_OUTPUT not in dict(sent):
            sent.append((ERROR_OUTPUT, any(binary for _, binary in sent)))
        return sent


def check_count(name: str, shape: Sequence[int], count: int) -> None:
    """400 unless the data holds as many elements as the shape says."""
    if count != prod(shape):
        raise OipError(400, f"input {name!r} has shape {list(shape)}, which holds {prod(shape)} elements, but its "
                            f"data has {count}; send the elements of the shape, row-major")


def to_request(model: Model, tensors: Mapping[str, np.ndarray]) -> Request:
    """The servable request of decoded input tensors (BYTES: object arrays of bytes; INT32: int32 arrays)."""
    missing = [t.name for t in model.inputs if not t.optional and t.name not in tensors]
    if missing:
        raise OipError(400, f"model {model.name!r} needs input{'s' * (len(missing) > 1)} {', '.join(missing)}; "
                            f"send {', '.join(f'{t.name} ({t.datatype})' for t in model.inputs if not t.optional)}")
    if model.method == PREDICT_FEATURES:
        return _windows(model, tensors)
    questions, contexts = (_texts(tensors[name], name) for name in ("question", "context"))
    if len(questions) != len(contexts):
        raise OipError(400, f"question has {len(questions)} elements and context {len(contexts)}; send one context "
                            f"per question (repeat a context for several questions about it)")
    if not questions:
        raise OipError(400, "question and context are empty; send at least one question (shape [N], N >= 1)")
    options = {name: _option(tensors[name], name, len(questions), high)
               for name, high in (("top_k", settings.MAX_TOP_K), ("max_answer_length", settings.MAX_SEQ_LENGTH))
               if name in tensors}
    if not options:
        instances = [{"question": q, "context": c} for q, c in zip(questions, contexts)]
        return Request(model, PREDICT, instances, contexts)
    top_k = options.get("top_k", np.full(len(questions), settings.DEFAULT_TOP_K, np.int32))
    length = options.get("max_answer_length", np.full(len(questions), settings.MAX_ANSWER_LENGTH, np.int32))
    instances = [{"question": q, "context": c, "top_k": k, "max_answer_length": n}
                 for q, c, k, n in zip(questions, contexts, top_k, length)]
    return Request(model, PREDICT_WITH_OPTIONS, instances, contexts)


def _texts(array: np.ndarray, name: str) -> list:
    texts = []
    for index, value in enumerate(array.reshape(-1)):
        try:
            texts.append(bytes(value).decode("utf-8"))
        except UnicodeDecodeError as e:
            raise OipError(400, f"element {index} of input {name!r} is not valid UTF-8 (byte {e.start}); "
                                f"send UTF-8 text") from None
    return texts


def _option(array: np.ndarray, name: str, n: int, high: int) -> np.ndarray:
    values = array.reshape(-1).astype(np.int32)
    if values.size not in (1, n):
        raise OipError(400, f"input {name!r} has {values.size} elements for {n} questions; send one value for "
                            f"every question (shape [1]) or one per question (shape [N])")
    if values.min() < 1 or values.max() > high:
        raise OipError(400, f"input {name!r} holds {values.min() if values.min() < 1 else values.max()}; "
                            f"send values from 1 to {high}")
    return np.broadcast_to(values, (n,))


def _windows(model: Model, tensors: Mapping[str, np.ndarray]) -> Request:
    arrays = [tensors[t.name] for t in model.inputs]
    if len({a.shape for a in arrays}) != 1:
        raise OipError(400, f"input_ids, input_mask and token_type_id have shapes {[list(a.shape) for a in arrays]}; "
                            f"send one shape [N, seq] for all three")
    seq = arrays[0].shape[1]
    if arrays[0].shape[0] == 0 or not 1 <= seq <= settings.MAX_SEQ_LENGTH:
        raise OipError(400, f"the token inputs have shape {list(arrays[0].shape)}; send N >= 1 windows of 1 to "
                            f"{settings.MAX_SEQ_LENGTH} tokens")
    instances, _ = logits_request(*arrays)
    return Request(model, PREDICT_FEATURES, instances, [])


def _message(outcome: BaseException) -> str:
    return getattr(outcome, "server_message", None) or str(outcome) or type(outcome).__name__


def to_outputs(request: Request, outcomes: Sequence) -> dict:
    """Output name -> array for the servable's outcomes, one per instance: a dict of its outputs (as Serving
    replies), or an exception for an instance the servable refused. Every instance refused: 400 with the
    reasons; a malformed answer: 502."""
    if len(outcomes) != len(request):
        raise OipError(502, f"the servable answered {len(outcomes)} of {len(request)} instances")
    errors = [_message(o) if isinstance(o, BaseException) else "" for o in outcomes]
    if all(errors):
        what = "question" if request.method != PREDICT_FEATURES else "window"
        reasons = errors[0] if len(errors) == 1 else "; ".join(f"{what} {i}: {e}" for i, e in enumerate(errors))
        raise OipError(400, reasons)
    try:
        arrays = (_logits(request, outcomes) if request.method == PREDICT_FEATURES
                  else _answers(request, outcomes))
    except InvalidResponse as e:
        raise OipError(502, str(e)) from None
    arrays[ERROR_OUTPUT] = np.array([e.encode("utf-8") for e in errors], dtype=np.object_)
    return arrays


def _answers(request: Request, outcomes: Sequence) -> dict:
    results = [None if isinstance(o, BaseException) else to_result(o, context, request.method)
               for o, context in zip(outcomes, request.contexts)]
    width = max(len(r.top_k) for r in results if r is not None)
    n = len(results)
    out = {"answer": np.full(n, b"", np.object_), "score": np.zeros(n, np.float32), "start": np.full(n, -1, np.int32),
           "end": np.full(n, -1, np.int32), TOP_ANSWERS: np.full((n, width), b"", np.object_),
           "top_starts": np.full((n, width), -1, np.int32), "top_ends": np.full((n, width), -1, np.int32),
           "top_scores": np.zeros((n, width), np.float32)}
    for row, result in enumerate(results):
        if result is None:
            continue
        out["answer"][row] = result.text.encode("utf-8")
        out["score"][row], out["start"][row], out["end"][row] = result.score, result.start, result.end
        for column, answer in enumerate(result.top_k):
            out[TOP_ANSWERS][row, column] = answer.text.encode("utf-8")
            out["top_starts"][row, column], out["top_ends"][row, column] = answer.start, answer.end
            out["top_scores"][row, column] = answer.score
    return out


def _logits(request: Request, outcomes: Sequence) -> dict:
    seq = request.instances[0]["input_ids"].size
    out = {name: np.zeros((len(outcomes), seq), np.float32) for name in LOGITS_OUTPUTS}
    for row, outcome in enumerate(outcomes):
        if isinstance(outcome, BaseException):
            continue
        for name in LOGITS_OUTPUTS:
            if name not in outcome:
                raise InvalidResponse(f"predict_features replied without {name!r} (got {sorted(outcome)})")
            values = np.asarray(outcome[name], dtype=np.float32).reshape(-1)
            if values.size != seq:
                raise InvalidResponse(f"predict_features replied {values.size} {name} for a window of {seq} tokens")
            out[name][row] = values
    return out


def server_metadata(version: str) -> dict:
    """GET /v2 and ServerMetadata: `version` is the package's."""
    return {"name": settings.SERVABLE_NAME, "version": version, "extensions": ["binary_tensor_data", "model_repository"]}
