"""bert-squad-serve: run the bert_squad servable on MindSpore Serving, gRPC + REST.

It resolves the model version, starts the workers (MindSpore Lite on CPU), opens the
gRPC and REST endpoints (127.0.0.1 unless told otherwise), proves the model answers
with one warm-up question, prints a `bert-squad-serve: ready` line, and stops cleanly
on SIGINT / SIGTERM. MindSpore Serving writes its logs and sockets into the current
directory, so the command runs in a working directory of its own.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bert_squad import settings
from bert_squad.runtime import REPO_ROOT, RuntimeMissing, with_lite_on_library_path
from bert_squad.servable_glue import THREADS_ENV, VERSION_ENV

WARMUP_QUESTION = "Who wrote the plays?"
WARMUP_CONTEXT = "The plays were written by William Shakespeare in London."


class ServeError(Exception):
    """The server cannot start; the message says why and what to do."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bert-squad-serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--servable-dir", type=Path, default=REPO_ROOT / "servable",
                   help="folder holding <name>/servable_config.py and numbered version folders")
    p.add_argument("--name", default=settings.SERVABLE_NAME, help="servable name (default: %(default)s)")
    p.add_argument("--version", type=int, default=0, help="version folder to serve; 0 = newest (default)")
    p.add_argument("--checkpoint", type=Path,
                   help="used only when no version is exported yet: a zoo .ckpt or a Hugging Face folder to "
                        "export first (default: download the MindSpore Hub SQuAD checkpoint)")
    p.add_argument("--vocab", type=Path, help="vocab.txt for a zoo .ckpt (the Hub does not ship one)")
    p.add_argument("--config", type=Path, help="BertConfig JSON for a zoo .ckpt that is not BERT-base")
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
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="inference threads per worker (default: all cores, %(default)s)")
    p.add_argument("--python-workers", type=int, default=0,
                   help="extra processes for the tokenize / decode stages (default 0: in the worker)")
    p.add_argument("--max-message-mb", type=int, default=settings.MAX_MESSAGE_MB,
                   help="largest request accepted, gRPC and REST (default %(default)s MB)")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve gRPC and REST over TLS")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument("--tls-client-ca", help="PEM CA: require client certificates signed by it (mutual TLS)")
    p.add_argument("--workdir", type=Path,
                   help="where Serving writes serving_logs/ and unix_socket_files/ (default: a new temp dir)")
    p.add_argument("--warmup-timeout", type=float, default=120.0, help="seconds the warm-up question may take")
    args = p.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        p.error("--tls-client-ca needs --tls-cert and --tls-key")
    if args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def _has_version(root: Path) -> bool:
    return root.is_dir() and any(p.is_dir() and p.name.isdigit() and int(p.name) > 0 for p in root.iterdir())


def ensure_exported(args) -> None:
    """Export the checkpoint the user names, or the Hub checkpoint, when nothing is exported yet."""
    if _has_version(args.servable_dir / args.name) or args.version:
        return
    from bert_squad.hub import DownloadError, fetch_checkpoint

    checkpoint, expected = args.checkpoint, None
    if checkpoint is None:
        if args.vocab is None:
            raise ServeError(
                "nothing is exported yet and no --checkpoint was given, so the MindSpore Hub checkpoint would be "
                "downloaded; it ships no vocabulary: pass --vocab /path/to/bert-base-uncased/vocab.txt")
        print(f"bert-squad-serve: no exported model; fetching {args.hub_url}", flush=True)
        try:
            checkpoint = fetch_checkpoint(args.hub_url, args.hub_sha256, progress=_progress_bar())
        except DownloadError as e:
            raise ServeError(str(e)) from e
        expected = args.hub_sha256
    from bert_squad.checkpoint import CheckpointError
    from bert_squad.config import BertConfig, ConfigError
    from bert_squad.metadata import MetadataError
    from bert_squad_export.exporter import ExportError, export_version

    try:
        config = BertConfig.from_json_file(args.config) if args.config else None
        export_version(checkpoint, args.servable_dir, name=args.name, vocab_file=args.vocab, config=config,
                       expected_sha256=expected, log=lambda line: print(f"bert-squad-serve: {line}", flush=True))
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


def _ssl_config(server, args):
    if not args.tls_cert:
        return None
    for f in (args.tls_cert, args.tls_key, args.tls_client_ca):
        if f and not Path(f).is_file():
            raise ServeError(f"TLS file not found: {f}")
    return server.SSLConfig(certificate=args.tls_cert, private_key=args.tls_key, custom_ca=args.tls_client_ca,
                            verify_client=bool(args.tls_client_ca))


def _warm_up(args) -> float:
    """Ask one question over the public gRPC endpoint; returns the seconds it took."""
    from mindspore_serving.client import Client, SSLConfig

    ssl = SSLConfig(custom_ca=args.tls_cert) if args.tls_cert else None
    client = Client(args.grpc_address, args.name, "predict", ssl_config=ssl)
    t0 = time.perf_counter()
    reply = client.infer({"question": WARMUP_QUESTION, "context": WARMUP_CONTEXT})
    if isinstance(reply, dict) and "error" in reply:
        raise ServeError(f"the warm-up question failed: {reply['error']}")
    if not isinstance(reply, list) or "error" in reply[0]:
        raise ServeError(f"the warm-up question failed: {reply}")
    return time.perf_counter() - t0


def serve(args) -> int:
    args.servable_dir = args.servable_dir.resolve()
    ensure_exported(args)
    servable_dir = args.servable_dir
    version = resolve_version(servable_dir, args.name, args.version)
    device_ids = [int(x) for x in args.device_ids.split(",") if x.strip()]
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bert-squad-serve-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)

    env = dict(os.environ)
    if args.device == "cpu":
        env = with_lite_on_library_path(env)
    env[VERSION_ENV] = str(version)
    env[THREADS_ENV] = str(args.threads)
    os.environ.clear()
    os.environ.update(env)  # the worker processes inherit it

    from mindspore_serving import server
    from mindspore_serving._mindspore_serving import ExitSignalHandle_

    t0 = time.perf_counter()
    ssl = _ssl_config(server, args)
    config = server.ServableStartConfig(
        servable_directory=str(servable_dir), servable_name=args.name, device_ids=device_ids,
        version_number=version, device_type=args.device, num_parallel_workers=args.python_workers)
    try:
        server.start_servables(config, enable_lite=args.device == "cpu")
        server.start_grpc_server(args.grpc_address, max_msg_mb_size=args.max_message_mb, ssl_config=ssl)
        if args.rest_address != "off":
            server.start_restful_server(args.rest_address, max_msg_mb_size=args.max_message_mb, ssl_config=ssl)
        if args.tls_client_ca:
            warm = "skipped (mutual TLS: this process has no client certificate)"
        else:
            warm = f"{_warm_up(args):.2f} s"
    except (RuntimeError, ServeError) as e:
        server.stop()
        raise ServeError(f"{e} (logs: {workdir / 'serving_logs'})") from e
    rest = "off" if args.rest_address == "off" else args.rest_address
    print(f"bert-squad-serve: ready grpc={args.grpc_address} rest={rest} servable={args.name} version={version} "
          f"device={args.device} workers={len(device_ids)} threads={args.threads} "
          f"start={time.perf_counter() - t0:.1f} s warm-up={warm} logs={workdir / 'serving_logs'}", flush=True)
    while not ExitSignalHandle_.has_stopped():  # Serving's own SIGINT/SIGTERM handler sets this
        time.sleep(0.2)
    server.stop()
    print("bert-squad-serve: stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return serve(args)
    except (ServeError, RuntimeMissing) as e:
        print(f"bert-squad-serve: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
