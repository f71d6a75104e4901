"""bert-squad-serve: the serve process's wiring and lifecycle.

It resolves the model version (versions.py; exporting one first when there is none, first_export.py) and
starts Serving's master and workers (MindSpore Lite on CPU) in a child process it supervises
(master.py, supervisor.py: started again when it dies). gRPC goes straight to Serving; REST (MindSpore Serving's
and the Open Inference Protocol's /v2), /livez, /readyz, /metrics and /openapi.json are this process's HTTP front
door (http.py), all on the REST address (127.0.0.1 unless told otherwise), /livez and /readyz alone on
--health-address, and the Open Inference Protocol's gRPC service (oip/servicer.py) on --oip-grpc-address, all on
one event loop. Once the model answered one warm-up question it prints a `bert-squad-serve: ready` line; SIGINT /
SIGTERM drain and stop it. MindSpore Serving writes its logs and sockets into the current directory, so the
command runs in a working directory of its own.
The options are in options.py, what the processes hand each other in contract.py.
"""
from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from bert_squad import settings, versions
from bert_squad.runtimes.lite_lib import RuntimeMissing, with_lite_on_library_path
from bert_squad.server import access, health
from bert_squad.server.access import say
from bert_squad.server.contract import (EXIT_SERVING_DIED, EXIT_START_FAILED, MULTIPROC_ENV, PIN_ENV, THREADS_ENV,
                                        VERSION_ENV)
from bert_squad.server.first_export import ensure_exported
from bert_squad.server.options import ServeError, parse_args
from bert_squad.server.processes import available_cpus

GRPC_FORK_ENV = "GRPC_ENABLE_FORK_SUPPORT"


def _health_probe(args):
    """The readiness probe: the warm-up question, asked over Serving's gRPC endpoint."""
    mutual = bool(args.tls_client_ca)  # the probe then shows the server's own certificate as its client identity
    return health.grpc_probe(args.grpc_address, args.name, tls_ca=args.tls_cert,
                             tls_cert=args.tls_cert if mutual else None, tls_key=args.tls_key if mutual else None)


def _check_addresses(args) -> None:
    """Refuse taken HTTP ports before anything starts (Serving's master binds gRPC itself and says so)."""
    from bert_squad.server.http import bind_error

    what = {"--rest-address": "the REST, health and metrics endpoints", "--health-address": "the health endpoints",
            "--oip-grpc-address": "the Open Inference Protocol's gRPC service"}
    for flag, address in (("--rest-address", args.rest_address), ("--health-address", args.health_address),
                          ("--oip-grpc-address", args.oip_grpc_address)):
        if address != "off":
            free, reason = bind_error(address)
            if not free:
                raise ServeError(f"cannot listen on {address} for {what[flag]}: {reason}; pick a free port with "
                                 f"{flag} HOST:PORT, or 'off'")


def _upstream(args, version: int):
    from bert_squad.server.http import Upstream

    read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
    mutual = bool(args.tls_client_ca)  # the front door shows the server's own certificate as its client identity
    return Upstream(target=health.loopback_target(args.grpc_address), servable=args.name, version=version,
                    max_body_bytes=args.max_message_mb << 20, timeout_s=settings.REST_TIMEOUT_S,
                    tls_ca=read(args.tls_cert), tls_cert=read(args.tls_cert) if mutual else None,
                    tls_key=read(args.tls_key) if mutual else None)


def _master_command(args, version: int, workdir: Path) -> "list[str]":
    """The master process's command line: this command's own options, with the version and workdir resolved."""
    return [sys.executable, "-m", "bert_squad.server.master", *args.argv,
            "--servable-dir", str(args.servable_dir), "--version", str(version), "--workdir", str(workdir),
            "--threads", str(args.threads)]


def serve(args) -> int:
    args.servable_dir = args.servable_dir.resolve()
    ensure_exported(args)
    servable_dir = args.servable_dir
    version = versions.resolve(servable_dir, args.name, args.version)
    meta = versions.verify(servable_dir / args.name / str(version), args.device)
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
    from bert_squad.server.http import FrontDoor, HttpServer, health_app, with_cors
    from bert_squad.server.supervisor import Supervisor

    _check_addresses(args)

    t0 = time.perf_counter()
    metrics.INFO.labels(version=_package_version(), servable_version=str(version), runtime=meta.runtime,
                        precision=meta.precision, model_sha256=versions.model_identity(meta)).set(1)
    state = health.HealthState(_health_probe(args), settings.HEALTH_TTL_S, alive=lambda: True)

    def on_ready(warm: str) -> None:
        if state.phase == health.RESTARTING:
            say(f"bert-squad-serve: Serving's master answers again (warm-up {warm})")
            state.set_phase(health.SERVING)

    def on_down(reason: str) -> None:
        state.set_phase(health.RESTARTING, reason)  # first: once the log says so, /readyz says so too
        say(f"bert-squad-serve: {reason}", error=True)

    supervisor = Supervisor(_master_command(args, version, workdir), env, on_ready, on_down)
    health_server = None
    if args.health_address != "off":  # the health routes alone, on a listener of their own
        health_server = HttpServer(health_app(state), args.health_address, drain_s=settings.DRAIN_S)
    page_routes = []
    if args.page == "on" and args.rest_address != "off":
        from bert_squad.server import api_docs, page

        facts = {"version": version, "runtime": meta.runtime, "precision": meta.precision,
                 "model_sha256": versions.model_identity(meta)}
        try:
            page_routes = page.routes(args.name, facts, args.page_examples) + api_docs.routes(args.name)
        except page.ExamplesError as e:
            raise ServeError(str(e)) from None
    door = FrontDoor(_upstream(args, version), state, state.unavailable,
                     lambda: openapi.document(args, meta, version, _package_version()), page_routes,
                     _package_version())
    http_server = None
    if args.rest_address != "off":
        http_server = HttpServer(with_cors(door.app, args.cors_allow_origin), args.rest_address, args.tls_cert,
                                 args.tls_key, args.tls_client_ca, drain_s=settings.DRAIN_S)
    import asyncio

    return asyncio.run(_run(args, supervisor, state, door, health_server, http_server, version, meta, pin,
                            device_ids, workdir, t0))


async def _start_oip_grpc(args, door):
    """The OIP gRPC service on --oip-grpc-address, asking through the front door; None when off."""
    if args.oip_grpc_address == "off":
        return None
    from bert_squad.server import metrics
    from bert_squad.server.oip.servicer import InferenceServicer, start_server

    read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
    servicer = InferenceServicer(door.oip_models, door.served, door.package_version, door.ask, door.is_live,
                                 door.is_ready, metrics.Meter("oip_grpc"))
    try:
        server, _ = await start_server(servicer, args.oip_grpc_address, args.max_message_mb << 20,
                                       read(args.tls_cert), read(args.tls_key), read(args.tls_client_ca))
    except OSError as e:
        raise ServeError(f"{e} for the Open Inference Protocol's gRPC service; pick a free port with "
                         f"--oip-grpc-address HOST:PORT, or 'off'") from None
    return server


async def _run(args, supervisor, state, door, health_server, http_server, version, meta, pin, device_ids, workdir,
               t0) -> int:
    """Serve until SIGINT / SIGTERM or a crash loop: HTTP on this event loop, the master supervised in a thread."""
    import asyncio

    from bert_squad.server.supervisor import StartFailed

    loop = asyncio.get_running_loop()
    asked = asyncio.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, asked.set)
    # REST first: on the way out it drains while the health listener still says "not ready"
    listeners = [(server, asyncio.ensure_future(server.serve())) for server in (http_server, health_server) if server]
    try:
        oip_grpc = await _start_oip_grpc(args, door)
    except ServeError:
        await _stop_listeners(listeners, None, door)
        raise
    supervisor.start()  # /livez answers during start-up
    try:
        warm = await loop.run_in_executor(None, supervisor.wait_first_start)
    except StartFailed as e:
        await _stop_listeners(listeners, oip_grpc, door)
        supervisor.stop()
        raise ServeError(str(e)) from None
    state.set_phase(health.SERVING)
    rest = "off" if args.rest_address == "off" else args.rest_address
    # One write, starting on a fresh line: Serving's C++ threads print to the same stdout.
    say(f"{health.READY_MARKER} grpc={args.grpc_address} rest={rest} oip-grpc={args.oip_grpc_address} "
        f"servable={args.name} version={version} precision={meta.precision} runtime={meta.runtime} "
        f"device={args.device} workers={len(device_ids)} threads={args.threads} pinned={'yes' if pin else 'no'} "
        f"health={health_server.address if health_server else 'off'} "
        f"max-queued={args.max_queued_requests} start={time.perf_counter() - t0:.1f} s warm-up={warm} "
        f"master={supervisor.process.pid} logs={workdir / 'serving_logs'}", fresh_line=True)
    finished = loop.run_in_executor(None, supervisor.finished.wait)
    await asyncio.wait([asyncio.ensure_future(asked.wait()), finished], return_when=asyncio.FIRST_COMPLETED)
    state.set_phase(health.STOPPING)  # /readyz 503 and new requests 503 at once, so balancers drain us
    await _stop_listeners(listeners, oip_grpc, door)  # in-flight REST and OIP gRPC requests finish first
    await loop.run_in_executor(None, supervisor.stop)
    if supervisor.fatal:
        say(f"bert-squad-serve: error: {supervisor.fatal} (see {workdir / 'serving_logs'}); exiting with "
            f"{EXIT_SERVING_DIED} so that a supervisor (systemd Restart=on-failure, a container restart policy) "
            f"starts the server again", error=True)
        return EXIT_SERVING_DIED
    say("bert-squad-serve: stopped")
    return 0


async def _stop_listeners(listeners, oip_grpc, door) -> None:
    """Stop taking requests, let those in flight finish (up to the drain time), then close the channel to Serving."""
    import asyncio

    stopping = [asyncio.ensure_future(oip_grpc.stop(settings.DRAIN_S))] if oip_grpc else []
    for server, task in listeners:
        server.stop()
        await task
    await asyncio.gather(*stopping)
    await door.close()


def _fresh_metrics_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.db"):  # an earlier run's counts would be summed in
        old.unlink()
    return directory


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bert-squad")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # handed on to the master process
    access.configure(args.log_format)
    try:
        return serve(args)
    except (ServeError, versions.VersionError, RuntimeMissing) as e:
        print(f"bert-squad-serve: error: {e}", file=sys.stderr)
        return EXIT_START_FAILED


if __name__ == "__main__":
    sys.exit(main())
