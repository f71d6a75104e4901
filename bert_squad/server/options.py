"""bert-squad-serve: serve the bert_squad servable on MindSpore Serving behind one front door (gRPC, REST, OIP).

The serve command's options, their defaults and checks, and its error: read by the serve process (serve.py)
and again by the master process it starts (master.py gets the same command line).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from bert_squad import settings, versions
from bert_squad.runtimes.lite_lib import REPO_ROOT
from bert_squad.front import health
from bert_squad.server import serving_python
from bert_squad.contract.logs import LOG_FORMATS
from bert_squad.front.access import ACCESS_LOG
from bert_squad.contract.processes import available_cpus


class ServeError(Exception):
    """The server cannot start; the message says why and what to do."""


ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+")  # a browser's Origin header: scheme, host, optional port


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bert-squad-serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--servable-dir", type=Path, default=REPO_ROOT / "servable",
                   help="folder holding <name>/servable_config.py and numbered version folders")
    p.add_argument("--name", default=settings.SERVABLE_NAME, help="servable name (default: %(default)s)")
    p.add_argument("--version", type=int, default=0,
                   help="version folder to serve, the same as --version-policy specific:N; 0 = the policy's (default)")
    p.add_argument("--version-policy", default=versions.LATEST, metavar="latest|specific:N",
                   help="which version folder to serve: the newest, switched to when a newer one is found, or one "
                        "number (default %(default)s)")
    p.add_argument("--poll-seconds", type=float, default=0, metavar="S",
                   help="look for a new version every S seconds and switch to it without downtime (default 0: only "
                        "on SIGHUP or POST /v2/repository/models/<model>/load; a switch needs memory for two "
                        "versions, so polling is opted into)")
    p.add_argument("--smoke-file", type=Path, metavar="SQUAD.json",
                   help="a few SQuAD v1.1 questions with gold answers that a version must answer (F1 at least "
                        "--smoke-min-f1) before it takes traffic, at start and at every switch (default: none)")
    p.add_argument("--smoke-min-f1", type=float, default=50.0,
                   help="the F1 (0-100) a version must reach on --smoke-file (default %(default)s)")
    p.add_argument("--switch-headroom-mb", type=int, default=256,
                   help="memory to keep free, beyond the running version's resident memory, before a second version "
                        "is started for a switch (default %(default)s MB)")
    p.add_argument("--checkpoint", type=Path,
                   help="used only when no version is exported yet: a zoo .ckpt or a Hugging Face folder to "
                        "export first (default: download the MindSpore Hub SQuAD checkpoint)")
    p.add_argument("--vocab", type=Path, help="vocab.txt for a zoo .ckpt (default for the Hub checkpoint: the "
                                              "verified uncased BERT-base vocabulary that scripts/setup.sh installs)")
    p.add_argument("--config", type=Path, help="config of a zoo .ckpt that is not BERT-base: the zoo's "
                                               "task_squad_config.yaml, or JSON (see bert-squad-export --config)")
    p.add_argument("--hub-url", default=settings.HUB_CHECKPOINT_URL,
                   help="where to download the Hub checkpoint from (a mirror; default: the MindSpore Hub)")
    p.add_argument("--hub-sha256", default=settings.HUB_CHECKPOINT_SHA256,
                   help="sha256 the downloaded checkpoint must have (default: the Hub file's)")
    p.add_argument("--grpc-address", default=settings.DEFAULT_GRPC_ADDRESS,
                   help="host:port for MindSpore Serving's gRPC API (MSService), or 'off' (default %(default)s; "
                        "use 0.0.0.0:PORT to expose it)")
    p.add_argument("--rest-address", default=settings.DEFAULT_REST_ADDRESS,
                   help="host:port for REST, or 'off' (default %(default)s)")
    p.add_argument("--oip-grpc-address", default=settings.DEFAULT_OIP_GRPC_ADDRESS,
                   help="host:port for the Open Inference Protocol (KServe v2) over gRPC, or 'off' "
                        "(default %(default)s); OIP over REST is on --rest-address under /v2")
    p.add_argument("--device", choices=("cpu", "gpu", "ascend"), default="cpu",
                   help="cpu runs through MindSpore Lite; gpu/ascend through MindSpore (untested here)")
    p.add_argument("--device-ids", default="0",
                   help="comma-separated device ids; on cpu each id is one more worker process")
    p.add_argument("--threads", type=int,
                   help="inference threads per worker (default: the cores this process may use, "
                        f"{available_cpus()}, divided among the workers)")
    p.add_argument("--python-workers", type=int, default=0,
                   help="extra processes for the tokenize / decode stages (default 0: in the worker)")
    p.add_argument("--health-address", default=settings.DEFAULT_HEALTH_ADDRESS,
                   help="host:port for the HTTP health endpoints GET /livez and GET /readyz, or 'off' "
                        "(default %(default)s)")
    p.add_argument("--max-message-mb", type=int, default=settings.MAX_MESSAGE_MB,
                   help="largest request accepted, gRPC and REST (default %(default)s MB)")
    p.add_argument("--max-queued-requests", type=int, default=settings.MAX_QUEUED_REQUESTS,
                   help="requests received and not yet answered, past which Serving refuses new ones at once "
                        "('enqueued requests count exceeds the limit'; clients retry later) (default %(default)s)")
    p.add_argument("--grpc-max-streams", type=int, default=settings.GRPC_MAX_STREAMS, metavar="N",
                   help="concurrent calls one HTTP/2 connection may have open on the gRPC ports (default %(default)s)")
    p.add_argument("--grpc-max-metadata-kb", type=int, default=settings.GRPC_MAX_METADATA_KB, metavar="KB",
                   help="largest metadata (headers) of a gRPC call; larger ones are refused (default %(default)s KB)")
    p.add_argument("--grpc-max-connection-age-s", type=float, default=settings.GRPC_MAX_CONNECTION_AGE_S,
                   metavar="S", help="a gRPC connection is asked to go (GOAWAY) after S seconds, its calls given "
                                     f"{settings.REST_TIMEOUT_S:g} s to finish; clients reconnect (0 = never; default "
                                     "%(default)s)")
    p.add_argument("--grpc-max-connection-idle-s", type=float, default=settings.GRPC_MAX_CONNECTION_IDLE_S,
                   metavar="S", help="a gRPC connection without calls for S seconds is closed (0 = never; default "
                                     "%(default)s)")
    p.add_argument("--grpc-min-ping-interval-s", type=float, default=settings.GRPC_MIN_PING_INTERVAL_S, metavar="S",
                   help="a client pinging a gRPC port sooner than every S seconds without data, more than twice, "
                        "is disconnected (GOAWAY too_many_pings) (default %(default)s)")
    p.add_argument("--http-max-connections", type=int, default=settings.HTTP_MAX_CONNECTIONS, metavar="N",
                   help="open connections each HTTP listener (REST, health) holds; more are answered 503 and closed "
                        "(default %(default)s)")
    p.add_argument("--http-max-header-kb", type=int, default=settings.HTTP_MAX_HEADER_KB, metavar="KB",
                   help="largest request line and headers of an HTTP request; larger ones get 431 (default "
                        "%(default)s KB)")
    p.add_argument("--http-header-timeout-s", type=float, default=settings.HTTP_HEADER_TIMEOUT_S, metavar="S",
                   help="time a client has to send a request's headers, from connecting or from the previous "
                        "response; past it 408 and the connection closed (default %(default)s)")
    p.add_argument("--http-body-timeout-s", type=float, default=settings.HTTP_BODY_TIMEOUT_S, metavar="S",
                   help="longest pause inside a request body; past it 408 and the connection closed (default "
                        "%(default)s)")
    p.add_argument("--http-keep-alive-s", type=int, default=settings.HTTP_KEEP_ALIVE_S, metavar="S",
                   help="an idle keep-alive HTTP connection is closed after S seconds (default %(default)s)")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve gRPC, OIP gRPC and REST over TLS")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument("--tls-client-ca", help="PEM CA: require client certificates signed by it (mutual TLS)")
    p.add_argument("--serving-python", type=Path, default=serving_python.default(), metavar="PATH",
                   help="the Python 3.9 with mindspore-serving that runs Serving's master and workers and the export "
                        f"on first start, behind the internal socket (default: ${serving_python.SERVING_PYTHON_ENV}, "
                        "else the venv scripts/setup.sh builds)")
    p.add_argument("--workdir", type=Path,
                   help="where Serving writes serving_logs/ and unix_socket_files/ (default: a new temp dir)")
    p.add_argument("--warmup-timeout", type=float, default=120.0, help="seconds the warm-up question may take")
    p.add_argument("--page", choices=("on", "off"), default="on",
                   help="the try-it page at GET / of the REST address (default %(default)s)")
    p.add_argument("--page-examples", type=Path,
                   help="SQuAD v1.1 file whose first paragraphs the page offers as examples "
                        "(default: three written for the page)")
    p.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                   help="the serve command's lines and one access line per request on stdout: text, or one JSON "
                        "object per line (default %(default)s)")
    p.add_argument("--log-request-text", action="store_true",
                   help="put each request's questions and contexts in its access line (off by default: they may be "
                        "private)")
    p.add_argument("--access-log", choices=ACCESS_LOG, default="on",
                   help="one line per request (see --log-format); off saves its cost on the hot path "
                        "(default %(default)s)")
    p.add_argument("--cors-allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages served from ORIGIN (scheme://host[:port], or * for any) call the REST "
                        "address from a browser; repeatable (default: no CORS headers)")
    p.add_argument("--api-key-file", type=Path, metavar="PATH",
                   help="require 'Authorization: Bearer KEY' (gRPC: authorization metadata) with one of this file's "
                        "keys, one per line, on every endpoint but the health probes; re-read on SIGHUP "
                        "(default: no keys)")
    args = p.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        p.error("--tls-client-ca needs --tls-cert and --tls-key")
    if args.threads is None:
        args.threads = max(1, available_cpus() // len([x for x in args.device_ids.split(",") if x.strip()] or [0]))
    if args.threads < 1:
        p.error("--threads must be at least 1")
    for flag, address in (("--grpc-address", args.grpc_address), ("--health-address", args.health_address),
                          ("--oip-grpc-address", args.oip_grpc_address)):
        if address != "off":
            try:
                health.parse_address(address)
            except health.HealthError as e:
                p.error(f"{flag}: {e}")
    for flag in ("grpc_max_streams", "grpc_max_metadata_kb", "http_max_connections", "http_max_header_kb",
                 "http_keep_alive_s"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    for flag in ("grpc_max_connection_age_s", "grpc_max_connection_idle_s", "grpc_min_ping_interval_s"):
        if getattr(args, flag) < 0:
            p.error(f"--{flag.replace('_', '-')} must be 0 or more")
    for flag in ("http_header_timeout_s", "http_body_timeout_s"):
        if getattr(args, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be more than 0")
    if args.poll_seconds < 0:
        p.error("--poll-seconds must be 0 (off) or more")
    if args.switch_headroom_mb < 0:
        p.error("--switch-headroom-mb must be 0 or more")
    try:
        versions.Policy.parse(args.version_policy)
    except ValueError as e:
        p.error(f"--version-policy: {e}")
    if args.max_queued_requests < 1:
        p.error("--max-queued-requests must be at least 1")
    if args.api_key_file and "*" in args.cors_allow_origin:
        p.error("--cors-allow-origin * lets any web page call the server; with --api-key-file name the origins "
                "allowed (scheme://host[:port])")
    for origin in args.cors_allow_origin:
        if origin != "*" and not ORIGIN.fullmatch(origin):
            p.error(f"--cors-allow-origin: {origin!r} is not an origin; give scheme://host[:port] with no path "
                    f"(for example https://qa.example.com), or * for any")
    return args
