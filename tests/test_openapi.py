"""GET /openapi.json (bert_squad/front/openapi.py), checked by schemathesis (PyPI) against a real server:
no 5xx, every response within 1 s and matching the document; on MindSpore Serving's routes schema-valid requests
are also accepted. On the Open Inference Protocol's /v2 routes they need not be: JSON Schema cannot say that a
tensor's data holds as many elements as its shape, or that question and context hold the same N, so a schema-valid
request can be a 400 with its reason (tests/test_oip_server.py checks those reasons)."""
import json
import subprocess

import pytest

import wire
from bert_squad import settings
from harness import REPO, Server

SCHEMATHESIS = REPO / ".stack" / "py311" / "bin" / "schemathesis"  # the client venv (reference extra)
EXAMPLES = 20  # per operation: 10 to 30 s on 2 cores, as loaded


@pytest.fixture(scope="module")
def server(oracle_servable, tmp_path_factory):
    with Server(tmp_path_factory.mktemp("openapi"), oracle_servable["servable_dir"]) as server:
        yield server


def test_the_document_describes_every_method_its_limits_and_errors(server):
    status, _, data = wire.rest_exchange(server.rest_address, "/openapi.json", b"", method="GET")
    document = json.loads(data)
    assert status == 200 and document["openapi"] == "3.1.0"
    methods = {path.rsplit(":", 1)[1] for path in document["paths"] if path.startswith("/model/bert_squad:")}
    assert methods == {"predict", "predict_with_options", "predict_features"}
    assert {"/livez", "/readyz", "/metrics"} <= set(document["paths"])
    operation = document["paths"]["/model/bert_squad:predict_with_options"]["post"]
    assert set(operation["responses"]) == {"200", "400", "404", "413", "429", "503", "504"}
    assert "Retry-After" in operation["responses"]["503"]["headers"]
    inputs = operation["requestBody"]["content"]["application/json"]["schema"]["properties"]["instances"]["items"]
    assert inputs["required"] == ["context", "max_answer_length", "question", "top_k"]
    assert inputs["properties"]["top_k"]["maximum"] == settings.MAX_TOP_K
    assert inputs["properties"]["context"]["oneOf"][0]["maxLength"] == settings.MAX_CONTEXT_CHARS
    assert str(settings.MAX_MESSAGE_MB << 20) in operation["description"]
    oip = {path for path in document["paths"] if path.startswith("/v2")}
    assert {"/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/bert_squad/infer",
            "/v2/models/bert_squad/versions/{version}/infer", "/v2/models/bert_squad_features/infer",
            "/v2/repository/index", "/v2/repository/models/bert_squad/load"} <= oip
    infer = document["paths"]["/v2/models/bert_squad/infer"]["post"]
    assert set(infer["responses"]) == {"200", "400", "404", "413", "429", "503", "504"}
    tensors = infer["requestBody"]["content"]["application/json"]["schema"]["properties"]["inputs"]["items"]["oneOf"]
    assert [t["properties"]["name"]["const"] for t in tensors] == ["question", "context", "top_k", "max_answer_length"]


def test_schemathesis_finds_no_5xx_no_slow_answer_and_no_reply_off_the_document(server, tmp_path):
    if not SCHEMATHESIS.exists():
        pytest.skip(f"{SCHEMATHESIS} is missing: scripts/setup.sh installs schemathesis in the Python 3.11 venv")
    # negative_data_rejection is left out: an instance the servable refuses (top_k 0, an empty question) gets its
    # own error in a 200, as the API always did; unsupported_method: schemathesis cuts paths at ':' for that check
    # (tests/test_bad_input.py checks 405 itself).
    # filter_too_much: hypothesis sometimes gives up generating valid examples for the version-pattern path of
    # bert_squad_features (seen once in a full run, not in the next one alone); that operation then gets fewer
    # examples instead of failing the run
    common = ["--max-examples", str(EXAMPLES), "--generation-deterministic", "--generation-codec", "utf-8",
              "--checks", "all", "--max-response-time", "1", "--request-timeout", "5", "--no-color",
              "--suppress-health-check", "filter_too_much"]
    url = f"http://{server.rest_address}/openapi.json"
    for selection, excluded in ((["--exclude-path-regex", "^/v2"], "negative_data_rejection,unsupported_method"),
                                (["--include-path-regex", "^/v2"],
                                 "negative_data_rejection,unsupported_method,positive_data_acceptance")):
        done = subprocess.run([str(SCHEMATHESIS), "run", url, *selection, *common, "--exclude-checks", excluded],
                              capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
        assert "No issues found" in done.stdout
