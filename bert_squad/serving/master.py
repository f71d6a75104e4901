"""Serving's master and workers in a process of their own (Python 3.9), which the serve command supervises.

`python -m bert_squad.serving.master --servable-dir DIR --name NAME --version N ...` (the command line
bert_squad/server/serving_python.py builds from the serve command's options) starts the servable's workers and
Serving's gRPC endpoint on the internal address $BERT_SQUAD_MASTER_ADDRESS (no REST, no public port: the serve
command's front door owns them), asks the warm-up question, tells
the serve command on the pipe $BERT_SQUAD_READY_FD ("ready <seconds>" or "error <stage> <reason>"), then watches
its workers until SIGTERM. The serve command (supervisor.py) starts this process again when it dies.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from bert_squad.contract import (EXIT_SERVING_DIED, EXIT_START_FAILED, MASTER_ADDRESS_ENV, PARENT_PID_ENV, READY_FD_ENV,
                                 STAGE_LOAD, STAGE_WARM_UP, logs)
from bert_squad.contract.logs import say
from bert_squad.contract.processes import exit_with_parent, worker_pids
from bert_squad.contract.warmup import predict_call, predict_request, reply_failure

WORKER_POLL_S = 0.5


class StartError(Exception):
    """Serving did not come up; the message says why."""


def parse_args(argv=None) -> argparse.Namespace:
    """The master's own command line: what Serving needs of the serve command's options, resolved by the serve
    command (serving_python.master_command), which checked them."""
    p = argparse.ArgumentParser(prog="python -m bert_squad.serving.master", description=__doc__.split("\n\n")[0])
    p.add_argument("--servable-dir", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--version", type=int, required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--device-ids", required=True)
    p.add_argument("--python-workers", type=int, required=True)
    p.add_argument("--max-queued-requests", type=int, required=True)
    p.add_argument("--max-message-mb", type=int, required=True)
    p.add_argument("--warmup-timeout", type=float, required=True)
    p.add_argument("--log-format", choices=logs.LOG_FORMATS, required=True)
    return p.parse_args(argv)


def warm_up(args, timeout: float) -> float:
    """Ask one question over Serving's gRPC endpoint (the internal address) within `timeout`; the seconds it took."""
    import grpc

    request = predict_request(args.name)
    t0 = time.perf_counter()
    try:
        with grpc.insecure_channel(os.environ[MASTER_ADDRESS_ENV]) as channel:
            reply = predict_call(channel)(request, timeout=timeout)
    except grpc.RpcError as e:
        raise StartError(f"the warm-up question failed: gRPC {e.code().name}: {e.details()}") from None
    failure = reply_failure(reply)
    if failure:
        raise StartError(f"the warm-up question failed: {failure}")
    return time.perf_counter() - t0


def _answers_again(args, stopping) -> bool:
    """Ask the warm-up question until a restarted worker answers it (or we stop, or time runs out)."""
    deadline = time.monotonic() + args.warmup_timeout
    while time.monotonic() < deadline and not stopping():
        try:
            warm_up(args, min(10.0, args.warmup_timeout))
            return True
        except StartError:  # "servable is not available" while the new worker loads its models
            time.sleep(0.2)
    return False


def _watch_workers(args) -> bool:
    """Serve until SIGTERM (returns True) or until Serving stops on its own (returns False).

    Serving's master restarts a worker that dies, but only one that had answered a request
    (else it takes the death for a start-up fault), and stops when no worker is left. So a
    restarted worker is asked the warm-up question as soon as it is up: it then counts as
    answering, and a second crash is restarted too. A Python handler replaces Serving's own for
    SIGTERM, so that a stop we were asked for is told apart from Serving giving up; SIGINT (a
    terminal's Ctrl+C reaches the whole process group) is left to the serve command, which stops us.
    """
    from mindspore_serving._mindspore_serving import ExitSignalHandle_

    from bert_squad.contract import serving_metrics as metrics
    signals: list = []
    signal.signal(signal.SIGTERM, lambda received, _frame: signals.append(received))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stopping = lambda: bool(signals) or ExitSignalHandle_.has_stopped()  # noqa: E731
    workers = worker_pids()
    while not stopping():
        time.sleep(WORKER_POLL_S)
        current = worker_pids()
        for pid in sorted(workers - current):
            metrics.WORKER_RESTARTS.inc()
            say(f"bert-squad-serve: worker {pid} exited; the requests it held failed")
        for pid in sorted(current - workers):
            t0 = time.perf_counter()
            if _answers_again(args, stopping):
                say(f"bert-squad-serve: worker {pid} answers again ({time.perf_counter() - t0:.1f} s after it "
                    f"started)")
        workers = current
    return bool(signals)


def run(args, report) -> int:
    """Start Serving (workers + gRPC), report readiness, watch the workers; the exit code says how it ended."""
    from mindspore_serving import server
    from mindspore_serving.server.master import context

    device_ids = [int(x) for x in args.device_ids.split(",") if x.strip()]
    stage = STAGE_LOAD
    try:
        context.set_max_enqueued_requests(args.max_queued_requests)
        config = server.ServableStartConfig(
            servable_directory=str(args.servable_dir), servable_name=args.name, device_ids=device_ids,
            version_number=args.version, device_type=args.device, num_parallel_workers=args.python_workers)
        server.start_servables(config, enable_lite=args.device == "cpu")
        server.start_grpc_server(os.environ[MASTER_ADDRESS_ENV], max_msg_mb_size=args.max_message_mb)
        stage = STAGE_WARM_UP
        warm = f"{warm_up(args, args.warmup_timeout):.2f} s"
    except (RuntimeError, StartError) as e:
        server.stop()
        report(f"error {stage} {e} (logs: {Path.cwd() / 'serving_logs'})")
        return EXIT_START_FAILED
    report(f"ready {warm}")
    asked_to_stop = _watch_workers(args)
    server.stop()
    if not asked_to_stop:
        say("bert-squad-serve: MindSpore Serving stopped on its own: its worker exited and it would not "
            "restart it", error=True)
        return EXIT_SERVING_DIED
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    exit_with_parent(int(os.environ[PARENT_PID_ENV]))  # the serve command died without stopping us: so do we
    os.environ[PARENT_PID_ENV] = str(os.getpid())  # and our workers with us (servable_glue.exit_with_master)
    logs.configure(args.log_format)
    pipe = os.fdopen(int(os.environ.pop(READY_FD_ENV)), "w", buffering=1)

    def report(line: str) -> None:
        pipe.write(" ".join(line.split("\n")) + "\n")

    return run(args, report)


if __name__ == "__main__":
    sys.exit(main())
