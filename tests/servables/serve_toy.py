"""Start MindSpore Serving on a toy servable, with the address options of bert-squad-serve.

Run it from a temporary working directory (Serving writes serving_logs/ there). Prints
`bert-squad-serve: ready` once both endpoints listen; SIGTERM or SIGINT stop it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from mindspore_serving import server
from mindspore_serving._mindspore_serving import ExitSignalHandle_

from bert_squad.front.health import READY_MARKER


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--servable-dir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--grpc-address", required=True)
    parser.add_argument("--rest-address")
    args = parser.parse_args(argv)

    server.start_servables(server.ServableStartConfig(servable_directory=os.path.abspath(args.servable_dir),
                                                      servable_name=args.name, device_ids=0), enable_lite=True)
    server.start_grpc_server(args.grpc_address)
    if args.rest_address:
        server.start_restful_server(args.rest_address)
    print("\n" + READY_MARKER, flush=True)  # one write, on a line of its own: Serving's threads print too
    while not ExitSignalHandle_.has_stopped():  # Serving's own SIGINT/SIGTERM handler sets this
        time.sleep(0.1)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
