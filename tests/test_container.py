"""The container image, run the way the README says: a read-only mount of one exported version folder,
uid 10001, --cpus 2, the host's network with loopback ports given as serve options.

Opt-in: it needs the image and a Docker daemon, which `make test-container` provides (deploy/build-image.sh
builds deploy/Dockerfile, then runs this file). A cold build downloads ~1.2 GB and takes longer than CI can
spend (README "Container and Kubernetes"), so without them every test here is skipped, saying so.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness import export_servable, free_port
from oracle import build_oracle_checkpoint, uncased_vocab_file
from wire import grpc_predict, rest_predict

DOCKER = os.environ.get("BERT_SQUAD_DOCKER", "docker")
IMAGE = os.environ.get("BERT_SQUAD_IMAGE", "bert-squad:dev")
MODEL_MOUNT = "/opt/bert_squad/servable/bert_squad/1"  # where the image serves version 1 from
FRONT_PYTHON = "/opt/bert_squad/.stack/front/bin/python"  # bert-squad-serve (the ENTRYPOINT)
SERVING_PYTHON = "/opt/bert_squad/.stack/py39/bin/python"  # Serving's master and workers
READY_TIMEOUT_S = 300.0  # start-up inside the container on a loaded 2-core machine, with margin
STOP_TIMEOUT_S = 60.0
CONTEXT = "Long before the railway came, the city of Paris was already the capital of France."
ANSWER = "Paris was already the capital of France"  # the oracle's span: "paris" .. "france"


def _image_present() -> str:
    """'' when the image can be run here, else why not."""
    try:
        done = subprocess.run([DOCKER, "image", "inspect", IMAGE], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"no usable docker CLI ({e})"
    return "" if done.returncode == 0 else done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "?"


_MISSING = _image_present()
pytestmark = pytest.mark.skipif(
    bool(_MISSING), reason=f"image {IMAGE} not available ({_MISSING}): run `make test-container`, which builds it "
                           f"with deploy/build-image.sh and runs these tests")


def docker(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)


class Container:
    """`docker run` of the image in the foreground, as a child process whose output is kept in a file."""

    def __init__(self, workdir: Path, name: str, run_options: list, serve_options: list):
        self.name = name
        self.log_path = workdir / f"{name}.out"
        self.command = [DOCKER, "run", "--rm", "--name", name, "--user", "10001", "--cpus", "2",
                        "--network", "host", *run_options, IMAGE, *serve_options]
        self.process = None

    def start(self) -> "Container":
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def remove(self) -> None:
        """Whatever happened in the test: no container and no docker CLI process left behind."""
        docker("rm", "--force", self.name)
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module", params=["lite_direct", "serving"])
def version_folder(request, tmp_path_factory) -> Path:
    """The oracle model exported for one runtime: a version folder readable by the image's user."""
    root = tmp_path_factory.mktemp(f"container-{request.param}")
    config = build_oracle_checkpoint(root / "oracle.ckpt", uncased_vocab_file(), "paris", "france")
    options = {"buckets": (128, 384)} if request.param == "serving" else {}
    export_servable(root / "servable", root / "oracle.ckpt", vocab_file=uncased_vocab_file(), config=config,
                    runtime=request.param, **options)
    folder = root / "servable" / "bert_squad" / "1"
    subprocess.run(["chmod", "-R", "a+rX", str(folder)], check=True)  # MindIR files are written 0400
    return folder


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as e:
        return e.code


def wait_ready(container: Container, health: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert container.process.poll() is None, f"the container exited:\n{container.output()}"
        try:
            if get_status(f"http://{health}/readyz") == 200:
                return
        except OSError:  # not listening yet
            pass
        time.sleep(1.0)
    raise AssertionError(f"/readyz not 200 within {READY_TIMEOUT_S:.0f} s:\n{container.output()}")


def test_image_serves_a_mounted_model_over_grpc_and_rest_and_stops_cleanly_on_sigterm(version_folder,
                                                                                       tmp_path):
    grpc, rest, health = (f"127.0.0.1:{free_port()}" for _ in range(3))
    container = Container(tmp_path, f"bert-squad-test-{os.getpid()}-{version_folder.parent.parent.parent.name}",
                          ["-v", f"{version_folder}:{MODEL_MOUNT}:ro"],
                          ["--grpc-address", grpc, "--rest-address", rest, "--health-address", health,
                           "--threads", "2"])
    try:
        container.start()
        wait_ready(container, health)
        question = {"question": "Which city is the capital?", "context": CONTEXT}
        [by_grpc] = grpc_predict(grpc, "predict", [question])
        [by_rest] = rest_predict(rest, "predict", {"instances": [question]})
        start = CONTEXT.index(ANSWER)
        for reply in (by_grpc, by_rest):
            assert (reply["answer"], int(reply["start"]), int(reply["end"])) == (ANSWER, start, start + len(ANSWER))

        pid = docker("inspect", "--format", "{{.State.Pid}}", container.name).stdout.strip()
        uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:2]
        assert uids == ["10001", "10001"], f"the server runs as uid {uids}"

        assert docker("kill", "--signal", "TERM", container.name).returncode == 0
        code = container.wait(STOP_TIMEOUT_S)
        assert code == 0, f"exit status {code} after SIGTERM:\n{container.output()}"
        assert "bert-squad-serve: stopped" in container.output()
        with pytest.raises(OSError):  # nothing listens any more
            get_status(f"http://{health}/livez")
    finally:
        container.remove()


def test_image_without_a_model_says_what_to_mount(tmp_path):
    container = Container(tmp_path, f"bert-squad-test-{os.getpid()}-nomodel", [],
                          ["--grpc-address", f"127.0.0.1:{free_port()}", "--rest-address", "off",
                           "--health-address", "off"])
    try:
        code = container.start().wait(STOP_TIMEOUT_S)
        output = container.output()
        assert code == 2, output
        assert "no exported model in /opt/bert_squad/servable/bert_squad" in output
        assert "bert-squad-export" in output and "/opt/bert_squad/servable/bert_squad/1" in output
    finally:
        container.remove()


def venv_contents(python: str) -> tuple:
    """(Python version, normalised names of the installed distributions) of one of the image's venvs."""
    script = ("import importlib.metadata as m, json, sys; "
              "print(json.dumps([sys.version_info[:2], [d.metadata['Name'] for d in m.distributions()]]))")
    done = docker("run", "--rm", "--user", "10001", "--network", "host", "--entrypoint", python, IMAGE, "-c", script)
    assert done.returncode == 0, done.stderr
    version, names = json.loads(done.stdout)
    return tuple(version), {re.sub(r"[-_.]+", "-", name).lower() for name in names}


def test_image_venvs_hold_what_their_processes_need():
    """deploy/prune_venv.py: the front door's venv is setup.cfg's [front] (and pip) on Python 3.10+; Serving's venv
    on 3.9 keeps what the master and workers import and loses the front door's own packages, export and tests."""
    version, front = venv_contents(FRONT_PYTHON)
    assert version >= (3, 10), version
    assert {"bert-squad", "grpcio", "protobuf", "starlette", "uvicorn", "httptools", "opentelemetry-sdk",
            "openapi-ui-bundles", "prometheus-client", "python-json-logger", "psutil", "numpy"} <= front
    assert not front & {"mindspore-serving", "mindspore", "tokenizers", "openvino", "pytest", "setuptools"}

    version, serving = venv_contents(SERVING_PYTHON)
    assert version == (3, 9), version
    assert {"bert-squad", "mindspore-serving", "grpcio", "protobuf", "numpy", "psutil", "tokenizers", "openvino",
            "prometheus-client", "python-json-logger"} <= serving
    left = serving & {"starlette", "uvicorn", "httptools", "openapi-ui-bundles", "opentelemetry-api",
                      "opentelemetry-sdk", "grpcio-tools", "mindspore", "nncf", "pytest", "selenium", "h2"}
    assert not left, f"deploy/prune_venv.py left {sorted(left)} in Serving's venv"
