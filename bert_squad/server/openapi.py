"""GET /openapi.json: the front door's API as an OpenAPI 3.1 document (every method's inputs, outputs,
limits and errors), built from the served version's settings so that its limits are the ones enforced."""
from __future__ import annotations

from bert_squad import settings

INT = {"type": "integer", "minimum": -2**31, "maximum": 2**31 - 1,
       "description": "a JSON integer is sent as int32; {\"b64\": ..., \"type\": ..., \"shape\": [...]} sends any "
                      "numeric type (its little-endian data, the size its type and shape give)"}
B64_TEXT = {"type": "object", "required": ["b64"], "additionalProperties": False, "properties": {
    "b64": {"type": "string", "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
            "contentEncoding": "base64"},
    "type": {"enum": ["bytes", "str"], "description": "bytes (the default) or str; the bytes must be UTF-8 text"},
    "shape": {"enum": [[], [1]]}}}
IDS = {"type": "array", "items": INT, "minItems": 1, "maxItems": settings.MAX_SEQ_LENGTH}
EXTRA = {"anyOf": [{"type": "string"}, {"type": "boolean"}, INT],
         "description": "inputs the method does not take are ignored"}
FLOATS = {"type": "array", "items": {"type": ["number", "null"]}}
ANSWER = {"type": "object", "properties": {
    "answer": {"type": "string"}, "score": {"type": ["number", "null"]},
    "start": {"type": "integer", "description": "character offset of the answer in the context"},
    "end": {"type": "integer", "description": "character offset just past the answer"},
    "top_starts": {"type": "array", "items": {"type": "integer"}},
    "top_ends": {"type": "array", "items": {"type": "integer"}},
    "top_scores": FLOATS}}
LOGITS = {"type": "object", "properties": {"start_logits": FLOATS, "end_logits": FLOATS}}
INSTANCE_ERROR = {"type": "object", "required": ["error_msg"], "properties": {"error_msg": {"type": "string"}}}
QUESTION = {"question": {"oneOf": [{"type": "string", "maxLength": settings.MAX_QUESTION_CHARS}, B64_TEXT]},
            "context": {"oneOf": [{"type": "string", "maxLength": settings.MAX_CONTEXT_CHARS}, B64_TEXT]}}
METHODS = {
    "predict": ("Answer questions about contexts (top answer)", QUESTION, ANSWER),
    "predict_with_options": ("Answer with top_k answers and a longest answer length", {
        **QUESTION, "top_k": {**INT, "minimum": 1, "maximum": settings.MAX_TOP_K},
        "max_answer_length": {**INT, "minimum": 1, "maximum": settings.MAX_SEQ_LENGTH}}, ANSWER),
    "predict_features": ("Start and end logits of windows the caller tokenized", {
        "input_ids": IDS, "input_mask": IDS, "token_type_id": IDS}, LOGITS),
}
ERROR = {"type": "object", "required": ["error_msg"], "properties": {"error_msg": {"type": "string"}}}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def _error(description: str, retry: bool = False) -> dict:
    response = {"description": description, "content": {"application/json": {"schema": ERROR}}}
    if retry:
        response["headers"] = RETRY_AFTER
    return response


def _operation(method: str, servable: str, max_body: int) -> dict:
    summary, inputs, outputs = METHODS[method]
    instance = {"type": "object", "required": sorted(inputs), "properties": inputs, "additionalProperties": EXTRA,
                "propertyNames": {"minLength": 1}}
    body = {"type": "object", "required": ["instances"], "properties": {
        "instances": {"type": "array", "minItems": 1, "items": instance}}}
    reply = {"oneOf": [
        {"type": "object", "required": ["instances"], "properties": {
            "instances": {"type": "array", "items": {"anyOf": [outputs, INSTANCE_ERROR]}}}},
        {**INSTANCE_ERROR, "description": "a request of one instance that failed: that instance's error, as "
                                          "MindSpore Serving's REST server writes it"}]}
    return {"post": {
        "operationId": method, "summary": summary,
        "description": f"MindSpore Serving's REST API for servable {servable!r}. Bodies up to {max_body} bytes. "
                       f"A question or window the servable cannot answer gets its own error_msg in a 200 reply.",
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "200": {"description": "one result or error_msg per instance, in order",
                    "content": {"application/json": {"schema": reply}}},
            "400": _error("malformed JSON, base64, types or shapes; the reason says which"),
            "404": _error("no such servable, version or method"),
            "413": _error(f"body larger than {max_body} bytes"),
            "429": _error("too many requests queued (--max-queued-requests)", retry=True),
            "503": _error("starting, restarting or stopping", retry=True),
            "504": _error(f"no answer within {settings.REST_TIMEOUT_S:g} s"),
        }}}


def _health(description: str) -> dict:
    schema = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
    content = {"application/json": {"schema": schema}}
    return {"get": {"summary": description, "responses": {
        "200": {"description": "yes", "content": content}, "503": {"description": "no", "content": content}}}}


def document(args, meta, version: str) -> dict:
    """The OpenAPI 3.1 document of a server started with `args`, serving a version with metadata `meta`;
    `version` is the package's."""
    max_body = args.max_message_mb << 20
    paths = {}
    for method in METHODS:
        paths[f"/model/{args.name}:{method}"] = _operation(method, args.name, max_body)
    paths["/livez"] = _health("whether the server process and Serving's master run")
    paths["/readyz"] = _health("whether the model answers a question now")
    paths["/metrics"] = {"get": {"summary": "Prometheus metrics", "responses": {"200": {
        "description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
    if args.page == "on":
        paths.update(page_paths(args.name))
    return {"openapi": "3.1.0",
            "info": {"title": "bert_squad", "version": version,
                     "description": f"Extractive question answering ({meta.runtime}, {meta.precision}); the REST "
                                    f"API of MindSpore Serving, plus health and metrics."},
            "paths": paths}


def page_paths(servable: str) -> dict:
    """The try-it page and the two documents it reads besides the REST API (page.py)."""
    example = {"type": "object", "required": ["title", "context", "question"], "properties": {
        "title": {"type": "string"}, "context": {"type": "string"}, "question": {"type": "string"}}}
    facts = {"type": "object", "required": ["servable", "version", "runtime", "precision"], "properties": {
        "servable": {"type": "string"}, "version": {"type": "integer"}, "runtime": {"type": "string"},
        "precision": {"type": "string"}, "model_sha256": {"type": "string"}}}

    def get(summary: str, media: str, schema: dict) -> dict:
        return {"get": {"summary": summary, "responses": {"200": {
            "description": summary, "content": {media: {"schema": schema}}}}}}

    return {"/": get("the try-it page (off with --page off)", "text/html", {"type": "string"}),
            "/page/examples.json": get("examples the page offers", "application/json",
                                       {"type": "array", "items": example}),
            f"/model/{servable}": get("the served model: version, runtime, precision, model sha256",
                                      "application/json", facts)}
