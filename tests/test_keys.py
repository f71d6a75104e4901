"""API keys (--api-key-file, bert_squad/front/keys.py): the key file's rules and the check in process, then a real
server: every HTTP route and every gRPC method of both gRPC services tried without a key, with a wrong one and with
a right one, a key removed by SIGHUP, the probes open, refusals counted and logged without the key, and the
clients (bert_squad_client over gRPC and REST, bert-squad-predict) sending a key."""
from __future__ import annotations

import json
import signal
import time

import pytest

KEY_A, KEY_B, KEY_C = "a" * 20 + "-first-key", "b" * 24 + "_second", "c" * 32
PAGE_ORIGIN = "https://qa.example.com"
QUESTION = {"question": "Which capital?", "context": "The city of Paris is the capital of France, they say."}


# ---------------------------------------------------------------- in process

@pytest.mark.pure
def test_the_key_file_takes_one_key_a_line_skipping_blanks_and_comments(tmp_path):
    from bert_squad.front import keys
    path = tmp_path / "keys"
    path.write_text(f"# operators\n\n  {KEY_A}  \n{KEY_B}\n")
    assert keys.read_keys(path) == [KEY_A, KEY_B]
    api_keys = keys.ApiKeys(path)
    assert api_keys.refusal(f"Bearer {KEY_A}") is None and api_keys.refusal(f"bearer   {KEY_B}") is None
    assert "not one of this server's keys" in api_keys.refusal(f"Bearer {KEY_C}")
    assert "needs an API key" in api_keys.refusal(None) and "Authorization: Bearer" in api_keys.refusal("")
    assert "must be 'Bearer <key>'" in api_keys.refusal(KEY_A)  # the key without its scheme
    assert "must be 'Bearer <key>'" in api_keys.refusal(f"Basic {KEY_A}")
    path.write_text(f"{KEY_C}\n")
    assert api_keys.reload() == 1 and api_keys.refusal(f"Bearer {KEY_A}") and not api_keys.refusal(f"Bearer {KEY_C}")


@pytest.mark.pure
@pytest.mark.parametrize("text, words", [
    ("", "holds no key"), ("# only a comment\n", "holds no key"), ("short\n", "at least 16"),
    (f"{KEY_A} and more\n", "without spaces"), ("ключ" * 5 + "\n", "ASCII"),
])
def test_an_unusable_key_file_is_refused_with_the_reason(tmp_path, text, words):
    from bert_squad.front import keys
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(keys.KeyFileError, match=words):
        keys.read_keys(path)
    with pytest.raises(keys.KeyFileError, match="cannot read"):
        keys.read_keys(tmp_path / "missing")


@pytest.mark.pure
def test_a_bad_file_on_reload_keeps_the_keys_in_use(tmp_path):
    from bert_squad.front import keys
    path = tmp_path / "keys"
    path.write_text(KEY_A)
    api_keys = keys.ApiKeys(path)
    path.write_text("")
    with pytest.raises(keys.KeyFileError):
        api_keys.reload()
    assert api_keys.refusal(f"Bearer {KEY_A}") is None


@pytest.mark.pure
def test_keys_with_any_origin_or_a_bad_file_are_refused_at_start(tmp_path, capsys):
    from bert_squad.server.options import parse_args

    path = tmp_path / "keys"
    path.write_text(KEY_A)
    with pytest.raises(SystemExit):
        parse_args(["--api-key-file", str(path), "--cors-allow-origin", "*"])
    assert "with --api-key-file name the origins" in capsys.readouterr().err
    assert parse_args(["--api-key-file", str(path), "--cors-allow-origin", "https://qa.example.com"])


# The front door's routes and how to ask each: a route added to the app without a line here fails
# test_every_route_is_covered, so that nobody adds one without deciding whether it needs a key.
ROUTES = {
    "/model/{tail:path}": [("POST", "/model/bert_squad:predict", {"instances": [QUESTION]})],
    "/livez": [("GET", "/livez", None)], "/readyz": [("GET", "/readyz", None)],
    "/v2": [("GET", "/v2", None)],
    "/v2/health/live": [("GET", "/v2/health/live", None)], "/v2/health/ready": [("GET", "/v2/health/ready", None)],
    "/v2/models/{tail:path}": [("GET", "/v2/models/bert_squad", None), ("GET", "/v2/models/bert_squad/ready", None),
                               ("POST", "/v2/models/bert_squad/infer", {"inputs": [
                                   {"name": n, "datatype": "BYTES", "shape": [1], "data": [QUESTION[n]]}
                                   for n in ("question", "context")]})],
    "/v2/repository/index": [("POST", "/v2/repository/index", None)],
    "/v2/repository/models/{model}/{action}": [("POST", "/v2/repository/models/bert_squad/load", None),
                                               ("POST", "/v2/repository/models/bert_squad/unload", None)],
    "/metrics": [("GET", "/metrics", None)], "/openapi.json": [("GET", "/openapi.json", None)],
    "/": [("GET", "/", None)], "/page/examples.json": [("GET", "/page/examples.json", None)],
    "/model/bert_squad": [("GET", "/model/bert_squad", None)],  # the page's model facts
    "/docs": [("GET", "/docs", None)], "/docs/start.js": [("GET", "/docs/start.js", None)],
    "/docs/swagger-ui.css": [("GET", "/docs/swagger-ui.css", None)],
    "/docs/swagger-ui-bundle.js": [("GET", "/docs/swagger-ui-bundle.js", None)],
    "/docs/favicon-32x32.png": [("GET", "/docs/favicon-32x32.png", None)],
}
# What answers without a key: the probes and the pages' shells (written out here, not read from keys.py).
OPEN = {"/livez", "/readyz", "/v2/health/live", "/v2/health/ready", "/", "/docs", "/docs/start.js",
        "/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js", "/docs/favicon-32x32.png"}
OPEN_GRPC = {"ServerLive", "ServerReady"}
ANSWERED = {"/v2/repository/models/bert_squad/unload": 400}  # with a right key; every other call: 200


def test_every_route_is_covered():
    """The app's routes (with the pages), as the serve command builds them, against ROUTES."""
    from bert_squad.front import api_docs, health, http, page
    from bert_squad.front.upstream import Upstream

    state = health.HealthState(lambda: None, 1.0, alive=lambda: True)
    door = http.FrontDoor(Upstream("unix:unused", "bert_squad", 1, 1 << 20, 30.0), state, lambda: None,
                          dict, page.routes("bert_squad", dict, None) + api_docs.routes("bert_squad"))
    assert {route.path for route in door._starlette.routes} == set(ROUTES)


# ---------------------------------------------------------------- a real server

@pytest.fixture(scope="module")
def keyed(oracle_servable, tmp_path_factory):
    from harness import Server

    root = tmp_path_factory.mktemp("keys")
    key_file = root / "api-keys"
    key_file.write_text(f"# test keys\n{KEY_A}\n{KEY_B}\n")
    with Server(root / "run", oracle_servable["servable_dir"],
                extra_args=["--api-key-file", str(key_file), "--log-format", "json",
                            "--cors-allow-origin", PAGE_ORIGIN]) as server:
        server.key_file = key_file
        yield server


def http_call(server, method: str, path: str, body, key=None) -> int:
    import http.client

    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    connection = http.client.HTTPConnection(*server.rest_address.rsplit(":", 1), timeout=30)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = connection.getresponse()
        data = response.read()
        if response.status == 401:
            assert response.getheader("WWW-Authenticate") == "Bearer"
            reason = json.loads(data)
            assert "API key" in (reason.get("error") or reason.get("error_msg")) and reason["request_id"]
        return response.status
    finally:
        connection.close()


def grpc_methods():
    """(address attribute, full method path, request) for every method of both gRPC services."""
    from mindspore_serving.proto import ms_service_pb2 as ms

    from bert_squad.front.oip.stubs import pb
    import wire

    calls = [("grpc_address", "/mindspore.serving.proto.MSService/Predict", wire.make_request("predict", [QUESTION]))]
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        request = getattr(pb, method.input_type.name)()
        if hasattr(request, "model_name"):
            request.model_name = "bert_squad"
        if hasattr(request, "name") and method.name != "ServerMetadata":
            request.name = "bert_squad"
        if method.name == "ModelInfer":
            for name in ("question", "context"):
                request.inputs.add(name=name, datatype="BYTES", shape=[1]).contents.bytes_contents.append(
                    QUESTION[name].encode())
        calls.append(("oip_grpc_address", f"/inference.GRPCInferenceService/{method.name}", request))
    assert isinstance(calls[0][2], ms.PredictRequest) and len(calls) == 7  # Predict and the protocol's six
    return calls


def grpc_code(server, attribute: str, path: str, request, key=None) -> str:
    import grpc

    metadata = [("authorization", f"Bearer {key}")] if key else None
    with grpc.insecure_channel(getattr(server, attribute)) as channel:
        call = channel.unary_unary(path, request_serializer=type(request).SerializeToString)
        try:
            call(request, metadata=metadata, timeout=30)
            return "OK"
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                assert "API key" in error.details() and dict(error.trailing_metadata())["x-request-id"]
            return error.code().name


def test_every_route_and_method_needs_a_right_key_but_the_probes_and_a_sighup_removes_one(keyed):
    for pattern, calls in ROUTES.items():
        for method, path, body in calls:
            status = http_call(keyed, method, path, body)
            if path in OPEN:
                assert status == 200, (path, status)
                continue
            assert status == 401, (path, status)
            assert http_call(keyed, method, path, body, key=KEY_C) == 401, path
            assert http_call(keyed, method, path, body, key=KEY_A) == ANSWERED.get(path, 200), path
    for attribute, path, request in grpc_methods():
        name = path.rsplit("/", 1)[1]
        if name in OPEN_GRPC:
            assert grpc_code(keyed, attribute, path, request) == "OK", path
            continue
        assert grpc_code(keyed, attribute, path, request) == "UNAUTHENTICATED", path
        assert grpc_code(keyed, attribute, path, request, key=KEY_C) == "UNAUTHENTICATED", path
        assert grpc_code(keyed, attribute, path, request, key=KEY_B) == "OK", path

    keyed.key_file.write_text(f"{KEY_B}\n{KEY_C}\n")  # KEY_A removed, KEY_C added
    keyed.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "API keys re-read" not in keyed.output():
        assert time.monotonic() < deadline, "no re-read line after SIGHUP"
        time.sleep(0.1)
    predict = ROUTES["/model/{tail:path}"][0]
    assert http_call(keyed, *predict, key=KEY_A) == 401 and http_call(keyed, *predict, key=KEY_C) == 200
    attribute, path, request = grpc_methods()[0]
    assert grpc_code(keyed, attribute, path, request, key=KEY_A) == "UNAUTHENTICATED"
    assert grpc_code(keyed, attribute, path, request, key=KEY_C) == "OK"

    keyed.key_file.write_text("")  # a bad file on SIGHUP: the keys in use stay
    keyed.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "the keys read before stay in use" not in keyed.output():
        assert time.monotonic() < deadline, "no error line after a SIGHUP with an empty key file"
        time.sleep(0.1)
    assert http_call(keyed, *predict, key=KEY_C) == 200 and keyed.process.poll() is None
    keyed.key_file.write_text(f"{KEY_A}\n{KEY_B}\n")
    keyed.process.send_signal(signal.SIGHUP)

    text = keyed.output()
    for key in (KEY_A, KEY_B, KEY_C):
        assert key not in text  # keys are never logged
    import urllib.request

    request = urllib.request.Request(f"http://{keyed.rest_address}/metrics",
                                     headers={"Authorization": f"Bearer {KEY_B}"})
    metrics = {}
    for line in urllib.request.urlopen(request, timeout=30).read().decode().splitlines():
        if line.startswith("bert_squad_requests_total{") and 'outcome="unauthorized"' in line:
            protocol = line.split('protocol="', 1)[1].split('"', 1)[0]
            metrics[protocol] = metrics.get(protocol, 0) + float(line.rsplit(" ", 1)[1])
    assert set(metrics) == {"rest", "oip_rest", "grpc", "oip_grpc"} and min(metrics.values()) >= 2
    refused = [json.loads(line[line.find('{"level"'):]) for line in text.splitlines()
               if '"bert_squad.access"' in line and '"status": 401' in line]
    assert refused and all("API key" in line["error"] and line["method"] == "other" for line in refused)


def test_the_clients_send_a_key_given_or_from_the_environment(keyed, monkeypatch, tmp_path):
    from bert_squad_client import AuthenticationError, Client, RestClient, predict

    for make, address in ((Client, keyed.grpc_address), (RestClient, keyed.rest_address)):
        monkeypatch.delenv("BERT_SQUAD_API_KEY", raising=False)
        with make(address, timeout=30, api_key=KEY_A) as client:
            assert client.answer(QUESTION["question"], QUESTION["context"]).text
        with make(address, timeout=30) as client:
            with pytest.raises(AuthenticationError, match="BERT_SQUAD_API_KEY") as refused:
                client.answer(QUESTION["question"], QUESTION["context"])
        assert refused.value.request_id
        with make(address, timeout=30, api_key=KEY_C) as client:
            with pytest.raises(AuthenticationError, match="not one of this server's keys"):
                client.answer(QUESTION["question"], QUESTION["context"])
        monkeypatch.setenv("BERT_SQUAD_API_KEY", KEY_B)
        with make(address, timeout=30) as client:
            assert client.answer(QUESTION["question"], QUESTION["context"]).text

    monkeypatch.delenv("BERT_SQUAD_API_KEY")
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"id": "q1", **QUESTION}) + "\n")
    key_file = tmp_path / "my-key"
    key_file.write_text(f"# mine\n{KEY_B}\n")
    out = tmp_path / "predictions.json"
    command = [str(questions), "-o", str(out), "--server", keyed.grpc_address, "--quiet"]
    assert predict.main(command) == predict.EXIT_ERROR and not out.exists()
    assert predict.main([*command, "--api-key-file", str(key_file)]) == predict.EXIT_OK
    assert json.loads(out.read_text())["q1"]


def test_a_browser_preflight_needs_no_key_and_a_refusal_is_readable_by_the_allowed_page(keyed):
    """Browsers send no credentials with a CORS preflight: it is answered without a key; the 401 that follows a
    keyless call carries the CORS headers, so the page can read why."""
    import http.client

    connection = http.client.HTTPConnection(*keyed.rest_address.rsplit(":", 1), timeout=30)
    try:
        connection.request("OPTIONS", "/model/bert_squad:predict", headers={
            "Origin": PAGE_ORIGIN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        preflight = connection.getresponse()
        preflight.read()
        assert preflight.status == 200 and preflight.getheader("Access-Control-Allow-Origin") == PAGE_ORIGIN
        assert "authorization" in preflight.getheader("Access-Control-Allow-Headers").lower()
        connection.request("POST", "/model/bert_squad:predict", body=json.dumps({"instances": [QUESTION]}),
                           headers={"Origin": PAGE_ORIGIN, "Content-Type": "application/json"})
        refused = connection.getresponse()
        assert "API key" in json.loads(refused.read())["error_msg"]
        assert refused.status == 401 and refused.getheader("Access-Control-Allow-Origin") == PAGE_ORIGIN
    finally:
        connection.close()
