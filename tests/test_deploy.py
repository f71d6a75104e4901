"""deploy/: the Dockerfile and Kubernetes manifests agree with the code they run.

Neither can run here (no container runtime, no cluster), so these tests check what can drift:
the arguments are real serve options, ports and probe paths are the ones the server listens on,
resources match the thread settings, the Service selects the pods, the image copies every package.
"""
from __future__ import annotations

import configparser
import json
import shlex
from pathlib import Path

import pytest

from bert_squad import settings
from bert_squad.front import health
from bert_squad.server import serving_python
from bert_squad.server.options import parse_args

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"

pytestmark = pytest.mark.pure


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            instruction, _, rest = current.partition(" ")
            lines.append((instruction.upper(), rest.strip()))
            current = ""
    return lines


def instructions(name: str) -> list[str]:
    return [rest for instruction, rest in dockerfile() if instruction == name]


def exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {text}"
    return value


def manifests() -> dict:
    import yaml

    docs = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc and {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path.name}: not a Kubernetes object"
            docs[doc["kind"]] = doc
    return docs


def container() -> dict:
    [server] = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return server


def image_options() -> list[str]:
    """The serve options the image's ENTRYPOINT passes: everything after `-m bert_squad.server.serve`."""
    entrypoint = exec_form(instructions("ENTRYPOINT")[0])
    return entrypoint[entrypoint.index("bert_squad.server.serve") + 1:]


def pod_options():
    """The serve command a pod runs: the image's ENTRYPOINT options, then the container's args."""
    assert "command" not in container(), "a command would replace the image's ENTRYPOINT and its addresses"
    return parse_args(image_options() + container()["args"])


def port_of(address: str) -> int:
    return health.parse_address(address)[1]


def cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_image_is_debian_12_built_by_the_setup_script_server_only():
    assert instructions("FROM") == ["debian:12"]
    [setup] = [run for run in instructions("RUN") if "scripts/setup.sh" in run]
    assert "BERT_SQUAD_SKIP_PY311=1" in setup.split("scripts/setup.sh")[0]


def test_image_copies_every_package_setup_cfg_installs_and_the_servable_config():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    package_dir = dict(line.split(" = ") for line in cfg["options"]["package_dir"].strip().splitlines())
    packages = [p.strip() for p in cfg["options"]["packages"].split(",")]
    copied = set()
    for copy in instructions("COPY"):
        *sources, _ = shlex.split(copy)
        copied.update(s.rstrip("/") for s in sources)
    tops = {p.split(".")[0] for p in packages}  # subpackages come with their top-level folder
    needed = {package_dir.get(p, p) for p in tops} | {"setup.cfg", "pyproject.toml", "scripts",
                                                          "servable/bert_squad/servable_config.py"}
    needed.add(cfg["metadata"]["long_description"].replace("file:", "").strip())  # README.md
    assert needed <= copied, f"the image misses {sorted(needed - copied)}"
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"


def test_image_entrypoint_is_the_serve_command_of_the_front_door_venv_setup_builds():
    [workdir] = instructions("WORKDIR")
    entrypoint = exec_form(instructions("ENTRYPOINT")[0])
    assert entrypoint[:3] == [f"{workdir}/.stack/front/bin/python", "-m", "bert_squad.server.serve"]
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert 'STACK="${BERT_SQUAD_STACK:-$ROOT/.stack}"' in setup
    assert '"$STACK/front/bin/python" -m pip install -q -e "$ROOT[front]"' in setup
    # Serving's side: the default --serving-python is the venv setup.sh builds beside it
    assert "$STACK/py39" in setup and serving_python.SETUP_VENV == REPO / ".stack" / "py39" / "bin" / "python"


def test_image_options_are_valid_and_listen_on_all_interfaces_on_the_exposed_ports():
    args = parse_args(image_options())
    addresses = [args.grpc_address, args.rest_address, args.oip_grpc_address, args.health_address]
    assert all(a.startswith("0.0.0.0:") for a in addresses), addresses
    exposed = {int(p) for expose in instructions("EXPOSE") for p in expose.split()}
    assert exposed == {port_of(a) for a in addresses}


def test_image_healthcheck_polls_readyz_within_its_timeout():
    [check] = instructions("HEALTHCHECK")
    options, _, command = check.partition("CMD")
    script = exec_form(command.strip())[-1]
    args = parse_args(image_options())
    assert f"http://127.0.0.1:{port_of(args.health_address)}/readyz" in script
    timeout = float(options.split("--timeout=")[1].split("s")[0])
    assert timeout > settings.HEALTH_PROBE_TIMEOUT_S


def test_image_runs_as_an_unprivileged_user_the_pods_also_use():
    [user] = instructions("USER")
    assert user not in ("0", "root")
    security = manifests()["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and str(security["runAsUser"]) == user


def test_pods_run_real_serve_options_listening_on_all_interfaces():
    args = pod_options()
    assert all(a.startswith("0.0.0.0:") for a in (args.grpc_address, args.rest_address, args.health_address))


def test_container_ports_are_the_ones_the_arguments_listen_on():
    args = pod_options()
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {"grpc": port_of(args.grpc_address), "rest": port_of(args.rest_address),
                     "oip-grpc": port_of(args.oip_grpc_address),
                     "health": port_of(args.health_address)}


def test_probes_call_the_health_endpoints_with_room_for_the_probe_question():
    server = container()
    ready, live = server["readinessProbe"], server["livenessProbe"]
    assert (ready["httpGet"]["path"], ready["httpGet"]["port"]) == ("/readyz", "health")
    assert (live["httpGet"]["path"], live["httpGet"]["port"]) == ("/livez", "health")
    assert ready["timeoutSeconds"] > settings.HEALTH_PROBE_TIMEOUT_S, "a slow answer must read as 503, not a timeout"
    assert ready["periodSeconds"] >= settings.HEALTH_TTL_S, "polling faster than the TTL only repeats the cached answer"


def test_cpu_requests_and_limits_match_workers_times_threads():
    args = pod_options()
    workers = len([d for d in args.device_ids.split(",") if d.strip()])
    resources = container()["resources"]
    assert cpus(resources["requests"]["cpu"]) == cpus(resources["limits"]["cpu"]) == workers * args.threads
    assert resources["requests"]["memory"] == resources["limits"]["memory"]


def test_model_volume_is_mounted_read_only_where_the_image_serves_version_1():
    [workdir] = instructions("WORKDIR")
    args = pod_options()
    [mount] = container()["volumeMounts"]
    assert mount["mountPath"] == f"{workdir}/servable/{args.name}/1" and mount["readOnly"] is True
    volumes = {v["name"]: v for v in manifests()["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mount["name"]]["persistentVolumeClaim"]["readOnly"] is True


def test_headless_service_selects_the_pods_and_targets_their_named_ports():
    docs = manifests()
    deployment, service = docs["Deployment"], docs["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= labels.items()
    assert not service["spec"].get("publishNotReadyAddresses"), "unready pods must drop out of DNS"
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports and port["port"] == ports[port["targetPort"]]
