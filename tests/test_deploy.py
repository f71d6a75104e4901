"""deploy/: the Dockerfile and Kubernetes manifests agree with the code they run, and pass what a platform team
asks of a workload before it is admitted.

Neither can run here (no container runtime, no cluster), so these tests check what can drift:
the arguments are real serve options, ports and probe paths are the ones the server listens on,
resources match the thread settings and leave room for a version switch, the model volume is the whole servable
directory and the server polls it, the Service selects the pods, the image copies every package; every pod meets
Pod Security "restricted" with a read-only root filesystem, every object is in the namespace of its own, the
NetworkPolicy admits the serving ports only, and checkov (the policy scanner, setup.cfg [policy]) finds no failed
check in deploy/ (its skips each say why).
"""
from __future__ import annotations

import configparser
import copy
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from bert_squad import settings, versions
from bert_squad.front import health
from bert_squad.server import serving_python
from bert_squad.server.options import parse_args

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
TOOLS = Path(os.environ.get("BERT_SQUAD_STACK", REPO / ".stack")) / "tools"  # checkov's venv (scripts/setup.sh)
# Memory of one version while it starts: a BERT-base worker with buckets 128,256,384 (runtime serving) peaks at
# 5.7 GiB RSS (the largest export, docs/operations.md "Several workers on one host"), the front door ~100 MB.
VERSION_PEAK_BYTES = int(5.7 * 2**30)
FRONT_DOOR_BYTES = 100 * 2**20
# Pod Security "restricted": the volume types it allows, and the one capability a container may add.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                      "secret"}
RESTRICTED_ADD = {"NET_BIND_SERVICE"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
CHECKOV_SKIP = "checkov.io/skip"  # checkov's annotation: checkov.io/skipN: CKV_K8S_NN=reason
MAX_CHECKOV_SKIPS = 3

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


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (7Gi, 7500M, 1024) in bytes."""
    number, suffix = re.fullmatch(r"([0-9.]+)([KMGT]i?)?", str(quantity)).groups()
    scale = {None: 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[suffix]
    return int(float(number) * scale)


def switch_memory(args) -> int:
    """Memory a pod needs while a new version starts beside the running one (docs/operations.md, memory during a
    switch): two versions of every worker, the front door, and the headroom the server keeps free."""
    workers = len([d for d in args.device_ids.split(",") if d.strip()])
    return 2 * workers * VERSION_PEAK_BYTES + FRONT_DOOR_BYTES + args.switch_headroom_mb * 2**20


def all_documents() -> list[tuple[str, dict]]:
    """(file relative to deploy/, object) of every object in deploy/k8s/ and deploy/kserve/."""
    import yaml

    found = []
    for path in sorted(DEPLOY.glob("*/*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found.append((str(path.relative_to(DEPLOY)), document))
    return found


def pod_specs() -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod deploy/k8s/ asks for."""
    pods = []
    for where, document in all_documents():
        if not where.startswith("k8s/"):
            continue  # deploy/kserve/: KServe makes the pod (tests/test_kserve_manifests.py checks it)
        kind = document["kind"]
        if kind in POD_TEMPLATE_KINDS:
            pods.append((f"{where} {kind}", document["spec"]["template"]["spec"]))
        else:
            assert kind in {"Namespace", "Service", "NetworkPolicy"}, f"{where}: {kind}: where are its pods?"
    return pods


def restricted_problems(pod: dict, user: int) -> list[str]:
    """What Kubernetes' Pod Security Standard "restricted" refuses in a pod spec, and what the scanner asks beyond
    it: a read-only root filesystem whose writable places are emptyDir volumes, no service-account token, resources
    and probes on every container, the image's user. [] when nothing."""
    problems = []
    pod_security = pod.get("securityContext") or {}
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("pod: automountServiceAccountToken is not false")
    problems += [f"pod: {key}" for key in ("hostNetwork", "hostPID", "hostIPC") if pod.get(key)]
    volumes = {volume["name"]: volume for volume in pod.get("volumes") or []}
    for name, volume in volumes.items():
        if not set(volume) - {"name"} <= RESTRICTED_VOLUMES:
            problems.append(f"pod: volume {name}: {sorted(set(volume) - {'name'})} is not a restricted volume type")
    containers = [*(pod.get("initContainers") or []), *pod.get("containers", []),
                  *(pod.get("ephemeralContainers") or [])]
    if not containers:
        problems.append("pod: no containers")
    for container in containers:
        name, security = container.get("name", "?"), container.get("securityContext") or {}

        def effective(key, security=security):  # a container's own setting, else the pod's
            return security.get(key, pod_security.get(key))

        if effective("runAsNonRoot") is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if effective("runAsUser") != user:
            problems.append(f"{name}: runAsUser {effective('runAsUser')} is not the image's user {user}")
        if (effective("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: no seccompProfile RuntimeDefault")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if security.get("privileged"):
            problems.append(f"{name}: privileged")
        capabilities = security.get("capabilities") or {}
        if capabilities.get("drop") != ["ALL"]:
            problems.append(f"{name}: capabilities.drop is not [ALL]")
        if set(capabilities.get("add") or []) - RESTRICTED_ADD:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem is not true")
        problems += [f"{name}: hostPort {p['hostPort']}" for p in container.get("ports") or [] if p.get("hostPort")]
        resources = container.get("resources") or {}
        problems += [f"{name}: no {kind}.{what}" for kind in ("requests", "limits") for what in ("cpu", "memory")
                     if what not in (resources.get(kind) or {})]
        problems += [f"{name}: no {probe}" for probe in ("readinessProbe", "livenessProbe") if probe not in container]
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"])
            if volume is None:
                problems.append(f"{name}: mounts {mount['name']}, which the pod does not have")
            elif not mount.get("readOnly") and "emptyDir" not in volume:
                problems.append(f"{name}: {mount['mountPath']} is writable and not an emptyDir")
    return problems


def writable_paths(pod: dict, container: dict) -> list[PurePosixPath]:
    """Where the container may write: its emptyDir mounts (the root filesystem is read-only)."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes") or []}
    return [PurePosixPath(m["mountPath"]) for m in container.get("volumeMounts") or []
            if not m.get("readOnly") and "emptyDir" in volumes.get(m["name"], {})]


def under(path: PurePosixPath, places: list[PurePosixPath]) -> bool:
    return any(path == place or place in path.parents for place in places)


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


def model_mount() -> dict:
    """The container's mount of the PersistentVolumeClaim that holds the model."""
    volumes = {v["name"]: v for v in manifests()["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    [mount] = [m for m in container()["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]]
    assert volumes[mount["name"]]["persistentVolumeClaim"]["readOnly"] is True
    return mount


def test_model_volume_is_the_whole_servable_directory_mounted_read_only_and_polled_for_new_versions():
    args = pod_options()
    mount = model_mount()
    assert PurePosixPath(mount["mountPath"]) == PurePosixPath(args.servable_dir) and mount["readOnly"] is True
    assert not args.servable_dir.name.isdigit(), "the servable directory, not one version folder"
    assert args.version == 0 and versions.Policy.parse(args.version_policy).number == 0, "serve the newest version"
    assert args.poll_seconds > 0, "without --poll-seconds a new version folder waits for SIGHUP or a rollout"


def test_memory_limit_leaves_room_for_two_versions_during_a_switch():
    args = pod_options()
    limit = quantity_bytes(container()["resources"]["limits"]["memory"])
    assert limit >= switch_memory(args), f"{limit / 2**30:.2f} GiB < {switch_memory(args) / 2**30:.2f} GiB"


def test_the_server_writes_only_to_emptydir_volumes():
    """The root filesystem is read-only: the work directory (Serving's logs and unix sockets, the metrics files) and
    /tmp (temp files; the default work directory) must be writable volumes."""
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    places = writable_paths(pod, container())
    assert container()["securityContext"]["readOnlyRootFilesystem"] is True
    assert under(PurePosixPath("/tmp"), places), f"/tmp is not writable: {places}"
    workdir = pod_options().workdir
    assert workdir is None or under(PurePosixPath(workdir), places), f"--workdir {workdir} is not writable"


def test_every_pod_meets_pod_security_restricted_with_a_read_only_root():
    [user] = instructions("USER")
    pods = pod_specs()
    assert pods
    for where, pod in pods:
        assert restricted_problems(pod, int(user)) == [], where
    # the check can fail: each setting dropped is reported
    where, pod = pods[0]
    breakages = {
        "allowPrivilegeEscalation": lambda p: p["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
        "capabilities": lambda p: p["containers"][0]["securityContext"].pop("capabilities"),
        "readOnlyRootFilesystem": lambda p: p["containers"][0]["securityContext"].pop("readOnlyRootFilesystem"),
        "seccompProfile": lambda p: (p["securityContext"].pop("seccompProfile"),
                                     p["containers"][0]["securityContext"].pop("seccompProfile")),
        "runAsNonRoot": lambda p: (p["securityContext"].pop("runAsNonRoot"),
                                   p["containers"][0]["securityContext"].pop("runAsNonRoot")),
        "automountServiceAccountToken": lambda p: p.pop("automountServiceAccountToken"),
        "resources": lambda p: p["containers"][0].pop("resources"),
        "writable": lambda p: p["containers"][0]["volumeMounts"].append({"name": "model", "mountPath": "/x"}),
        "hostPath": lambda p: p["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
        "privileged": lambda p: p["containers"][0]["securityContext"].update(privileged=True),
    }
    for what, breakage in breakages.items():
        broken = copy.deepcopy(pod)
        breakage(broken)
        assert restricted_problems(broken, int(user)), f"{where}: dropping {what} went unnoticed"


def test_every_object_is_in_the_namespace_that_enforces_restricted():
    documents = all_documents()
    [(where, namespace)] = [(w, d) for w, d in documents if d["kind"] == "Namespace"]
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    k8s_files = sorted(p.name for p in (DEPLOY / "k8s").glob("*.yaml"))
    assert where == f"k8s/{k8s_files[0]}", "kubectl apply -f deploy/k8s/ must create the namespace first"
    for where, document in documents:
        if document["kind"] != "Namespace":
            assert document["metadata"].get("namespace") == namespace["metadata"]["name"], (
                f"{where}: {document['kind']} {document['metadata']['name']} is not in the namespace")


def test_network_policy_admits_ingress_to_the_serving_ports_only():
    docs = manifests()
    policy, service = docs["NetworkPolicy"]["spec"], docs["Service"]["spec"]
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert "Ingress" in policy["policyTypes"]
    admitted = admitted_ports(policy)
    assert admitted == {port["targetPort"] for port in service["ports"]} == {"grpc", "rest", "oip-grpc"}
    assert not admitted & {"health", 8080}, "the kubelet probes from the node, which NetworkPolicy always admits"


def admitted_ports(policy_spec: dict) -> set:
    """The ports a NetworkPolicy's ingress rules admit; every rule must name its ports."""
    admitted = set()
    for rule in policy_spec["ingress"]:
        assert rule.get("ports"), "an ingress rule without ports admits every port"
        admitted |= {port["port"] for port in rule["ports"]}
    return admitted


def checkov() -> str:
    if sys.version_info < (3, 10):
        pytest.skip("scanned once, from the Python 3.10+ run of this file (scripts/test.sh runs it there too)")
    found = TOOLS / "bin" / "checkov"
    assert found.is_file(), f"no {found}: scripts/setup.sh builds that venv (setup.cfg [policy])"
    return str(found)


def test_checkov_finds_no_failed_check_in_deploy_and_each_skip_says_why():
    """The scan a platform team runs (docs/operations.md): checkov's Kubernetes checks over deploy/, offline
    (--skip-download: no policies or guidelines fetched; no update check)."""
    done = subprocess.run([checkov(), "--directory", "deploy", "--framework", "kubernetes", "--output", "json",
                           "--skip-download"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"})
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: failed checks, reported below
    report = json.loads(done.stdout)
    [report] = [r for r in (report if isinstance(report, list) else [report]) if r["check_type"] == "kubernetes"]
    results, summary = report["results"], report["summary"]
    failed = [f"{c['check_id']} {c['check_name']} ({c['file_path']} {c['resource']})" for c in results["failed_checks"]]
    assert failed == [] and summary["failed"] == 0, "\n".join(failed)
    assert results["parsing_errors"] == [] and summary["passed"] > 0
    scanned = {c["file_path"] for kind in ("passed_checks", "skipped_checks") for c in results[kind]}
    assert {"/deploy/k8s/deployment.yaml", "/deploy/k8s/service.yaml"} <= scanned, scanned
    assert done.returncode == 0

    skipped = results["skipped_checks"]
    assert len(skipped) <= MAX_CHECKOV_SKIPS, [c["check_id"] for c in skipped]
    for check in skipped:
        reason = check["check_result"].get("suppress_comment") or ""
        assert len(reason.split()) >= 5 and reason != "No comment provided", f"{check['check_id']}: {reason!r}"
    # every skip annotation in the manifests: one check, a reason checkov can read (it splits at '='), and used
    annotated = set()
    for where, document in all_documents():
        for key, value in ((document["metadata"].get("annotations")) or {}).items():
            if key.startswith(CHECKOV_SKIP):
                assert re.fullmatch(r"CKV2?_K8S_\d+=[^=]+", value), f"{where}: {key}: {value!r}"
                annotated.add(value.split("=")[0])
    assert annotated == {check["check_id"] for check in skipped}


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
