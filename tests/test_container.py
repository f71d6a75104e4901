"""The container image, run the way deploy/k8s/ runs it (Pod Security "restricted"): a read-only root filesystem with
/tmp the one writable place (a tmpfs here, an emptyDir there), no capabilities, no new privileges, uid 10001, the
model mounted read-only; --cpus 2, the host's network with loopback ports given as serve options. Every `docker
run` here uses those settings (RESTRICTED), so whatever the image starts to write outside /tmp fails a test.

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
import yaml

from harness import export_servable, free_port
from oracle import build_oracle_checkpoint, uncased_vocab_file
from wire import grpc_predict, rest_exchange, rest_predict

DOCKER = os.environ.get("BERT_SQUAD_DOCKER", "docker")
IMAGE = os.environ.get("BERT_SQUAD_IMAGE", "bert-squad:dev")
MODEL_MOUNT = "/opt/bert_squad/servable/bert_squad/1"  # where the image serves version 1 from
FRONT_PYTHON = "/opt/bert_squad/.stack/front/bin/python"  # bert-squad-serve (the ENTRYPOINT)
SERVING_PYTHON = "/opt/bert_squad/.stack/py39/bin/python"  # Serving's master and workers
SBOM_DIR = "/opt/bert_squad/sbom"  # the CycloneDX SBOM of each venv, made at build time (deploy/Dockerfile)
SBOMS = {"front.cdx.json": FRONT_PYTHON, "py39.cdx.json": SERVING_PYTHON}
DEPLOYMENT = Path(__file__).resolve().parent.parent / "deploy" / "k8s" / "deployment.yaml"
# How every container here runs (with --user USER): what deploy/k8s/'s securityContext asks of the image
# (readOnlyRootFilesystem with /tmp an emptyDir, capabilities drop ALL, allowPrivilegeEscalation false, uid 10001).
RESTRICTED = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
USER = "10001"
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


def run_in_image(entrypoint: str, *args: str, user: str = USER, timeout: float = 120.0) -> str:
    """Standard output of one command run in a fresh restricted container of the image; fails the test on an error."""
    done = docker("run", "--rm", *RESTRICTED, "--user", user, "--network", "host", "--entrypoint", entrypoint, IMAGE,
                  *args, timeout=timeout)
    assert done.returncode == 0, f"{entrypoint} {' '.join(args)}: exit status {done.returncode}\n{done.stderr}"
    return done.stdout


class Container:
    """`docker run` of the image in the foreground, as a child process whose output is kept in a file."""

    def __init__(self, workdir: Path, name: str, run_options: list, serve_options: list):
        self.name = name
        self.log_path = workdir / f"{name}.out"
        self.command = [DOCKER, "run", "--rm", "--name", name, *RESTRICTED, "--user", USER, "--cpus", "2",
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


@pytest.fixture(scope="module", params=["lite_direct", "serving", "openvino"])
def servable_dir(request, tmp_path_factory) -> Path:
    """The oracle model exported for one runtime: a servable directory (servable_config.py and version folder 1)
    readable by the image's user, in a folder named after the runtime."""
    root = tmp_path_factory.mktemp(request.param, numbered=False)
    config = build_oracle_checkpoint(root / "oracle.ckpt", uncased_vocab_file(), "paris", "france")
    options = {"buckets": (128, 384)} if request.param == "serving" else {}
    export_servable(root / "servable", root / "oracle.ckpt", vocab_file=uncased_vocab_file(), config=config,
                    runtime=request.param, **options)
    subprocess.run(["chmod", "-R", "a+rX", str(root / "servable")], check=True)  # MindIR files are written 0400
    return root / "servable"


def deployment_way(servable_dir: Path) -> tuple:
    """(run options, serve options) that mount and serve the model as deploy/k8s/deployment.yaml does: the whole
    servable directory read-only at the model volume's mount path, with the Deployment's args (--servable-dir,
    --version-policy, --poll-seconds, --workdir under /tmp) but not its --threads (4 CPUs there, 2 here)."""
    [pod] = [doc["spec"]["template"]["spec"] for doc in yaml.safe_load_all(DEPLOYMENT.read_text())
             if doc and doc["kind"] == "Deployment"]
    [server] = pod["containers"]
    [mount] = [m for m in server["volumeMounts"] if m["name"] == "model"]
    assert mount.get("readOnly") is True
    return (["-v", f"{servable_dir}:{mount['mountPath']}:ro"],
            [arg for arg in server["args"] if not arg.startswith("--threads")])


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


def oip_rest_answer(address: str, question: dict) -> tuple:
    """(answer, start, end) over the Open Inference Protocol's REST API, JSON in and out."""
    body = {"inputs": [{"name": name, "datatype": "BYTES", "shape": [1], "data": [question[name]]}
                       for name in ("question", "context")]}
    status, _, data = rest_exchange(address, "/v2/models/bert_squad/infer", body)
    assert status == 200, data[:500]
    outputs = {output["name"]: output["data"] for output in json.loads(data)["outputs"]}
    return outputs["answer"][0], int(outputs["start"][0]), int(outputs["end"][0])


def oip_grpc_answer(address: str, question: dict) -> tuple:
    """(answer, start, end) over the Open Inference Protocol's gRPC service (GRPCInferenceService/ModelInfer),
    outputs read from raw_output_contents: BYTES as a 4-byte little-endian length and the bytes, INT32 as <i4."""
    import grpc
    import numpy as np

    from bert_squad.front.oip.stubs import pb, pb_grpc

    names = ("answer", "start", "end")
    request = pb.ModelInferRequest(model_name="bert_squad", outputs=[
        pb.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in names])
    for name in ("question", "context"):
        request.inputs.add(name=name, datatype="BYTES", shape=[1]).contents.bytes_contents.append(
            question[name].encode())
    with grpc.insecure_channel(address) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=120)
    raw = dict(zip([output.name for output in reply.outputs], reply.raw_output_contents))
    length = int.from_bytes(raw["answer"][:4], "little")
    return (raw["answer"][4:4 + length].decode(), int(np.frombuffer(raw["start"], "<i4")[0]),
            int(np.frombuffer(raw["end"], "<i4")[0]))


def test_image_serves_a_mounted_model_restricted_over_every_protocol_and_stops_cleanly_on_sigterm(servable_dir,
                                                                                                  tmp_path):
    """Under RESTRICTED, each runtime's export (their workers load different libraries: MindSpore Serving's with
    Lite, the Lite shim, OpenVINO) mounted one way: the serving one as deploy/k8s/deployment.yaml does (the servable
    directory, polled for new versions, --workdir under /tmp), the others as the README says (one version folder at
    the image's default place, the default work directory). Ready; the exact answer over MindSpore Serving's gRPC and
    REST and the Open Inference Protocol's REST and gRPC; the server as uid 10001 with no capabilities and no new
    privileges; exit status 0 on SIGTERM."""
    runtime = servable_dir.parent.name
    grpc, rest, oip_grpc, health = (f"127.0.0.1:{free_port()}" for _ in range(4))
    if runtime == "serving":
        run_options, serve_options = deployment_way(servable_dir)
    else:
        run_options, serve_options = ["-v", f"{servable_dir / 'bert_squad' / '1'}:{MODEL_MOUNT}:ro"], []
    container = Container(tmp_path, f"bert-squad-test-{os.getpid()}-{runtime}", run_options,
                          [*serve_options, "--grpc-address", grpc, "--rest-address", rest,
                           "--oip-grpc-address", oip_grpc, "--health-address", health, "--threads", "2"])
    try:
        container.start()
        wait_ready(container, health)
        question = {"question": "Which city is the capital?", "context": CONTEXT}
        [by_grpc] = grpc_predict(grpc, "predict", [question])
        [by_rest] = rest_predict(rest, "predict", {"instances": [question]})
        start = CONTEXT.index(ANSWER)
        expected = (ANSWER, start, start + len(ANSWER))
        answers = {"MindSpore Serving gRPC": (by_grpc["answer"], int(by_grpc["start"]), int(by_grpc["end"])),
                   "MindSpore Serving REST": (by_rest["answer"], int(by_rest["start"]), int(by_rest["end"])),
                   "OIP REST": oip_rest_answer(rest, question),
                   "OIP gRPC": oip_grpc_answer(oip_grpc, question)}
        assert answers == dict.fromkeys(answers, expected)
        # Serving's logs, sockets and metrics went to the work directory under /tmp (the serve command's default,
        # or the Deployment's --workdir)
        [logs] = re.findall(r" logs=(\S+)", container.output())
        assert logs.startswith("/tmp/"), container.output()

        pid = docker("inspect", "--format", "{{.State.Pid}}", container.name).stdout.strip()
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)
        assert status["Uid"].split()[:2] == ["10001", "10001"], f"the server runs as uid {status['Uid']}"
        assert (int(status["CapEff"], 16), int(status["CapBnd"], 16), status["NoNewPrivs"].strip()) == (0, 0, "1")
        assert docker("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", container.name).stdout.strip() == "true"

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


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(python: str) -> tuple:
    """(Python version, {normalised name: version} of the installed distributions) of one of the image's venvs, as
    its own interpreter's importlib.metadata sees them."""
    script = ("import importlib.metadata as m, json, sys; "
              "print(json.dumps([sys.version_info[:2], [[d.metadata['Name'], d.version] for d in m.distributions()]]))")
    version, distributions = json.loads(run_in_image(python, "-c", script))
    return tuple(version), {canonical(name): version for name, version in distributions}


def venv_contents(python: str) -> tuple:
    """(Python version, normalised names of the installed distributions) of one of the image's venvs."""
    version, distributions = installed(python)
    return version, set(distributions)


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
    assert not (front | serving) & {"cyclonedx-bom", "cyclonedx-python-lib"}, "the SBOM tool stayed in a venv"


@pytest.mark.parametrize("sbom", sorted(SBOMS))
def test_image_has_a_cyclonedx_sbom_of_each_venv_naming_what_is_installed(sbom):
    """deploy/Dockerfile writes a CycloneDX JSON SBOM of each venv after deploy/prune_venv.py: its components are
    exactly the distributions installed there (name and version), with package URLs a scanner can match."""
    document = json.loads(run_in_image("cat", f"{SBOM_DIR}/{sbom}"))
    assert document["bomFormat"] == "CycloneDX" and re.fullmatch(r"1\.\d+", document["specVersion"]), document.keys()
    components = document["components"]
    listed = {canonical(c["name"]): c["version"] for c in components}
    assert len(listed) == len(components), "a distribution listed twice"
    _, really = installed(SBOMS[sbom])
    assert listed == really
    for component in components:  # the package URL a scanner matches advisories by; none for the project itself
        if canonical(component["name"]) == "bert-squad":  # installed from the image's own sources (editable)
            assert "purl" not in component, component
            assert "file:///opt/bert_squad" in [ref["url"] for ref in component["externalReferences"]], component
            continue
        purl = re.fullmatch(r"pkg:pypi/([^@?#]+)@([^?#]+)(\?.*)?", component.get("purl", ""))
        assert purl and (canonical(purl[1]), purl[2]) == (canonical(component["name"]), component["version"]), \
            component
    # spot checks against what the tests above require of each venv
    assert ("grpcio" in listed and "mindspore-serving" not in listed) if sbom == "front.cdx.json" else (
        "mindspore-serving" in listed and "mindspore" not in listed)


def test_the_sbom_tool_is_not_in_the_image():
    """cyclonedx-bom ran in a throwaway venv during the build: no package of it (cyclonedx/, cyclonedx_py/, their
    dist-info) and no cyclonedx-py script is left anywhere in the image. Looked for as root, which owns every folder
    but apt's partial-download one (apt's own user's, mode 0700: unreadable without capabilities, and empty)."""
    found = run_in_image("find", "/", "-xdev", "-path", "/var/cache/apt/archives/partial", "-prune", "-o",
                         "(", "-type", "d", "-iname", "cyclonedx*", "-o", "-name", "cyclonedx-py", ")", "-print",
                         user="0")
    assert found == ""


def test_openvino_telemetry_is_declined_for_the_image_user():
    """OpenVINO (Serving's venv, the openvino runtime) sends a usage event to Google Analytics on every `import
    openvino` and keeps a client id under ~/intel unless the user opted out: the image ships the opt-out. Asked of
    openvino_telemetry's own consent check (which sends nothing), as its tool does (no dialog; not a CI run)."""
    script = ("from openvino_telemetry.utils.opt_in_checker import OptInChecker; "
              "print(OptInChecker().check(enable_opt_in_dialog=False, disable_in_ci=False).name)")
    assert run_in_image(SERVING_PYTHON, "-c", script).strip() == "DECLINED"
