"""deploy/kserve/: the ServingRuntime and InferenceService against Kubernetes' schemas (kubernetes-validate: the
runtime's container and the pod it implies; KServe's resources themselves have no schema there) and against
KServe's own models (PyPI kserve deserialises them and writes them back unchanged), and against the code they
run: ports are the ones the arguments listen on, the whole servable directory goes read-only where the runtime
serves and polls it, the format version is the version folders' metadata format; and the pod it makes meets Pod
Security "restricted" with a read-only root filesystem, the NetworkPolicy admits the serving ports only. No cluster
is needed.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from bert_squad import metadata, settings, versions
from bert_squad.front import health
from bert_squad.server.serve import parse_args
from test_deploy import (admitted_ports, all_documents, instructions, quantity_bytes, restricted_problems,
                         switch_memory, under, writable_paths)

REPO = Path(__file__).resolve().parent.parent
KSERVE = REPO / "deploy" / "kserve"
pytestmark = pytest.mark.pure


def documents() -> dict:
    import yaml

    found = {}
    for path in sorted(KSERVE.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found[document["kind"]] = document
    return found


def runtime_container() -> dict:
    [container] = documents()["ServingRuntime"]["spec"]["containers"]
    return container


def arguments() -> dict:
    """--option=value pairs of the runtime's args."""
    pairs = {}
    for arg in runtime_container()["args"]:
        assert arg.startswith("--") and "=" in arg, f"{arg}: write args as --option=value"
        option, _, value = arg.partition("=")
        pairs[option] = value
    return pairs


def port(address: str) -> int:
    return health.parse_address(address)[1]


def test_runtime_speaks_both_protocols_on_the_ports_its_arguments_listen_on():
    spec = documents()["ServingRuntime"]["spec"]
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    args = arguments()
    assert [p["containerPort"] for p in runtime_container()["ports"]] == [
        port(args["--rest-address"]), port(args["--oip-grpc-address"])] == [8080, port(settings.DEFAULT_OIP_GRPC_ADDRESS)]
    assert all(address.startswith("0.0.0.0:") for option, address in args.items() if option.endswith("-address"))
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(port(args["--rest-address"]))
    for probe in ("readinessProbe", "livenessProbe"):
        assert runtime_container()[probe]["httpGet"]["port"] == port(args["--health-address"])
    assert {runtime_container()[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")} == {
        "/readyz", "/livez"}


def test_model_format_is_the_version_folders_and_the_isvc_asks_for_it():
    [model_format] = documents()["ServingRuntime"]["spec"]["supportedModelFormats"]
    assert model_format["version"] == str(metadata.FORMAT_VERSION)
    model = documents()["InferenceService"]["spec"]["predictor"]["model"]
    assert (model["modelFormat"], model["runtime"]) == (
        {"name": model_format["name"], "version": model_format["version"]},
        documents()["ServingRuntime"]["metadata"]["name"])
    assert model["protocolVersion"] in documents()["ServingRuntime"]["spec"]["protocolVersions"]


def test_servable_directory_is_mounted_read_only_where_the_runtime_serves_and_polls_it():
    isvc = documents()["InferenceService"]
    [storage] = isvc["spec"]["predictor"]["storageUris"]
    options = parse_args(runtime_container()["args"])
    assert PurePosixPath(storage["mountPath"]) == PurePosixPath(options.servable_dir)
    assert not options.servable_dir.name.isdigit(), "the servable directory, not one version folder"
    assert options.version == 0 and versions.Policy.parse(options.version_policy).number == 0
    assert options.poll_seconds > 0, "without --poll-seconds a new version folder waits for a new revision"
    assert isvc["metadata"].get("annotations", {}).get("storage.kserve.io/readonly", "true") == "true"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"  # two ports


def test_memory_limit_leaves_room_for_two_versions_during_a_switch():
    options = parse_args(runtime_container()["args"])
    resources = runtime_container()["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    assert quantity_bytes(resources["limits"]["memory"]) >= switch_memory(options)


def test_runtime_pod_meets_pod_security_restricted_and_writes_only_to_emptydir_volumes():
    [user] = instructions("USER")
    pod = pod_of_runtime()["spec"]
    assert restricted_problems(pod, int(user)) == []
    places = writable_paths(pod, pod["containers"][0])
    options = parse_args(runtime_container()["args"])
    assert under(PurePosixPath("/tmp"), places) and under(PurePosixPath(options.workdir or "/tmp"), places), places
    without = pod_of_runtime()["spec"]
    del without["securityContext"]["seccompProfile"]
    del without["containers"][0]["securityContext"]["seccompProfile"]
    assert restricted_problems(without, int(user)) == ["kserve-container: no seccompProfile RuntimeDefault"]


def test_network_policy_admits_ingress_to_the_runtime_ports_only():
    policy = documents()["NetworkPolicy"]
    assert policy["metadata"]["namespace"] == documents()["InferenceService"]["metadata"]["namespace"]
    # KServe labels the predictor's pods with the InferenceService's name
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": documents()["InferenceService"]["metadata"]["name"]}
    assert "Ingress" in policy["spec"]["policyTypes"]
    admitted = admitted_ports(policy["spec"])
    assert admitted == {port["containerPort"] for port in runtime_container()["ports"]}
    assert port(parse_args(runtime_container()["args"]).health_address) not in admitted


def test_runtime_arguments_are_serve_options():
    options = parse_args(runtime_container()["args"])  # argparse exits on an option it does not know
    assert (options.rest_address, options.oip_grpc_address, options.health_address, options.threads) == (
        "0.0.0.0:8080", "0.0.0.0:8001", "0.0.0.0:8081", 4)
    ports = {port["containerPort"] for port in runtime_container()["ports"]}
    assert ports == {int(options.rest_address.rsplit(":", 1)[1]), int(options.oip_grpc_address.rsplit(":", 1)[1])}


def pod_of_runtime() -> dict:
    """The pod KServe makes of the runtime's container and the InferenceService's predictor: the runtime's volumes
    and the storage volume the InferenceService mounts, the predictor's pod settings."""
    runtime, predictor = documents()["ServingRuntime"]["spec"], documents()["InferenceService"]["spec"]["predictor"]
    container = copy.deepcopy(runtime_container())
    [storage] = predictor["storageUris"]
    container["volumeMounts"] = [*container.get("volumeMounts", []),
                                 {"name": "model", "mountPath": storage["mountPath"], "readOnly": True}]
    volumes = [*copy.deepcopy(runtime.get("volumes", [])), {"name": "model", "persistentVolumeClaim": {
        "claimName": storage["uri"].removeprefix("pvc://"), "readOnly": True}}]
    pod = {key: copy.deepcopy(predictor[key]) for key in ("securityContext", "automountServiceAccountToken")
           if key in predictor}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "bert-squad", "namespace": documents()["InferenceService"]["metadata"]["namespace"]},
        "spec": {**pod, "containers": [container], "volumes": volumes}}


def test_kubernetes_schemas_accept_the_runtime_pod_and_the_plain_manifests():
    validate = pytest.importorskip("kubernetes_validate")
    version = validate.latest_version()
    validate.validate(pod_of_runtime(), version, strict=True)
    for _, document in all_documents():
        if not document["apiVersion"].startswith("serving.kserve.io/"):  # KServe's: its models, below
            validate.validate(document, version, strict=True)
    broken = pod_of_runtime()
    broken["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    with pytest.raises(validate.ValidationError):  # the check can fail
        validate.validate(broken, version, strict=True)


def test_kserve_models_read_the_resources_back_unchanged():
    """KServe's Python models (generated from its CRDs' OpenAPI) deserialise each resource and write it back:
    an unknown or misspelt field would be dropped, a missing required one refused. In a subprocess: kserve
    registers protobuf messages that our gRPC stubs (imported by other tests) also register."""
    import importlib.util

    if importlib.util.find_spec("kserve") is None:
        pytest.skip("kserve is not installed (setup.cfg [reference], the Python 3.11 venv)")
    resources = {"V1alpha1ServingRuntime": documents()["ServingRuntime"],
                 "V1beta1InferenceService": documents()["InferenceService"]}
    done = subprocess.run([sys.executable, "-c", ROUND_TRIP], input=json.dumps(resources), capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == resources


ROUND_TRIP = r"""
import json, re, sys
import kserve
import kubernetes.client
from kserve.api_client import ApiClient

# KServe's models (kserve.models) refer to Kubernetes' (V1ObjectMeta, V1Container, ...), which its own ApiClient
# cannot find: KServe's types are read here, Kubernetes' by the Kubernetes client; KServe's writes both back.
kubernetes_client = kubernetes.client.ApiClient()

def load(data, kind):
    if hasattr(kserve.models, kind):
        model = getattr(kserve.models, kind)
        return model(**{attr: load(data[model.attribute_map[attr]], kind_of)
                        for attr, kind_of in model.openapi_types.items() if model.attribute_map[attr] in data})
    listed = re.fullmatch(r"list\[(.*)\]", kind)
    if listed:
        return [load(value, listed[1]) for value in data]
    mapped = re.fullmatch(r"dict\(str, (.*)\)", kind)
    if mapped:
        return {key: load(value, mapped[1]) for key, value in data.items()}
    return kubernetes_client._ApiClient__deserialize(data, kind)

def written(value):  # what we wrote: without the empty strings KServe's models default to (ModelSpec's name)
    if isinstance(value, dict):
        return {key: written(item) for key, item in value.items() if item != ""}
    return [written(item) for item in value] if isinstance(value, list) else value

resources = json.load(sys.stdin)
print(json.dumps({kind: written(ApiClient().sanitize_for_serialization(load(data, kind)))
                  for kind, data in resources.items()}))
"""
