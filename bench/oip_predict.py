"""Answer every question of a SQuAD v1.1 file over the Open Inference Protocol's gRPC with tritonclient.grpc, in
requests of N questions (bench.accuracy --oip runs it in the Python 3.11 venv, where tritonclient is installed):

    .stack/py311/bin/python bench/oip_predict.py ADDRESS SQUAD.json OUT.json N

OUT.json maps question id -> answer text, as bert-squad-predict writes it; a question the server refused is
left out and counted on stderr."""
from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tritonclient.grpc as triton

CLIENTS = 2  # requests in flight: one per core of the benchmark machine


def questions(path: str) -> list:
    data = json.load(open(path, encoding="utf-8"))
    return [(qa["id"], qa["question"], paragraph["context"]) for article in data["data"]
            for paragraph in article["paragraphs"] for qa in paragraph["qas"]]


def ask(client, batch: list) -> dict:
    inputs = []
    for name, column in (("question", 1), ("context", 2)):
        tensor = triton.InferInput(name, [len(batch)], "BYTES")
        tensor.set_data_from_numpy(np.array([row[column].encode() for row in batch], dtype=np.object_))
        inputs.append(tensor)
    wanted = [triton.InferRequestedOutput(name) for name in ("answer", "error")]
    result = client.infer("bert_squad", inputs, outputs=wanted, client_timeout=300)
    answers, errors = result.as_numpy("answer"), result.as_numpy("error")
    return {row[0]: answer.decode() for row, answer, error in zip(batch, answers, errors) if not error}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address")
    parser.add_argument("squad")
    parser.add_argument("out")
    parser.add_argument("n", type=int)
    args = parser.parse_args(argv)
    rows = questions(args.squad)
    batches = [rows[i:i + args.n] for i in range(0, len(rows), args.n)]
    clients = [triton.InferenceServerClient(args.address) for _ in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        parts = pool.map(lambda k: [ask(clients[k], b) for b in batches[k::CLIENTS]], range(CLIENTS))
        predictions = {qid: text for part in parts for answers in part for qid, text in answers.items()}
    json.dump(predictions, open(args.out, "w", encoding="utf-8"))
    print(f"{len(predictions)} of {len(rows)} questions answered in requests of {args.n}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
