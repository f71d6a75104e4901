"""GET /openapi.json: the front door's API as an OpenAPI 3.1 document (every method's inputs, outputs,
limits and errors), built from the served version's settings so that its limits are the ones enforced."""
from __future__ import annotations

from bert_squad import settings
from bert_squad.front import keys
from bert_squad.front.oip import models as oip_models

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


def document(args, meta, served: int, version: str) -> dict:
    """The OpenAPI 3.1 document of a server started with `args`, serving version folder `served` with metadata
    `meta`; `version` is the package's."""
    max_body = args.max_message_mb << 20
    paths = {}
    for method in METHODS:
        paths[f"/model/{args.name}:{method}"] = _operation(method, args.name, max_body)
    paths["/livez"] = _health("whether the server process and Serving's master run")
    paths["/readyz"] = _health("whether the model answers a question now")
    paths["/metrics"] = {"get": {"summary": "Prometheus metrics", "responses": {"200": {
        "description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
    paths.update(oip_paths(oip_models.models(args.name), str(served), max_body))
    if args.page == "on":
        paths.update(page_paths(args.name))
    doc = {"openapi": "3.1.0",
           "info": {"title": "bert_squad", "version": version,
                    "description": f"Extractive question answering ({meta.runtime}, {meta.precision}); the REST "
                                   f"API of MindSpore Serving, the Open Inference Protocol's REST API (/v2), "
                                   f"health and metrics."},
           "paths": paths}
    if args.api_key_file:  # every operation needs a key but the probes and the pages' shells (keys.py)
        doc["components"] = {"securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}}}
        doc["security"] = [{"apiKey": []}]
        for path, operations in paths.items():
            if keys.is_open(path):
                for operation in operations.values():
                    operation["security"] = []
            else:
                for operation in operations.values():
                    operation.setdefault("responses", {})["401"] = {
                        "description": "no API key, or not one of the server's (`Authorization: Bearer KEY`)"}
    return doc


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
            "/docs": get("this document in Swagger UI (off with --page off)", "text/html", {"type": "string"}),
            "/page/examples.json": get("examples the page offers", "application/json",
                                       {"type": "array", "items": example}),
            f"/model/{servable}": get("the served model: version, runtime, precision, model sha256",
                                      "application/json", facts)}


# ---------------------------------------------------------------- the Open Inference Protocol's REST API (/v2)

OIP_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
_JSON_VALUE = {"BYTES": {"type": "string"}, "INT32": {"type": "integer", "minimum": -2**31, "maximum": 2**31 - 1},
               "FP32": {"type": ["number", "null"]}}
OUTPUT_TENSOR = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string"},
    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    "data": {"type": "array", "description": "row-major; absent when the output is sent as binary data"},
    "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}}}}
TENSOR_METADATA = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string"},
    "shape": {"type": "array", "items": {"type": "integer"}}}}


def _oip_error(description: str, retry: bool = False) -> dict:
    response = {"description": description, "content": {"application/json": {"schema": OIP_ERROR}}}
    if retry:
        response["headers"] = RETRY_AFTER
    return response


def _input_schema(tensor) -> dict:
    """One input as JSON: the shapes it takes are in the description (JSON Schema cannot tie shape to data)."""
    forms = " or ".join(f"[{', '.join(form)}]" for form in tensor.shapes)
    return {"type": "object", "required": ["name", "datatype", "shape", "data"], "properties": {
        "name": {"const": tensor.name}, "datatype": {"const": tensor.datatype},
        "shape": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "integer", "minimum": 1}},
        "data": {"type": "array", "minItems": 1, "items": _JSON_VALUE[tensor.datatype]},
        "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}}},
        "description": f"shape {forms}{' (optional input)' if tensor.optional else ''}; data row-major, "
                       f"as many elements as the shape holds"}


def _infer(model, max_body: int) -> dict:
    required = [t.name for t in model.inputs if not t.optional]
    body = {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
        "inputs": {"type": "array", "minItems": len(required), "maxItems": len(model.inputs),
                   "items": {"oneOf": [_input_schema(t) for t in model.inputs]}},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"enum": [t.name for t in model.outputs]},
            "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}}}}}}
    reply = {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"const": model.name}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "outputs": {"type": "array", "items": OUTPUT_TENSOR}}}
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {"post": {
        "operationId": f"infer_{model.name}", "summary": f"Infer with model {model.name!r}",
        "description": f"The Open Inference Protocol's inference request (docs/oip.md). Inputs "
                       f"{', '.join(t.name for t in model.inputs)} (required: {', '.join(required)}); all inputs "
                       f"of one request hold the same number N of questions or windows. The binary tensor data "
                       f"extension: a JSON header of Inference-Header-Content-Length bytes, then the tensors' raw "
                       f"bytes. Bodies up to {max_body} bytes. A question or window the model refuses gets its "
                       f"reason in the 'error' output of a 200; a request whose every question is refused is a 400.",
        "requestBody": {"required": True, "content": {"application/json": {"schema": body},
                                                      "application/octet-stream": binary}},
        "responses": {
            "200": {"description": "the outputs asked for (all by default), each [N] or [N, K]",
                    "content": {"application/json": {"schema": reply}, "application/octet-stream": binary}},
            "400": _oip_error("malformed JSON, datatype, shape, missing input, N mismatch, binary sizes that do not "
                              "add up, or every question refused; the reason says which"),
            "404": _oip_error("no such model or version"),
            "413": _oip_error(f"body larger than {max_body} bytes"),
            "429": _oip_error("too many requests queued (--max-queued-requests)", retry=True),
            "503": _oip_error("starting, restarting or stopping", retry=True),
            "504": _oip_error(f"no answer within {settings.REST_TIMEOUT_S:g} s"),
        }}}


def _oip_get(summary: str, schema: dict, when_not: str = "") -> dict:
    responses = {"200": {"description": summary, "content": {"application/json": {"schema": schema}}}}
    if when_not:
        responses["503"] = {"description": when_not, "content": {"application/json": {"schema": schema}}}
    return {"get": {"summary": summary, "responses": responses}}


def _repository_paths(name: str) -> dict:
    """The repository extension's load and unload of model `name` (docs/oip.md)."""
    load = {"post": {
        "summary": f"look for a new version of {name!r} now and switch to it (--version-policy)",
        "description": "Answered once the version the policy names serves (200), or with the reason it was refused "
                       "(400; the running version keeps serving). Takes no parameters: export a version folder "
                       "into the servable directory first.",
        "responses": {"200": {"description": "the version serving now", "content": {"application/json": {
            "schema": {"type": "object", "required": ["model_version"],
                       "properties": {"model_version": {"type": "string"}}}}}},
            "400": _oip_error("the version was refused (files, memory, load, warm_up, smoke), or a body was sent"),
            "404": _oip_error("no such model")}}}
    unload = {"post": {"summary": "refused: the server always serves one version of its model",
                       "responses": {"400": _oip_error("the server always serves one version"),
                                     "404": _oip_error("no such model")}}}
    return {f"/v2/repository/models/{name}/load": load, f"/v2/repository/models/{name}/unload": unload}


def oip_paths(table, served: str, max_body: int) -> dict:
    """The /v2 routes for the models in `table` (oip/models.py), each also under /versions/{version}."""
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}, "example": served,
               "description": "the served version folder's number; any other is a 404"}
    not_found = {"404": _oip_error("no such model or version")}
    paths = {
        "/v2": _oip_get("server metadata", {"type": "object", "required": ["name", "version", "extensions"],
                                            "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                                           "extensions": {"type": "array",
                                                                          "items": {"type": "string"}}}}),
        "/v2/health/live": _oip_get("whether the server is live (as /livez)", {
            "type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}}, "not live"),
        "/v2/health/ready": _oip_get("whether the model answers now (as /readyz)", {
            "type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"},
                                                                     "reason": {"type": "string"}}}, "not ready"),
    }
    for model in table.values():
        paths.update(_repository_paths(model.name))
    paths["/v2/repository/index"] = {"post": {
        "summary": "the repository extension's index: the models, with the version serving now",
        "responses": {"200": {"description": "the models", "content": {"application/json": {"schema": {
            "type": "array", "items": {"type": "object", "required": ["name", "version", "state"], "properties": {
                "name": {"type": "string"}, "version": {"type": "string"},
                "state": {"enum": ["READY", "UNAVAILABLE"]}}}}}}}}}}
    for model in table.values():
        metadata = _oip_get(f"metadata of model {model.name!r}", {
            "type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"], "properties": {
                "name": {"const": model.name}, "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"}, "inputs": {"type": "array", "items": TENSOR_METADATA},
                "outputs": {"type": "array", "items": TENSOR_METADATA}}})
        ready = _oip_get(f"whether model {model.name!r} answers now", {
            "type": "object", "required": ["name", "ready"], "properties": {
                "name": {"const": model.name}, "ready": {"type": "boolean"}}}, "not ready")
        for base, parameters in ((f"/v2/models/{model.name}", []),
                                 (f"/v2/models/{model.name}/versions/{{version}}", [version])):
            for suffix, operation in (("", metadata), ("/ready", ready), ("/infer", _infer(model, max_body))):
                verb, spec = next(iter(operation.items()))
                spec = {**spec, "responses": {**spec["responses"], **not_found}}
                if parameters:
                    spec = {**spec, "parameters": parameters}
                    if "operationId" in spec:
                        spec["operationId"] += "_version"
                paths[base + suffix] = {verb: spec}
    return paths
