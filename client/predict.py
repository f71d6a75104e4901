"""bert-squad-predict: answer every question of a SQuAD v1.1 file (or JSON Lines of {id, question, context})
through a bert_squad server, and write predictions in the official format ({id: answer}).

Resumable: each answer is appended to a journal (OUTPUT.journal.jsonl, flushed and fsync'd) as it arrives, so
a run that stops (Ctrl-C, a crash, the server gone) continues where it stopped when re-run with the same
command. Output files are written whole, atomically, once every question has been asked; questions the server
refused are listed in OUTPUT.errors.json and asked again by the next run. The journal goes when all are answered.

Which model version produced each answer goes to OUTPUT.versions.json ({id: version}, null where the server did
not say), beside the predictions rather than in them: the predictions file stays what the official SQuAD
evaluation reads, and a run that spans a version switch can still be audited answer by answer.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .client import DEFAULT_MAX_IN_FLIGHT, Client, Tls
from .errors import AuthenticationError, BertSquadError, DeadlineExceeded, RequestError, ServerUnavailable
from .rest import RestClient
from .results import API_KEY_ENV, DEFAULT_GRPC_ADDRESS, DEFAULT_REST_ADDRESS, SERVABLE, Result

JOURNAL_FORMAT = "bert-squad-predict journal 1"
EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


class InputError(Exception):
    """The input file cannot be used; the message names the file, the place and the fix."""


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    context: str


def read_questions(path: Path) -> list[Question]:
    """Questions of a SQuAD v1.1 JSON file, or of a JSON Lines file of {id, question, context}."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {path}: {error}") from None
    try:
        document = json.loads(text)
    except ValueError:
        document = None  # not one JSON value: JSON Lines
    if isinstance(document, dict) and "data" in document:
        questions = _squad_questions(document, path)
    elif document is None or isinstance(document, dict):
        questions = _jsonl_questions(text, path)
    else:
        raise InputError(f"{path}: expected a SQuAD v1.1 object with a 'data' list, or JSON Lines of "
                         f"{{id, question, context}}; got a JSON {type(document).__name__}")
    if not questions:
        raise InputError(f"{path} holds no questions")
    seen: dict[str, str] = {}
    for q, where in questions:
        if q.id in seen:
            raise InputError(f"{path}: id {q.id!r} appears twice ({seen[q.id]} and {where}); ids must be unique")
        seen[q.id] = where
    return [q for q, _ in questions]


def _text(record, key: str, where: str, path: Path) -> str:
    if not isinstance(record, dict):
        raise InputError(f"{path}: {where} must be a JSON object, got {type(record).__name__}")
    if key not in record:
        raise InputError(f"{path}: {where} has no {key!r} field")
    value = record[key]
    if key == "id" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InputError(f"{path}: {where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _squad_questions(document: dict, path: Path) -> list[tuple[Question, str]]:
    if not isinstance(document["data"], list):
        raise InputError(f"{path}: 'data' must be a list of articles")
    questions = []
    for a, article in enumerate(document["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise InputError(f"{path}: data[{a}] has no 'paragraphs' list")
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            context = _text(paragraph, "context", where, path)
            qas = paragraph.get("qas")
            if not isinstance(qas, list):
                raise InputError(f"{path}: {where} has no 'qas' list")
            for i, qa in enumerate(qas):
                place = f"{where}.qas[{i}]"
                questions.append((Question(_text(qa, "id", place, path), _text(qa, "question", place, path),
                                           context), place))
    return questions


def _jsonl_questions(text: str, path: Path) -> list[tuple[Question, str]]:
    questions = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            record = json.loads(line)
        except ValueError as error:
            raise InputError(f"{path}: {where} is not JSON ({error}); expected a SQuAD v1.1 file or one "
                             f"{{\"id\", \"question\", \"context\"}} object per line") from None
        questions.append((Question(*(_text(record, k, where, path) for k in ("id", "question", "context"))),
                          where))
    return questions


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` all at once: readers see the old file or the new one, never a part."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class Interrupts:
    """While installed, SIGINT and SIGTERM raise KeyboardInterrupt, except inside `deferred()`, which holds them
    until its block is done (signal masks cannot: Python runs handlers for signals other threads receive)."""

    def __init__(self):
        self.depth, self.pending, self.previous = 0, False, {}

    def _handle(self, signum, frame) -> None:
        if self.depth:
            self.pending = True
        else:
            raise KeyboardInterrupt

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    @contextlib.contextmanager
    def deferred(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending:
                self.pending = False
                raise KeyboardInterrupt


class Journal:
    """Append-only JSON Lines record of the answers received so far; its first line identifies the run."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        self.answers: dict[str, dict] = {}
        if path.exists():
            self._load(header)
        else:
            write_atomically(path, (json.dumps(header) + "\n").encode())
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def _load(self, header: dict) -> None:
        data = self.path.read_bytes()
        complete = data[:data.rfind(b"\n") + 1]  # a line cut short by a crash is dropped, and asked again
        lines = complete.decode("utf-8", errors="replace").splitlines()
        try:
            found = json.loads(lines[0]) if lines else None
            records = [json.loads(line) for line in lines[1:]]
        except ValueError:
            raise InputError(f"journal {self.path} is damaged; delete it to start the run over") from None
        if found != header:
            changed = sorted(k for k in set(header) | set(found or {}) if (found or {}).get(k) != header.get(k))
            raise InputError(f"journal {self.path} belongs to another run ({', '.join(changed)} differ): delete "
                             f"it to start over, or re-run with the options and input it was made with")
        for record in records:
            self.answers[record["id"]] = record
        if len(complete) != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))

    def add(self, record: dict) -> None:
        os.write(self._fd, (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        os.fsync(self._fd)
        self.answers[record["id"]] = record

    def close(self) -> None:
        os.close(self._fd)


def _record(question_id: str, result: Result) -> dict:
    return {"id": question_id, "answer": result.text,
            "nbest": [{"text": a.text, "score": a.score, "start": a.start, "end": a.end} for a in result.top_k],
            "model_version": result.model_version}


def versions_path(output: Path) -> Path:
    """Where the model version of each answer in `output` is written: OUTPUT.versions.json, {id: version}."""
    return output.with_name(output.name + ".versions.json")


def _versions_said(versions: dict) -> str:
    """How many answers each version gave, for the summary line: 'model versions 1 (3 answers), 2 (1 answer)'."""
    counts = collections.Counter(versions.values())
    known = sorted(v for v in counts if v is not None)
    parts = [f"{v} ({counts[v]} answer{'s' if counts[v] != 1 else ''})" for v in known]
    if None in counts:
        parts.append(f"not said by the server ({counts[None]})")
    return f"model version{'s' if len(parts) > 1 else ''} " + ", ".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bert-squad-predict", description=__doc__.split("\n\n")[0])
    p.add_argument("input", type=Path, help="SQuAD v1.1 JSON file, or JSON Lines of {id, question, context}")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="predictions file to write: {id: answer}; the model version of each answer goes to "
                        "OUTPUT.versions.json")
    p.add_argument("--nbest", type=Path, help="also write {id: [{text, score, start, end}, ...]} here")
    p.add_argument("--server", help=f"server address host:port, several as ip:port,ip:port or dns:///name:port "
                                    f"(requests are spread round-robin; default {DEFAULT_GRPC_ADDRESS}, with --rest "
                                    f"{DEFAULT_REST_ADDRESS})")
    p.add_argument("--rest", action="store_true", help="use the REST endpoint instead of gRPC (--server is then "
                                                         "the REST address or URL)")
    p.add_argument("--servable", default=SERVABLE, help="servable name (default %(default)s)")
    p.add_argument("--version", type=int, default=0, help="servable version; 0 = the newest (default)")
    p.add_argument("--top-k", type=int, default=1, help="answers per question kept in --nbest (default 1)")
    p.add_argument("--max-answer-length", type=int, help="longest answer in tokens (default: the server's)")
    p.add_argument("--concurrency", type=int, default=DEFAULT_MAX_IN_FLIGHT,
                   help="requests in flight (default %(default)s)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds one question may take, waiting for a (re)starting server included "
                        "(default %(default)s)")
    p.add_argument("--tls-ca", help="PEM CA of the server certificate: connect with TLS")
    p.add_argument("--tls-cert", help="PEM client certificate, when the server requires one")
    p.add_argument("--tls-key", help="PEM key of --tls-cert")
    p.add_argument("--tls-server-name", help="name in the server certificate, if not the host of --server")
    p.add_argument("--api-key-file", type=Path, help=f"file whose first line is the server's API key (default: "
                                                      f"${API_KEY_ENV}, else none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.top_k < 1 or args.concurrency < 1 or args.timeout <= 0:
        p.error("--top-k and --concurrency must be >= 1 and --timeout > 0")
    if args.max_answer_length is not None and args.max_answer_length < 1:
        p.error("--max-answer-length must be >= 1")
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    return args


def _client(args):
    tls = None
    if args.tls_ca or args.tls_cert or args.tls_server_name:
        tls = Tls(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, server_name=args.tls_server_name)
    api_key = _read_key(args.api_key_file) if args.api_key_file else None
    if args.rest:
        return RestClient(args.server or DEFAULT_REST_ADDRESS, args.servable, version=args.version,
                          timeout=args.timeout, tls=tls, api_key=api_key)
    return Client(args.server or DEFAULT_GRPC_ADDRESS, args.servable, version=args.version, timeout=args.timeout,
                  tls=tls, api_key=api_key)


def _read_key(path: Path) -> str:
    """The first key of a key file (the server's form: one per line, # comments)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the API key file {path}: {e}") from None
    key = next((line.strip() for line in lines if line.strip() and not line.strip().startswith("#")), None)
    if key is None:
        raise InputError(f"the API key file {path} holds no key; put the key on its first line")
    return key


def run(args) -> int:
    questions = read_questions(args.input)
    if not args.output.parent.is_dir():
        raise InputError(f"output folder {args.output.parent} does not exist; create it first")
    header = {"format": JOURNAL_FORMAT, "input_sha256": hashlib.sha256(args.input.read_bytes()).hexdigest(),
              "servable": args.servable, "version": args.version, "top_k": args.top_k,
              "max_answer_length": args.max_answer_length}
    journal = Journal(args.output.with_name(args.output.name + ".journal.jsonl"), header)
    todo = [q for q in questions if q.id not in journal.answers]
    resumed = len(questions) - len(todo)
    failed: dict[str, str] = {}
    failed_ids: dict[str, str] = {}  # question id -> the server's request id, where the protocol has one
    progress = tqdm(total=len(questions), initial=resumed, unit="q", disable=args.quiet,
                    desc="questions", dynamic_ncols=True)
    client = _client(args)
    interrupts = Interrupts()
    interrupts.install()
    try:
        pairs = ((q.question, q.context) for q in todo)
        for index, outcome in client.answer_as_completed(pairs, top_k=args.top_k,
                                                         max_answer_length=args.max_answer_length,
                                                         max_in_flight=args.concurrency):
            if isinstance(outcome, AuthenticationError):  # every question would be refused alike: stop now
                raise outcome
            if isinstance(outcome, RequestError):
                failed[todo[index].id] = outcome.server_message
                if outcome.request_id:
                    failed_ids[todo[index].id] = outcome.request_id
            else:
                with interrupts.deferred():  # an answer is on disk and counted, or neither
                    journal.add(_record(todo[index].id, outcome))
            progress.update()
    except KeyboardInterrupt:
        progress.close()
        print(f"bert-squad-predict: interrupted; {len(journal.answers)} of {len(questions)} answered and kept in "
              f"{journal.path}: run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ServerUnavailable, DeadlineExceeded, AuthenticationError) as error:
        progress.close()
        print(f"bert-squad-predict: error: {error}\n{len(journal.answers)} of {len(questions)} answered and kept "
              f"in {journal.path}: run the same command again to continue", file=sys.stderr)
        return EXIT_ERROR
    finally:
        interrupts.uninstall()
        client.close()
        journal.close()
    progress.close()

    answers = journal.answers
    predictions = {q.id: answers[q.id]["answer"] for q in questions if q.id in answers}
    write_atomically(args.output, json.dumps(predictions, ensure_ascii=False, indent=1).encode("utf-8"))
    # a journal written before versions were recorded has no model_version in its lines: null, as for a server
    # that does not say
    versions = {q.id: answers[q.id].get("model_version") for q in questions if q.id in answers}
    write_atomically(versions_path(args.output), json.dumps(versions, indent=1).encode("utf-8"))
    if args.nbest:
        nbest = {q.id: answers[q.id]["nbest"] for q in questions if q.id in answers}
        write_atomically(args.nbest, json.dumps(nbest, ensure_ascii=False, indent=1).encode("utf-8"))
    if failed:
        errors_path = args.output.with_name(args.output.name + ".errors.json")
        write_atomically(errors_path, json.dumps(failed, ensure_ascii=False, indent=1).encode("utf-8"))
        first = next(iter(failed.items()))
        found = f", request id {failed_ids[first[0]]}" if first[0] in failed_ids else ""
        print(f"bert-squad-predict: the server refused {len(failed)} of {len(questions)} questions (first: "
              f"{first[0]}: {first[1]}{found}); all refusals are in {errors_path}. {len(predictions)} answers are in "
              f"{args.output}; re-running asks only the refused questions again", file=sys.stderr)
        return EXIT_SOME_FAILED
    os.unlink(journal.path)
    args.output.with_name(args.output.name + ".errors.json").unlink(missing_ok=True)  # from an earlier run
    print(f"bert-squad-predict: {len(predictions)} answers written to {args.output} ({resumed} of them from the "
          f"journal of an earlier run); {_versions_said(versions)}, per answer in {versions_path(args.output)}",
          file=sys.stderr)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (InputError, BertSquadError, ValueError) as error:
        print(f"bert-squad-predict: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:
        print(f"bert-squad-predict: error: {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
