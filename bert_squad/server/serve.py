"""bert-squad-serve: the serve process's wiring and lifecycle.

It resolves the model version (versions.py; exporting one first when there is none, first_export.py) and
starts Serving's master and workers (MindSpore Lite on CPU) in a child process it supervises
(master.py, supervisor.py: started again when it dies); versions_live.py switches to a new version without downtime
(--version-policy, --poll-seconds, SIGHUP, the OIP repository load). The master listens only on an internal unix
socket; every public port is this process's front door, on one event loop: MindSpore Serving's gRPC API on
--grpc-address
(serving_grpc.py, forwarded byte for byte), REST (MindSpore Serving's and the Open Inference Protocol's /v2),
/livez, /readyz, /metrics and /openapi.json on the REST address (http.py), /livez and /readyz alone on
--health-address, and the Open Inference Protocol's gRPC service (oip/servicer.py) on --oip-grpc-address (all
127.0.0.1 unless told otherwise). Once the model answered one warm-up question it prints a `bert-squad-serve:
ready` line; SIGINT / SIGTERM drain and stop it. MindSpore Serving writes its logs and sockets into the current
directory, so the command runs in a working directory of its own.
The options are in options.py, what the processes hand each other in contract.py.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from bert_squad import settings, versions
from bert_squad.runtimes.lite_lib import RuntimeMissing, with_lite_on_library_path
from bert_squad.front import access, health
from bert_squad.contract.logs import say
from bert_squad.contract import EXIT_SERVING_DIED, EXIT_START_FAILED, MULTIPROC_ENV, PIN_ENV, THREADS_ENV
from bert_squad.server.first_export import export_first
from bert_squad.server.options import ServeError, parse_args
from bert_squad.contract.processes import available_cpus

GRPC_FORK_ENV = "GRPC_ENABLE_FORK_SUPPORT"


def _check_addresses(args) -> None:
    """Refuse taken ports before anything starts."""
    from bert_squad.front.http import bind_error

    what = {"--grpc-address": "MindSpore Serving's gRPC API", "--rest-address": "the REST, health and metrics endpoints",
            "--health-address": "the health endpoints",
            "--oip-grpc-address": "the Open Inference Protocol's gRPC service"}
    for flag in what:
        address = getattr(args, flag[2:].replace("-", "_"))
        if address != "off":
            free, reason = bind_error(address)
            if not free:
                raise ServeError(f"cannot listen on {address} for {what[flag]}: {reason}; pick a free port with "
                                 f"{flag} HOST:PORT, or 'off'")


def _open_file_limit() -> None:
    """The soft limit of open files raised to the hard one: every connection of every listener is a file, and
    --http-max-connections per HTTP listener should be reachable (many systems start processes at 1024)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # an unlimited hard limit is not a valid soft one: keep what we have
            pass


def _check_serving_python(args) -> None:
    """The Python that runs Serving's master and workers runs, and has mindspore_serving (serving_python.py)."""
    from bert_squad.server import serving_python

    try:
        serving_python.check(args.serving_python)
    except serving_python.ServingPythonError as e:
        raise ServeError(str(e)) from None


def _policy(args):
    """--version-policy, or --version N (its shorthand for specific:N)."""
    policy = versions.Policy.parse(args.version_policy)
    if args.version:
        if args.version_policy != versions.LATEST and policy.number != args.version:
            raise ServeError(f"--version {args.version} and --version-policy {args.version_policy} disagree; give one")
        policy = versions.Policy(args.version)
    return policy


def _smoke(args):
    """The smoke test of --smoke-file, read now so that a bad file stops the start (None without it)."""
    if not args.smoke_file:
        return None
    from bert_squad.server import smoke
    try:
        return smoke.read(args.smoke_file, args.smoke_min_f1)
    except smoke.SmokeError as e:
        raise ServeError(str(e)) from None


def serve(args) -> int:
    args.servable_dir = args.servable_dir.resolve()
    policy = _policy(args)
    smoke_test = _smoke(args)
    _check_serving_python(args)
    export_first(args)
    servable_dir = args.servable_dir
    version = versions.resolve(servable_dir, args.name, policy.number)
    meta = versions.verify(servable_dir / args.name / str(version), args.device)
    device_ids = [int(x) for x in args.device_ids.split(",") if x.strip()]
    workdir = args.workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bert-squad-serve-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)

    env = dict(os.environ)
    if args.device == "cpu":
        env = with_lite_on_library_path(env)
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

    from bert_squad.front import openapi, tracing
    from bert_squad.front.http import FrontDoor, HttpServer, health_app, with_cors
    from bert_squad.front.http_limits import Limits as HttpLimits
    from bert_squad.server.versions_live import Versions

    _check_addresses(args)
    _open_file_limit()

    t0 = time.perf_counter()
    state = health.HealthState(lambda: live.current.upstream.probe(), settings.HEALTH_TTL_S, alive=lambda: True)

    def on_ready(warm: str) -> None:
        if state.phase == health.RESTARTING:
            say(f"bert-squad-serve: Serving's master answers again (warm-up {warm})")
            state.set_phase(health.SERVING)

    def on_down(reason: str) -> None:
        state.set_phase(health.RESTARTING, reason)  # first: once the log says so, /readyz says so too
        say(f"bert-squad-serve: {reason}", error=True)

    live = Versions(args, env, policy, smoke_test, on_ready, on_down, _package_version())
    live.serve(live.launch(version, meta))
    health_server = None
    if args.health_address != "off":  # the health routes alone, on a listener of their own
        health_server = HttpServer(health_app(state), args.health_address, drain_s=settings.DRAIN_S,
                                   limits=HttpLimits.from_args(args))
    page_routes = []
    if args.page == "on" and args.rest_address != "off":
        from bert_squad.front import api_docs, page
        try:
            page_routes = page.routes(args.name, lambda: live.current.facts(), args.page_examples) + \
                api_docs.routes(args.name)
        except page.ExamplesError as e:
            raise ServeError(str(e)) from None
    span_facts = {tracing.Attr.RUNTIME: meta.runtime, tracing.Attr.PRECISION: meta.precision}  # a switch updates it
    door = FrontDoor(live.current.upstream, state, state.unavailable,
                     lambda: openapi.document(args, live.current.meta, live.current.version, _package_version()),
                     page_routes, _package_version(), _api_keys(args), _tracer(), span_facts,
                     lambda: live.check("repository load"))

    def switched(running) -> None:
        door.upstream = running.upstream
        span_facts.update({tracing.Attr.RUNTIME: running.meta.runtime, tracing.Attr.PRECISION: running.meta.precision})

    live.switched = switched
    http_server = None
    if args.rest_address != "off":
        http_server = HttpServer(with_cors(door.app, args.cors_allow_origin), args.rest_address, args.tls_cert,
                                 args.tls_key, args.tls_client_ca, drain_s=settings.DRAIN_S,
                                 limits=HttpLimits.from_args(args))
    return asyncio.run(_run(args, live, state, door, health_server, http_server, pin, device_ids, workdir, t0))


def _api_keys(args):
    """The keys of --api-key-file (None without it); a warning when they would cross a network in plain text."""
    if not args.api_key_file:
        return None
    from bert_squad.front import keys
    try:
        api_keys = keys.ApiKeys(args.api_key_file)
    except keys.KeyFileError as e:
        raise ServeError(str(e)) from None
    exposed = [a for a in (args.grpc_address, args.rest_address, args.oip_grpc_address)
               if a != "off" and not a.startswith(("127.", "[::1]", "localhost:"))]
    if exposed and not args.tls_cert:
        say(f"bert-squad-serve: warning: API keys on {', '.join(exposed)} without TLS travel in plain text; "
            f"add --tls-cert and --tls-key", error=True)
    return api_keys


def _tracer():
    """The OpenTelemetry tracer the OTEL_* environment asks for (tracing.py), None when it asks for none."""
    from bert_squad.front import tracing
    try:
        return tracing.from_environment()
    except tracing.TracingError as e:
        raise ServeError(str(e)) from None


def _reload(door, live) -> None:
    """SIGHUP: read the API key file again (a bad file keeps the keys in use) and look for a new model version."""
    if door.api_keys is not None:
        from bert_squad.front import keys
        try:
            say(f"bert-squad-serve: API keys re-read from {door.api_keys.path}: {door.api_keys.reload()} key(s)")
        except keys.KeyFileError as e:
            say(f"bert-squad-serve: error: {e}; the keys read before stay in use", error=True)
    asyncio.ensure_future(live.check("SIGHUP"))


async def _poll(live, seconds: float) -> None:
    """--poll-seconds: look for a new version every `seconds` (the check costs a directory listing and a stat of the
    new folder's files; only a version not served yet is read further)."""
    while True:
        await asyncio.sleep(seconds)
        await live.check("poll")


async def _start_grpc(args, door) -> list:
    """The front door's gRPC servers: MindSpore Serving's API on --grpc-address and the Open Inference Protocol's
    on --oip-grpc-address (each unless 'off'), asking through the front door's channel to Serving."""
    from bert_squad.front.grpc_listen import Limits, start_server
    from bert_squad.front.oip import servicer as oip
    from bert_squad.front.serving_grpc import PassThrough

    read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
    checks = {}
    if door.api_keys is not None:
        from bert_squad.front.keys import GrpcKeyCheck

        checks = {"grpc": [GrpcKeyCheck(door.api_keys, door.meter("grpc"))],
                  "oip_grpc": [GrpcKeyCheck(door.api_keys, door.meter("oip_grpc"))]}
    serving_api = PassThrough(door.current, door.availability, door.meter("grpc"), args.name)
    oip_api = oip.InferenceServicer(door.oip_models, lambda: door.served, door.package_version, door.ask,
                                    door.is_live, door.is_ready, door.meter("oip_grpc"))
    servers = []
    for protocol, flag, address, what, register in (
            ("grpc", "--grpc-address", args.grpc_address, "MindSpore Serving's gRPC API", serving_api.register),
            ("oip_grpc", "--oip-grpc-address", args.oip_grpc_address, "the Open Inference Protocol's gRPC service",
             oip.register(oip_api))):
        if address == "off":
            continue
        try:
            server, _ = await start_server(register, address, Limits.from_args(args), read(args.tls_cert),
                                           read(args.tls_key), read(args.tls_client_ca), checks.get(protocol, ()))
        except OSError as e:
            await asyncio.gather(*(started.stop(None) for started in servers))
            raise ServeError(f"{e} for {what}; pick a free port with {flag} HOST:PORT, or 'off'") from None
        servers.append(server)
    return servers


async def _run(args, live, state, door, health_server, http_server, pin, device_ids, workdir, t0) -> int:
    """Serve until SIGINT / SIGTERM or a crash loop: HTTP on this event loop, each version's master supervised in a
    thread, the version checks on this loop."""
    from bert_squad.server.smoke import SmokeError
    from bert_squad.server.supervisor import StartFailed

    loop = asyncio.get_running_loop()
    asked = asyncio.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, asked.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, door, live)
    # REST first: on the way out it drains while the health listener still says "not ready"
    listeners = [(server, asyncio.ensure_future(server.serve())) for server in (http_server, health_server) if server]
    try:
        grpc_servers = await _start_grpc(args, door)
    except ServeError:
        await _stop_listeners(listeners, [], door)
        raise
    first = live.current
    try:
        await live.bring_up(first)  # /livez answers during start-up
    except (StartFailed, SmokeError) as e:
        await _stop_listeners(listeners, grpc_servers, door)
        await live.stop()
        raise ServeError(str(e)) from None
    state.set_phase(health.SERVING)
    rest = "off" if args.rest_address == "off" else args.rest_address
    meta = first.meta
    # One write, starting on a fresh line: Serving's C++ threads print to the same stdout.
    say(f"{health.READY_MARKER} grpc={args.grpc_address} rest={rest} oip-grpc={args.oip_grpc_address} "
        f"servable={args.name} version={first.version} precision={meta.precision} runtime={meta.runtime} "
        f"device={args.device} workers={len(device_ids)} threads={args.threads} pinned={'yes' if pin else 'no'} "
        f"health={health_server.address if health_server else 'off'} "
        f"max-queued={args.max_queued_requests} traces={door.tracer.protocol if door.tracer else 'off'} "
        f"keys={'on' if door.api_keys else 'off'} version-policy={live.policy} "
        f"poll={f'{args.poll_seconds:g} s' if args.poll_seconds else 'off'} start={time.perf_counter() - t0:.1f} s "
        f"warm-up={first.supervisor.warm_up} master={first.supervisor.process.pid} internal={first.upstream.target} "
        f"logs={workdir / 'serving_logs'}", fresh_line=True)
    polling = asyncio.ensure_future(_poll(live, args.poll_seconds)) if args.poll_seconds else None
    await asyncio.wait([asyncio.ensure_future(asked.wait()), asyncio.ensure_future(live.wait_fatal())],
                       return_when=asyncio.FIRST_COMPLETED)
    state.set_phase(health.STOPPING)  # /readyz 503 and new requests 503 at once, so balancers drain us
    if polling is not None:
        polling.cancel()
    await _stop_listeners(listeners, grpc_servers, door)  # in-flight requests of every protocol finish first
    fatal = live.current.supervisor.fatal
    await live.stop()
    if fatal:
        say(f"bert-squad-serve: error: {fatal} (see {workdir / 'serving_logs'}); exiting with "
            f"{EXIT_SERVING_DIED} so that a supervisor (systemd Restart=on-failure, a container restart policy) "
            f"starts the server again", error=True)
        return EXIT_SERVING_DIED
    say("bert-squad-serve: stopped")
    return 0


async def _stop_listeners(listeners, grpc_servers, door) -> None:
    """Stop taking requests, let those in flight finish (up to the drain time), then close the channel to Serving."""
    stopping = [asyncio.ensure_future(server.stop(settings.DRAIN_S)) for server in grpc_servers]
    for server, task in listeners:
        server.stop()
        await task
    await asyncio.gather(*stopping)
    await door.close()
    if door.tracer is not None:  # the last spans, within a bound: an unreachable collector must not hold the stop
        await asyncio.get_running_loop().run_in_executor(None, door.tracer.shutdown)


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


OLDEST_FRONT_PYTHON = (3, 10)  # every public port on a maintained Python: 3.9 is Serving's side only


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # --help answers on any Python
    if sys.version_info[:2] < OLDEST_FRONT_PYTHON:
        print(f"bert-squad-serve: error: the serve command owns the public ports and runs on Python 3.10 or newer, "
              f"not {sys.version.split()[0]}; run the front door's: .stack/front/bin/bert-squad-serve (scripts/setup.sh "
              f"builds it; it starts Serving's master and workers on this Python 3.9 itself)", file=sys.stderr)
        return EXIT_START_FAILED
    access.configure(args.log_format, args.access_log == "on", args.log_request_text)
    try:
        return serve(args)
    except (ServeError, versions.VersionError, RuntimeMissing) as e:
        print(f"bert-squad-serve: error: {e}", file=sys.stderr)
        return EXIT_START_FAILED


if __name__ == "__main__":
    sys.exit(main())
