"""/metrics (bert_squad/front/metrics.py): names and labels, and a real Prometheus server (Debian package
`prometheus`, installed by scripts/setup.sh) scraping a real server while a known number of requests go by."""
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

import wire
from harness import Server, free_port

QUESTION = {"question": "Which capital?", "context": "The city of Paris is the capital of France, they say."}
REST_ANSWERS, REST_REFUSED, GRPC_QUESTIONS = 7, 3, 5
P95 = 'histogram_quantile(0.95, sum by (le) (rate(bert_squad_request_duration_seconds_bucket[1m])))'
ERROR_RATE = ('sum(rate(bert_squad_requests_total{outcome!~"ok|instance_error"}[1m])) '
              '/ sum(rate(bert_squad_requests_total[1m]))')


def samples(text: str) -> dict:
    """{'name{labels}': value} of a Prometheus text exposition."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            found[key] = float(value)
    return found


@pytest.fixture(scope="module")
def traffic(oracle_servable, tmp_path_factory):
    """A server that answered REST_ANSWERS good and REST_REFUSED malformed REST requests, and
    GRPC_QUESTIONS gRPC questions (in one request), besides its own warm-up question."""
    with Server(tmp_path_factory.mktemp("metrics"), oracle_servable["servable_dir"]) as server:
        for _ in range(REST_ANSWERS):
            assert wire.rest_predict(server.rest_address, "predict", {"instances": [QUESTION]})[0]["answer"]
        for _ in range(REST_REFUSED):
            assert wire.rest_refusal(server.rest_address, "predict", b"{not json")[0] == 400
        reply = wire.grpc_predict(server.grpc_address, "predict", [QUESTION] * GRPC_QUESTIONS)
        assert len(reply) == GRPC_QUESTIONS
        yield server


def test_metrics_count_rest_requests_and_questions_of_both_protocols(traffic):
    status, headers, data = wire.rest_exchange(traffic.rest_address, "/metrics", b"", method="GET")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    found = samples(data.decode())
    assert found['bert_squad_requests_total{method="predict",outcome="ok",protocol="rest"}'] == REST_ANSWERS
    assert found['bert_squad_requests_total{method="predict",outcome="bad_request",protocol="rest"}'] == REST_REFUSED
    assert found['bert_squad_request_duration_seconds_count{method="predict",protocol="rest"}'] == \
        REST_ANSWERS + REST_REFUSED
    # the workers count questions whatever the protocol: REST, gRPC, and the serve command's warm-up question
    questions = REST_ANSWERS + GRPC_QUESTIONS + 1
    assert found['bert_squad_questions_total{outcome="tokenized"}'] == questions
    assert found["bert_squad_windows_per_question_count"] == questions
    assert found['bert_squad_windows_per_question_bucket{le="1.0"}'] == questions  # one window each
    assert found["bert_squad_tokens_per_window_count"] == questions
    assert found['bert_squad_stage_duration_seconds_count{stage="preprocess"}'] == questions
    assert found['bert_squad_stage_duration_seconds_count{stage="postprocess"}'] == questions
    assert 1 <= found['bert_squad_stage_duration_seconds_count{stage="model"}'] <= questions
    assert found['bert_squad_requests_in_flight{protocol="rest"}'] == 0
    assert found["bert_squad_worker_restarts_total"] == 0
    [info] = [k for k in found if k.startswith("bert_squad_build_info{")]
    assert 'precision="fp32"' in info and 'runtime="serving"' in info and 'servable_version="1"' in info
    assert re.search(r'model_sha256="[0-9a-f]{64}"', info)


def prometheus_query(port: int, query: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_a_real_prometheus_scrape_counts_exactly_the_requests_sent(traffic, tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus command is not installed (scripts/setup.sh installs Debian's package as root)")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: bert_squad\n"
                      f"    static_configs:\n      - targets: ['{traffic.rest_address}']\n")
    log = open(tmp_path / "prometheus.log", "wb")
    prometheus = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                   f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                                  cwd=tmp_path)
    try:
        query = 'sum(bert_squad_requests_total{protocol="rest",outcome="ok"})'
        deadline, value = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            try:
                result = prometheus_query(port, query)
            except OSError:  # not listening yet
                result = []
            if result:
                value = float(result[0]["value"][1])
                if value == REST_ANSWERS:
                    break
            time.sleep(0.5)
        assert value == REST_ANSWERS, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert prometheus_query(port, 'up{job="bert_squad"}')[0]["value"][1] == "1"
        for example in (P95, ERROR_RATE):  # the README's example queries are valid PromQL on these names
            prometheus_query(port, example)
    finally:
        prometheus.terminate()
        prometheus.wait(30)
        log.close()


def test_metric_names_follow_prometheus_conventions():
    """Base units in the name (seconds), no unit-less durations; labels of bounded values only."""
    from prometheus_client import Counter, Gauge, Histogram

    from bert_squad.contract import serving_metrics
    from bert_squad.front import metrics

    ours = [m for module in (metrics, serving_metrics) for m in vars(module).values()
            if isinstance(m, (Counter, Gauge, Histogram))]
    assert len(ours) >= 12
    for m in ours:
        assert re.fullmatch(r"bert_squad_[a-z0-9_]+", m._name), m._name
        if isinstance(m, Histogram) and ("duration" in m._name or "time" in m._name):
            assert m._name.endswith("_seconds"), m._name
        assert not {"question", "context", "instance", "pid", "address"} & set(m._labelnames), m._name
