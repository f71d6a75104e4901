"""Security: no pickle on loading paths, loopback by default, TLS and mutual TLS end to end
(certificates made here with the openssl CLI), explicit request size limits."""
import http.client
import ipaddress
import json
import re
import shutil
import ssl
import subprocess
from pathlib import Path

import grpc
import pytest

import wire
from bert_squad import settings
from harness import FRONT, REPO, Server, make_tls, new_servable_dir

QUESTION = {"question": "Which capital?", "context": "The city of Paris is the capital of France, they say."}
ANSWER = "Paris is the capital of France"
LOADING_CODE = [REPO / "bert_squad", REPO / "export", REPO / "servable"]
# np.load is safe unless allow_pickle=True (numpy >= 1.16.3 refuses object arrays by default).
UNSAFE = re.compile(r"\bc?[pP]ickle\b|torch\.load|allow_pickle\s*=\s*True|\bjoblib\b|\bdill\b|yaml\.load\(|"
                    r"\bmarshal\.loads?\(|\bshelve\b")


def test_no_loading_code_can_unpickle():
    """Weak on its own (a grep), so the next test proves the behaviour."""
    hits = [f"{path.relative_to(REPO)}:{n}: {line.strip()}" for folder in LOADING_CODE for path in folder.rglob("*.py")
            for n, line in enumerate(path.read_text().splitlines(), 1)
            if UNSAFE.search(line) and not line.lstrip().startswith("#") and "refused" not in line]
    assert hits == []


class _Trap:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # unpickling this creates the marker file
        return (open, (str(self.marker), "w"))


def test_a_pickled_pytorch_checkpoint_is_refused_unread_by_the_serve_command(tmp_path):
    import pickle

    model = tmp_path / "hf-model"
    model.mkdir()
    marker = tmp_path / "unpickled"
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    config = {"model_type": "bert", "architectures": ["BertForQuestionAnswering"]}
    (model / "config.json").write_text(json.dumps(config))
    servable = new_servable_dir(tmp_path / "servable") / "bert_squad"
    done = subprocess.run([str(FRONT), "-m", "bert_squad.server.serve", "--servable-dir", str(servable.parent),
                           "--checkpoint", str(model), "--workdir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert f"{model / 'pytorch_model.bin'} is a pickled PyTorch file" in done.stderr and "safetensors" in done.stderr
    assert not marker.exists(), "the checkpoint was unpickled"


# ---------------------------------------------------------------- where the server listens

def test_the_serve_command_binds_loopback_unless_told_otherwise():
    from bert_squad.server.options import parse_args

    args = parse_args([])
    assert args.grpc_address.startswith("127.0.0.1:") and args.rest_address.startswith("127.0.0.1:")
    assert (args.grpc_address, args.rest_address) == (settings.DEFAULT_GRPC_ADDRESS, settings.DEFAULT_REST_ADDRESS)


@pytest.mark.parametrize("origins, refused", [
    (["https://qa.example.com", "http://127.0.0.1:8000", "*"], None),
    (["https://qa.example.com/page"], "'https://qa.example.com/page' is not an origin"),
    (["qa.example.com"], "'qa.example.com' is not an origin"),
])
def test_cors_origins_are_checked_at_start_and_off_by_default(origins, refused, capsys):
    from bert_squad.server.options import parse_args

    assert parse_args([]).cors_allow_origin == []
    argv = [arg for origin in origins for arg in ("--cors-allow-origin", origin)]
    if refused is None:
        assert parse_args(argv).cors_allow_origin == origins
        return
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2 and refused in capsys.readouterr().err


def listening_tcp(pids) -> set:
    """(ip, port) of the TCP sockets the processes listen on, from /proc (IPv4 and IPv6; an IPv4-mapped
    IPv6 address is given as IPv4)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = fd.readlink() if hasattr(fd, "readlink") else Path(str(fd.resolve()))
            except OSError:
                continue
            match = re.fullmatch(r"socket:\[(\d+)\]", str(target))
            if match:
                inodes.add(match.group(1))
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pids[0]}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                # /proc prints each 32-bit word of the address in host (little-endian) byte order
                raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, len(address), 8))
                ip = ipaddress.ip_address(raw)
                ip = getattr(ip, "ipv4_mapped", None) or ip
                found.add((str(ip), int(port, 16)))
    return found


def test_a_running_server_listens_on_loopback_only(oracle_server):
    pids = [oracle_server.process.pid, oracle_server.master_pid(), *oracle_server.worker_pids()]
    expected = {("127.0.0.1", int(a.rsplit(":", 1)[1])) for a in (oracle_server.grpc_address,
                                                                   oracle_server.rest_address,
                                                                   oracle_server.health_address,
                                                                   oracle_server.oip_grpc_address)}
    assert listening_tcp(pids) == expected
    # every public port is the front door's: the master and its workers talk over unix sockets in the workdir
    assert listening_tcp(pids[1:]) == set()


# ---------------------------------------------------------------- TLS

@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.fail("the openssl command is needed to make test certificates")
    return make_tls(tmp_path_factory.mktemp("certs"))


def tls_server(oracle_servable, tmp_path, certificates, mutual: bool) -> Server:
    args = ["--tls-cert", certificates["server_cert"], "--tls-key", certificates["server_key"]]
    if mutual:
        args += ["--tls-client-ca", certificates["ca"]]
    return Server(tmp_path, oracle_servable["servable_dir"], extra_args=args)


def grpc_credentials(certificates, with_client_certificate: bool):
    read = lambda key: Path(certificates[key]).read_bytes()  # noqa: E731
    if with_client_certificate:
        return grpc.ssl_channel_credentials(read("ca"), read("client_key"), read("client_cert"))
    return grpc.ssl_channel_credentials(read("ca"))


def https_context(certificates, with_client_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certificates["ca"])
    if with_client_certificate:
        context.load_cert_chain(certificates["client_cert"], certificates["client_key"])
    return context


def ask_grpc(server, credentials):
    return wire.grpc_predict(server.grpc_address, "predict", [QUESTION], timeout=20, credentials=credentials)


def ask_rest(server, context, scheme="https"):
    return wire.rest_predict(server.rest_address, "predict", {"instances": [QUESTION]}, timeout=20, scheme=scheme,
                             context=context)


def ask_oip_grpc(server, credentials=None):
    """The question over the Open Inference Protocol's gRPC service (our stubs): the answer."""
    from bert_squad.front.oip.stubs import pb, pb_grpc

    request = pb.ModelInferRequest(model_name="bert_squad", outputs=[
        pb.ModelInferRequest.InferRequestedOutputTensor(name="answer")])
    for name in ("question", "context"):
        request.inputs.add(name=name, datatype="BYTES", shape=[1]).contents.bytes_contents.append(
            QUESTION[name].encode())
    channel = (grpc.secure_channel(server.oip_grpc_address, credentials) if credentials
               else grpc.insecure_channel(server.oip_grpc_address))
    with channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=20)
    return reply.raw_output_contents[0][4:].decode()  # one BYTES element: 4-byte length, then the text


def test_tls_serves_grpc_and_rest_and_refuses_plain_text(oracle_servable, tmp_path, certificates):
    with tls_server(oracle_servable, tmp_path, certificates, mutual=False) as server:
        assert ask_grpc(server, grpc_credentials(certificates, False))[0]["answer"] == ANSWER
        assert ask_rest(server, https_context(certificates, False))[0]["answer"] == ANSWER
        assert ask_oip_grpc(server, grpc_credentials(certificates, False)) == ANSWER
        with pytest.raises(grpc.RpcError) as plain:
            wire.grpc_predict(server.grpc_address, "predict", [QUESTION], timeout=10)
        assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as plain_oip:
            ask_oip_grpc(server)
        assert plain_oip.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            ask_rest(server, None, scheme="http")
        with pytest.raises(ssl.SSLCertVerificationError):
            ask_rest(server, ssl.create_default_context())  # a client that does not trust the test CA


def test_mutual_tls_answers_a_client_certificate_and_rejects_a_client_without_one(oracle_servable, tmp_path,
                                                                                  certificates):
    with tls_server(oracle_servable, tmp_path, certificates, mutual=True) as server:
        assert ask_grpc(server, grpc_credentials(certificates, True))[0]["answer"] == ANSWER
        assert ask_rest(server, https_context(certificates, True))[0]["answer"] == ANSWER
        assert ask_oip_grpc(server, grpc_credentials(certificates, True)) == ANSWER
        with pytest.raises(grpc.RpcError) as anonymous:
            ask_grpc(server, grpc_credentials(certificates, False))
        assert anonymous.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as anonymous_oip:
            ask_oip_grpc(server, grpc_credentials(certificates, False))
        assert anonymous_oip.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises((ssl.SSLError, ConnectionError)):
            ask_rest(server, https_context(certificates, False))


def test_a_client_certificate_from_another_ca_is_rejected(oracle_servable, tmp_path, certificates):
    stranger = make_tls(tmp_path / "stranger")
    with tls_server(oracle_servable, tmp_path / "run", certificates, mutual=True) as server:
        read = lambda f: Path(f).read_bytes()  # noqa: E731
        credentials = grpc.ssl_channel_credentials(read(certificates["ca"]), read(stranger["client_key"]),
                                                   read(stranger["client_cert"]))
        with pytest.raises(grpc.RpcError):
            ask_grpc(server, credentials)
        context = ssl.create_default_context(cafile=certificates["ca"])
        context.load_cert_chain(stranger["client_cert"], stranger["client_key"])
        with pytest.raises((ssl.SSLError, ConnectionError)):
            ask_rest(server, context)


# ---------------------------------------------------------------- request size limits

def test_requests_over_the_size_limit_are_refused_and_the_limit_is_documented(oracle_servable, tmp_path):
    from bert_squad.server.options import parse_args

    assert parse_args([]).max_message_mb == settings.MAX_MESSAGE_MB
    help_text = " ".join(subprocess.run([str(FRONT), "-m", "bert_squad.server.serve", "--help"], capture_output=True,
                                        text=True, timeout=60).stdout.split())
    assert "--max-message-mb" in help_text and f"default {settings.MAX_MESSAGE_MB} MB" in help_text
    assert "--max-queued-requests" in help_text

    big = [dict(QUESTION, context=QUESTION["context"] + " filler" * 9_000) for _ in range(40)]  # ~2 MB
    small = [QUESTION] * 3
    with Server(tmp_path, oracle_servable["servable_dir"], extra_args=["--max-message-mb", "1"]) as server:
        assert [r["answer"] for r in wire.grpc_predict(server.grpc_address, "predict", small)] == [ANSWER] * 3
        with pytest.raises(grpc.RpcError) as refused:
            wire.grpc_predict(server.grpc_address, "predict", big)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in refused.value.details()
        status, reply = wire.rest_refusal(server.rest_address, "predict", {"instances": big})
        assert status == 413 and "is larger than the limit of 1048576 bytes (--max-message-mb)" in reply
        assert [r["answer"] for r in wire.rest_predict(server.rest_address, "predict", {"instances": small})] == \
            [ANSWER] * 3
