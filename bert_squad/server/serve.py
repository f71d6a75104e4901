"""bert-squad-serve: run the bert_squad servable on MindSpore Serving, gRPC + REST.

It resolves the model version and starts Serving's master and workers (MindSpore Lite on CPU) in a
child process it supervises (supervisor.py: started again when it dies). gRPC goes straight to
Serving; REST, /livez, /readyz, /metrics and /openapi.json are this process's HTTP front door
(http.py), all on the REST address (127.0.0.1 unless told otherwise). Once the model answered one
warm-up question it prints a `bert-squad-serve: ready` line; SIGINT / SIGTERM drain and stop it.
MindSpore Serving writes its logs and sockets into the current directory, so the command runs in a
working directory of its own.
"""
from __future__ import annotations

import argparse
import importlib.util
import mmap
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from bert_squad import settings
from bert_squad.server import health
from bert_squad.runtimes.lite_lib import REPO_ROOT, RuntimeMissing, with_lite_on_library_path
from bert_squad.server.servable_glue import MULTIPROC_ENV, PIN_ENV, THREADS_ENV, VERSION_ENV

WARMUP_QUESTION = "Who wrote the plays?"
WARMUP_CONTEXT = "The plays were written by William Shakespeare in London."
MINDIR_GRAPH_FIELD = 7  # ModelProto.graph in MindSpore's mind_ir.proto
GRPC_FORK_ENV = "GRPC_ENABLE_FORK_SUPPORT"
EXIT_SERVING_DIED = 3  # Serving's master kept dying (a crash loop): an outer supervisor should take over


class ServeError(Exception):
    """The server cannot start; the message says why and what to do."""


def available_cpus() -> int:
    """Cores this process may use: its CPU affinity, capped by a container's CPU quota (cgroup v2).
    os.cpu_count() is the host's count even under a container CPU limit."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return cpus
    return cpus if quota == "max" else max(1, min(cpus, int(quota) // int(period)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bert-squad-serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--servable-dir", type=Path, default=REPO_ROOT / "servable",
                   help="folder holding <name>/servable_config.py and numbered version folders")
    p.add_argument("--name", default=settings.SERVABLE_NAME, help="servable name (default: %(default)s)")
    p.add_argument("--version", type=int, default=0, help="version folder to serve; 0 = newest (default)")
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
                   help="host:port for gRPC (default %(default)s; use 0.0.0.0:PORT to expose it)")
    p.add_argument("--rest-address", default=settings.DEFAULT_REST_ADDRESS,
                   help="host:port for REST, or 'off' (default %(default)s)")
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
    p.add_argument("--tls-cert", help="PEM certificate chain: serve gRPC and REST over TLS")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument("--tls-client-ca", help="PEM CA: require client certificates signed by it (mutual TLS)")
    p.add_argument("--workdir", type=Path,
                   help="where Serving writes serving_logs/ and unix_socket_files/ (default: a new temp dir)")
    p.add_argument("--warmup-timeout", type=float, default=120.0, help="seconds the warm-up question may take")
    p.add_argument("--page", choices=("on", "off"), default="on",
                   help="the try-it page at GET / of the REST address (default %(default)s)")
    p.add_argument("--page-examples", type=Path,
                   help="SQuAD v1.1 file whose first paragraphs the page offers as examples "
                        "(default: three written for the page)")
    args = p.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        p.error("--tls-client-ca needs --tls-cert and --tls-key")
    if args.threads is None:
        args.threads = max(1, available_cpus() // len([x for x in args.device_ids.split(",") if x.strip()] or [0]))
    if args.threads < 1:
        p.error("--threads must be at least 1")
    if args.health_address != "off":
        try:
            health.parse_address(args.health_address)
        except health.HealthError as e:
            p.error(str(e))
    if args.max_queued_requests < 1:
        p.error("--max-queued-requests must be at least 1")
    return args


def _has_version(root: Path) -> bool:
    return root.is_dir() and any(p.is_dir() and p.name.isdigit() and int(p.name) > 0 for p in root.iterdir())


def ensure_exported(args) -> None:
    """Export the checkpoint the user names, or the Hub checkpoint, when nothing is exported yet."""
    if _has_version(args.servable_dir / args.name) or args.version:
        return
    if importlib.util.find_spec("mindspore") is None:  # the container image serves exported models only
        raise ServeError(f"no exported model in {args.servable_dir / args.name}, and this installation has no "
                         f"MindSpore to export one: run bert-squad-export where MindSpore is installed (scripts/"
                         f"setup.sh) and mount or copy its version folder to {args.servable_dir / args.name}/1")
    from bert_squad.model.hub import DownloadError, fetch_checkpoint

    checkpoint, expected, vocab = args.checkpoint, None, args.vocab
    if checkpoint is None:
        if vocab is None:  # the Hub checkpoint ships none; it was trained with the uncased BERT-base one
            from bert_squad.model.vocab import VocabError, uncased_vocab

            try:
                vocab = uncased_vocab()
            except VocabError as e:
                raise ServeError(f"nothing is exported yet, so the MindSpore Hub checkpoint would be served, "
                                 f"but {e}") from e
            print(f"bert-squad-serve: vocabulary {vocab} (sha256 verified)", flush=True)
        print(f"bert-squad-serve: no exported model; fetching {args.hub_url}", flush=True)
        try:
            checkpoint = fetch_checkpoint(args.hub_url, args.hub_sha256, progress=_progress_bar())
        except DownloadError as e:
            raise ServeError(str(e)) from e
        expected = args.hub_sha256
    from bert_squad.model.checkpoint import CheckpointError
    from bert_squad.model.config import ConfigError, read_config_file
    from bert_squad.export.exporter import ExportError, export_version
    from bert_squad.metadata import MetadataError
    from bert_squad.runtimes import export_runtime

    log = lambda line: print(f"bert-squad-serve: {line}", flush=True)  # noqa: E731
    try:
        config = None
        if args.config:
            config, notes = read_config_file(args.config)
            for note in notes:
                log(note)
        export_version(checkpoint, args.servable_dir, name=args.name, vocab_file=vocab, config=config,
                       expected_sha256=expected, runtime=export_runtime(args.device),
                       log=log)
    except (ExportError, CheckpointError, ConfigError, MetadataError) as e:
        raise ServeError(f"cannot export {checkpoint}: {e}") from e


def _progress_bar():
    from tqdm import tqdm

    bar = tqdm(unit="B", unit_scale=True, desc="checkpoint")

    def update(done: int, total) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update


def resolve_version(servable_dir: Path, name: str, version: int) -> int:
    """The version folder to serve: the one asked for, or the newest that has metadata."""
    root = servable_dir / name
    if not (root / "servable_config.py").is_file():
        raise ServeError(f"{root / 'servable_config.py'} not found: --servable-dir must hold {name}/servable_config.py")
    versions = sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)
    if version:
        if version not in versions:
            raise ServeError(f"version {version} not found in {root} (found: {versions or 'none'})")
        chosen = version
    elif versions:
        chosen = versions[-1]
    else:
        raise ServeError(
            f"no exported model in {root}. Export one first: "
            f"bert-squad-export CHECKPOINT --servable-dir {servable_dir} --name {name}"
        )
    if not (root / str(chosen) / "metadata.json").is_file():
        raise ServeError(f"{root / str(chosen)} has no metadata.json: it was not written by bert-squad-export; "
                         f"re-export it or remove the folder")
    return chosen


def check_version_folder(folder: Path, device: str):
    """Refuse what Serving would only report as "Load model failed": bad metadata, a changed
    vocabulary (sha256 recorded at export), a missing, empty, truncated or changed model file, a
    lite_direct or openvino export (CPU only) on a GPU/Ascend device, bf16 on a CPU without bf16.
    Returns the version's Metadata."""
    from bert_squad.metadata import MetadataError, check_model_files, read_metadata
    from bert_squad.runtimes import default_runtime, get_runtime

    try:
        meta = read_metadata(folder)
    except MetadataError as e:
        raise ServeError(str(e)) from None
    if get_runtime(meta.runtime).CPU_ONLY and device != "cpu":
        raise ServeError(f"{folder} was exported with --runtime {meta.runtime}, which runs on CPU only; for "
                         f"--device {device} export a version with bert-squad-export --runtime "
                         f"{default_runtime('fp16')} --fp16")
    _check_cpu_precision(folder, meta)
    for name in meta.mindir_files:
        path = folder / name
        if not _complete_protobuf(path):
            raise ServeError(f"model file {path} ({path.stat().st_size} bytes) is truncated or corrupted: it is "
                             f"not one complete MindIR protobuf; copy it again or re-export the model")
    try:
        check_model_files(folder, meta)
    except MetadataError as e:
        raise ServeError(str(e)) from None
    return meta


def _check_cpu_precision(folder: Path, meta) -> None:
    """A bf16 export copied to a CPU without native bf16 is refused here, with what to export instead."""
    from bert_squad.runtimes import get_runtime
    from bert_squad.runtimes.cpu_features import PrecisionUnsupported, check_precision, read_flags

    if get_runtime(meta.runtime).CPU_ONLY:
        try:
            check_precision(meta.precision, read_flags())
        except PrecisionUnsupported as e:
            raise ServeError(f"{folder} holds a {meta.precision} model, but {e} (re-export with "
                             "bert-squad-export)") from None


def _complete_protobuf(path: Path) -> bool:
    """Whether the file is one protobuf whose top-level fields end exactly at its end (a cut copy's do
    not) and that holds a graph (MINDIR_GRAPH_FIELD). Reads only the field headers."""
    if path.stat().st_size == 0:
        return False
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        pos, fields = 0, set()
        try:
            while pos < len(data):
                key, pos = _varint(data, pos)
                wire_type = key & 7
                if wire_type == 0:  # varint
                    pos = _varint(data, pos)[1]
                elif wire_type == 1:  # 64-bit
                    pos += 8
                elif wire_type == 2:  # length-delimited: bytes, string, message
                    length, pos = _varint(data, pos)
                    pos += length
                    fields.add(key >> 3)
                elif wire_type == 5:  # 32-bit
                    pos += 4
                else:  # groups, unused by MindIR, or not protobuf at all
                    return False
        except IndexError:  # a varint ran past the end
            return False
        return pos == len(data) and MINDIR_GRAPH_FIELD in fields


def _varint(data, pos: int) -> "tuple[int, int]":
    """The protobuf varint at `pos` and the position after it."""
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _health_probe(args):
    """The readiness probe: the warm-up question, asked over Serving's gRPC endpoint."""
    mutual = bool(args.tls_client_ca)  # the probe then shows the server's own certificate as its client identity
    return health.grpc_probe(args.grpc_address, args.name, WARMUP_QUESTION, WARMUP_CONTEXT, tls_ca=args.tls_cert,
                             tls_cert=args.tls_cert if mutual else None, tls_key=args.tls_key if mutual else None)


def _check_addresses(args) -> None:
    """Refuse taken HTTP ports before anything starts (Serving's master binds gRPC itself and says so)."""
    from bert_squad.server.http import bind_error

    for flag, address in (("--rest-address", args.rest_address), ("--health-address", args.health_address)):
        if address != "off":
            free, reason = bind_error(address)
            if not free:
                what = "the REST, health and metrics endpoints" if flag == "--rest-address" else "the health endpoints"
                raise ServeError(f"cannot listen on {address} for {what}: {reason}; pick a free port with "
                                 f"{flag} HOST:PORT, or 'off'")


def _upstream(args, version: int):
    from bert_squad.server.http import Upstream

    read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
    mutual = bool(args.tls_client_ca)  # the front door shows the server's own certificate as its client identity
    return Upstream(target=health.loopback_target(args.grpc_address), servable=args.name, version=version,
                    max_body_bytes=args.max_message_mb << 20, timeout_s=settings.REST_TIMEOUT_S,
                    tls_ca=read(args.tls_cert), tls_cert=read(args.tls_cert) if mutual else None,
                    tls_key=read(args.tls_key) if mutual else None)


def _availability(state: health.HealthState):
    def unavailable():
        if state.phase == health.SERVING:
            return None
        return {health.STARTING: "the server is starting: the model has not answered its warm-up question yet",
                health.RESTARTING: state.restart_reason or "Serving's master is restarting",
                health.STOPPING: "the server is stopping"}[state.phase]

    return unavailable


def _master_command(args, version: int, workdir: Path) -> "list[str]":
    """The master process's command line: this command's own options, with the version and workdir resolved."""
    return [sys.executable, "-m", "bert_squad.server.master", *args.argv,
            "--servable-dir", str(args.servable_dir), "--version", str(version), "--workdir", str(workdir),
            "--threads", str(args.threads)]


def serve(args) -> int:
    args.servable_dir = args.servable_dir.resolve()
    ensure_exported(args)
    servable_dir = args.servable_dir
    version = resolve_version(servable_dir, args.name, args.version)
    meta = check_version_folder(servable_dir / args.name / str(version), args.device)
    device_ids = [int(x) for x in args.device_ids.split(",") if x.strip()]
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bert-squad-serve-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)

    env = dict(os.environ)
    if args.device == "cpu":
        env = with_lite_on_library_path(env)
    env[VERSION_ENV] = str(version)
    env[THREADS_ENV] = str(args.threads)
    # Pin each worker to cores of its own when their threads fit side by side (one worker: leave it to the OS).
    pin = len(device_ids) > 1 and len(device_ids) * args.threads <= available_cpus()
    env[PIN_ENV] = "1" if pin else "0"
    # Every process (this one, the master, the workers) records metrics into one directory (metrics.py).
    env[MULTIPROC_ENV] = str(_fresh_metrics_dir(workdir / "metrics"))
    os.environ.clear()
    os.environ.update(env)  # before prometheus_client is imported: it picks its multiprocess mode at import
    env.pop(GRPC_FORK_ENV, None)
    os.environ[GRPC_FORK_ENV] = "0"  # this process forks only to exec the master: no gRPC fork handlers (and warnings)

    from bert_squad.server import metrics, openapi
    from bert_squad.server.http import FrontDoor, HttpServer
    from bert_squad.server.supervisor import Supervisor

    _check_addresses(args)

    t0 = time.perf_counter()
    metrics.INFO.labels(version=_package_version(), servable_version=str(version), runtime=meta.runtime,
                        precision=meta.precision, model_sha256=_model_sha256(meta)).set(1)
    state = health.HealthState(_health_probe(args), settings.HEALTH_TTL_S, alive=lambda: True)

    def on_ready(warm: str) -> None:
        if state.phase == health.RESTARTING:
            print(f"bert-squad-serve: Serving's master answers again (warm-up {warm})", flush=True)
            state.set_phase(health.SERVING)

    def on_down(reason: str) -> None:
        state.set_phase(health.RESTARTING, reason)  # first: once the log says so, /readyz says so too
        print(f"bert-squad-serve: {reason}", file=sys.stderr, flush=True)

    supervisor = Supervisor(_master_command(args, version, workdir), env, on_ready, on_down)
    health_server = None
    if args.health_address != "off":
        try:
            health_server = health.start_health_server(args.health_address, None, state=state)
        except health.HealthError as e:
            raise ServeError(str(e)) from e
    page_routes = []
    if args.page == "on" and args.rest_address != "off":
        from bert_squad.server import page

        facts = {"version": version, "runtime": meta.runtime, "precision": meta.precision,
                 "model_sha256": _model_sha256(meta)}
        try:
            page_routes = page.routes(args.name, facts, args.page_examples)
        except page.ExamplesError as e:
            raise ServeError(str(e)) from None
    door = FrontDoor(_upstream(args, version), state, _availability(state),
                     lambda: openapi.document(args, meta, _package_version()), page_routes)
    http_server = None
    if args.rest_address != "off":
        http_server = HttpServer(door, args.rest_address, args.tls_cert, args.tls_key, args.tls_client_ca,
                                 drain_s=settings.DRAIN_S)
    import asyncio

    return asyncio.run(_run(args, supervisor, state, health_server, http_server, version, meta, pin, device_ids,
                            workdir, t0))


async def _run(args, supervisor, state, health_server, http_server, version, meta, pin, device_ids, workdir,
               t0) -> int:
    """Serve until SIGINT / SIGTERM or a crash loop: HTTP on this event loop, the master supervised in a thread."""
    import asyncio

    from bert_squad.server.supervisor import StartFailed

    loop = asyncio.get_running_loop()
    asked = asyncio.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, asked.set)
    http_task = asyncio.ensure_future(http_server.serve()) if http_server else None
    supervisor.start()  # /livez answers during start-up
    try:
        warm = await loop.run_in_executor(None, supervisor.wait_first_start)
    except StartFailed as e:
        await _stop_http(http_server, http_task, health_server)
        supervisor.stop()
        raise ServeError(str(e)) from None
    state.set_phase(health.SERVING)
    rest = "off" if args.rest_address == "off" else args.rest_address
    # One write, starting on a fresh line: Serving's C++ threads print to the same stdout.
    print(f"\n{health.READY_MARKER} grpc={args.grpc_address} rest={rest} servable={args.name} version={version} "
          f"precision={meta.precision} runtime={meta.runtime} device={args.device} workers={len(device_ids)} "
          f"threads={args.threads} pinned={'yes' if pin else 'no'} "
          f"health={health_server.address if health_server else 'off'} "
          f"max-queued={args.max_queued_requests} start={time.perf_counter() - t0:.1f} s warm-up={warm} "
          f"master={supervisor.process.pid} logs={workdir / 'serving_logs'}", flush=True)
    finished = loop.run_in_executor(None, supervisor.finished.wait)
    await asyncio.wait([asyncio.ensure_future(asked.wait()), finished], return_when=asyncio.FIRST_COMPLETED)
    state.set_phase(health.STOPPING)  # /readyz 503 and new REST requests 503 at once, so balancers drain us
    await _stop_http(http_server, http_task, health_server)  # in-flight REST requests finish first
    await loop.run_in_executor(None, supervisor.stop)
    if supervisor.fatal:
        print(f"bert-squad-serve: error: {supervisor.fatal} (see {workdir / 'serving_logs'}); exiting with "
              f"{EXIT_SERVING_DIED} so that a supervisor (systemd Restart=on-failure, a container restart policy) "
              f"starts the server again", file=sys.stderr, flush=True)
        return EXIT_SERVING_DIED
    print("bert-squad-serve: stopped", flush=True)
    return 0


async def _stop_http(http_server, http_task, health_server) -> None:
    if http_server:
        http_server.stop()
        await http_task
    if health_server:
        health_server.stop()


def _fresh_metrics_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.db"):  # an earlier run's counts would be summed in
        old.unlink()
    return directory


def _model_sha256(meta) -> str:
    """The model's identity: the sha256 recorded at export of its one model file; over several files, the
    sha256 of their sorted "name sha256" lines; "unknown" for versions exported before hashes were recorded."""
    hashes = meta.model_sha256
    if len(hashes) == 1:
        return next(iter(hashes.values()))
    if not hashes:
        return "unknown"
    import hashlib

    return hashlib.sha256("\n".join(f"{n} {h}" for n, h in sorted(hashes.items())).encode()).hexdigest()


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bert-squad")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # handed on to the master process
    try:
        return serve(args)
    except (ServeError, RuntimeMissing) as e:
        print(f"bert-squad-serve: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
