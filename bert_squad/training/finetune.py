"""bert-squad-finetune: fine-tune a BERT checkpoint (model zoo .ckpt, Hugging Face folder, or a pre-trained
encoder without a span head) for SQuAD v1.1 extractive QA with MindSpore, on CPU, GPU or Ascend.

OUTPUT/model/ is a Hugging Face BertForQuestionAnswering folder (config.json, model.safetensors, vocab.txt,
tokenizer_config.json) that bert-squad-export takes as it is; --export exports it at the end. OUTPUT/checkpoints/
holds a resumable checkpoint every --save-steps optimizer steps, and one at the step a Ctrl-C (SIGINT or SIGTERM)
stops the run at: the same command, run again, resumes from the last one, with no step lost or repeated (after a
kill, the steps since the last checkpoint are computed again). Without dropout it ends with the same weights as an
uninterrupted run, bit for bit (trainer.py: why not with dropout).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from bert_squad import settings
from bert_squad.training.data import TrainDataError, TrainWindows, build_train_windows, read_train_file

CHECKPOINTS = "checkpoints"
MODEL = "model"
STATE_FILE = "step-{step:07d}.json"  # beside step-N.ckpt: written last, so its presence marks a complete checkpoint
KEEP_CHECKPOINTS = 2
# One {"step", "loss", "seconds", "cpu_seconds"} line per step (time since this process began training; CPU time of
# all its threads, which tells the cost of a step on a machine other jobs share).
LOSS_LOG = "loss.jsonl"
HEAD_STD = 0.02  # a new span head starts as BERT initialises its weights (normal, std 0.02; bias 0)


class FinetuneError(Exception):
    """The run cannot start or go on; the message says what to change."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


class _Stop:
    """SIGINT / SIGTERM while training: finish the step under way, save it, stop (a step is saved whole or not)."""

    def __init__(self):
        self.asked = False
        self._previous: dict = {}

    def __enter__(self) -> "_Stop":
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._ask)
        return self

    def _ask(self, signum, frame) -> None:
        self.asked = True

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


@dataclass(frozen=True)
class Recipe:
    """What decides the weights: a resumed run must have the same (it is stored with every checkpoint)."""

    checkpoint_sha256: str
    train_sha256: str
    titles: Optional[Tuple[str, ...]]
    seq_length: int
    doc_stride: int
    max_query_length: int
    epochs: int
    batch_size: int
    grad_accumulation: int
    learning_rate: float
    warmup: float
    weight_decay: float
    max_grad_norm: float
    dropout: float
    seed: int
    fp16: bool


def learning_rate(recipe: Recipe, step: int, total: int) -> float:
    """Linear warm-up over ceil(warmup x total) steps from 0, then linear decay to 0 (Hugging Face's schedule)."""
    warm = math.ceil(recipe.warmup * total)
    if step < warm:
        return recipe.learning_rate * step / warm
    return recipe.learning_rate * max(0.0, (total - step) / max(1, total - warm))


def step_batches(windows: TrainWindows, recipe: Recipe, step: int) -> List[Tuple[np.ndarray, ...]]:
    """The micro-batches of optimizer step `step`: the windows of that place in its epoch's order (a permutation
    seeded by seed + epoch), padded with rows of weight 0 to full size; the real rows' weights sum to 1."""
    per_epoch = math.ceil(len(windows) / recipe.batch_size)
    epoch, k = divmod(step, per_epoch)
    order = np.random.RandomState(recipe.seed + epoch).permutation(len(windows))
    chosen = order[k * recipe.batch_size:(k + 1) * recipe.batch_size]
    weight = np.zeros(recipe.batch_size, np.float32)
    weight[:len(chosen)] = 1.0 / len(chosen)
    rows = np.concatenate([chosen, np.zeros(recipe.batch_size - len(chosen), np.int64)])
    seq = recipe.seq_length
    arrays = (windows.input_ids[rows, :seq], windows.input_mask[rows, :seq], windows.token_type_id[rows, :seq],
              windows.start[rows], windows.end[rows], weight)
    micro = recipe.batch_size // recipe.grad_accumulation
    return [tuple(np.ascontiguousarray(a[i:i + micro]) for a in arrays)
            for i in range(0, recipe.batch_size, micro)]


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bert-squad-finetune", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="zoo .ckpt file, or Hugging Face folder (config.json, "
                   "model.safetensors, vocab.txt); a BertModel without a span head gets a new one")
    p.add_argument("train_file", type=Path, help="SQuAD v1.1 JSON, or JSON Lines of {id, question, context, "
                   "answers: [{text, answer_start}]}; the first answer of each question is its label")
    p.add_argument("--output-dir", type=Path, required=True, help="where model/ and checkpoints/ go")
    p.add_argument("--titles", type=Path, help="JSON list of article titles: train on those articles only")
    p.add_argument("--vocab", type=Path, help="vocab.txt of a .ckpt (default: the Hub checkpoint's verified one)")
    p.add_argument("--config", type=Path, help="config of a .ckpt that is not BERT-base (see bert-squad-export)")
    p.add_argument("--seq-length", type=int, default=settings.MAX_SEQ_LENGTH,
                   help="training window length (default %(default)s, the serving one; shorter trains faster)")
    p.add_argument("--doc-stride", type=int, default=settings.DOC_STRIDE,
                   help="tokens between window starts (default %(default)s)")
    p.add_argument("--epochs", type=int, default=settings.FINETUNE_EPOCHS, help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=settings.FINETUNE_BATCH_SIZE,
                   help="windows per optimizer step (default %(default)s)")
    p.add_argument("--grad-accumulation", type=int, default=1,
                   help="micro-batches per step, to fit memory: batch-size / this windows at a time (default 1)")
    p.add_argument("--learning-rate", type=float, default=settings.FINETUNE_LEARNING_RATE, help="default %(default)s")
    p.add_argument("--warmup", type=float, default=settings.FINETUNE_WARMUP,
                   help="fraction of the steps of linear warm-up, then linear decay to 0 (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=settings.FINETUNE_WEIGHT_DECAY, help="default %(default)s")
    p.add_argument("--max-grad-norm", type=float, default=settings.FINETUNE_MAX_GRAD_NORM,
                   help="global gradient norm clip (default %(default)s)")
    p.add_argument("--dropout", type=float, default=settings.FINETUNE_DROPOUT,
                   help="hidden and attention dropout (default %(default)s)")
    p.add_argument("--seed", type=int, default=settings.FINETUNE_SEED, help="default %(default)s")
    p.add_argument("--save-steps", type=int, default=settings.FINETUNE_SAVE_STEPS,
                   help="optimizer steps between resumable checkpoints (default %(default)s)")
    p.add_argument("--device", choices=("cpu", "gpu", "ascend"), default="cpu", help="default %(default)s")
    p.add_argument("--fp16", action="store_true", help="GPU/Ascend: float16 matmuls with dynamic loss scaling")
    p.add_argument("--max-steps", type=int, help="stop (with a checkpoint) after this many optimizer steps; the "
                   "schedule still spans every epoch, and the same command without it resumes")
    p.add_argument("--export", action="store_true", help="export model/ with bert-squad-export at the end")
    p.add_argument("--servable-dir", type=Path, default=None, help="with --export: where to (default: servable/)")
    p.add_argument("--dev-file", type=Path, help="SQuAD v1.1 JSON to evaluate the fine-tuned model on at the end "
                   "(in-process, windows and decoding as served)")
    p.add_argument("--dev-titles", type=Path, help="JSON list of titles: evaluate on those articles of --dev-file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "grad_accumulation", "save_steps", "seq_length", "doc_stride"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.batch_size % args.grad_accumulation:
        p.error("--batch-size must be a multiple of --grad-accumulation")
    if not 0 <= args.dropout < 1 or not 0 <= args.warmup <= 1:
        p.error("--dropout must be in [0, 1) and --warmup in [0, 1]")
    if args.fp16 and args.device == "cpu":
        p.error("--fp16 is for --device gpu or ascend; on CPU MindSpore trains in float32")
    if args.servable_dir and not args.export:
        p.error("--servable-dir goes with --export")
    if args.dev_titles and not args.dev_file:
        p.error("--dev-titles goes with --dev-file")
    return args


def _titles(path: Optional[Path]) -> Optional[Tuple[str, ...]]:
    if path is None:
        return None
    try:
        titles = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"cannot read the titles file {path}: {exc}") from None
    if not isinstance(titles, list) or not all(isinstance(t, str) for t in titles):
        raise FinetuneError(f"{path} must hold a JSON list of article titles")
    return tuple(titles)


def _sha256(path: Path) -> str:
    from bert_squad.metadata import sha256_file

    return sha256_file(path)


def _load_start(args):
    """The checkpoint to start from (with a span head, new if it had none), its vocabulary and lower-casing."""
    from bert_squad.model.checkpoint import CheckpointError, load_checkpoint
    from bert_squad.model.config import ConfigError, read_config_file

    try:
        config = read_config_file(args.config)[0] if args.config else None
        loaded = load_checkpoint(args.checkpoint, config, head_optional=True)
    except (CheckpointError, ConfigError) as exc:
        raise FinetuneError(str(exc)) from None
    vocab = args.vocab or loaded.vocab_file
    if vocab is None:
        from bert_squad.model.vocab import VocabError, uncased_vocab

        if loaded.sha256 != settings.HUB_CHECKPOINT_SHA256:
            raise FinetuneError(f"{args.checkpoint} comes without a vocabulary; pass --vocab")
        try:
            vocab = uncased_vocab()
        except VocabError as exc:
            raise FinetuneError(str(exc)) from None
    if "qa_outputs.weight" not in loaded.weights:
        rng = np.random.RandomState(args.seed)
        loaded.weights["qa_outputs.weight"] = rng.normal(0, HEAD_STD, (2, loaded.config.hidden_size)).astype(np.float32)
        loaded.weights["qa_outputs.bias"] = np.zeros(2, np.float32)
        print(f"bert-squad-finetune: {args.checkpoint} has no span head; starting a new one", flush=True)
    lower = True if loaded.do_lower_case is None else loaded.do_lower_case
    return loaded, Path(vocab), lower


def _latest_checkpoint(folder: Path):
    states = sorted(folder.glob("step-*.json")) if folder.is_dir() else []
    return states[-1] if states else None


def _save(folder: Path, state, recipe: Recipe) -> None:
    import mindspore as ms

    folder.mkdir(parents=True, exist_ok=True)
    entries = [{"name": f"{kind}:{name}", "data": ms.Tensor(array)}
               for kind, arrays in (("weight", state.weights), ("adam_m", state.adam_m), ("adam_v", state.adam_v))
               for name, array in arrays.items()]
    ckpt = folder / STATE_FILE.format(step=state.step).replace(".json", ".ckpt")
    ms.save_checkpoint(entries, str(ckpt))
    meta = {"recipe": asdict(recipe), "step": state.step, "updates": state.updates, "loss_scale": state.loss_scale,
            "good_steps": state.good_steps, "ckpt_sha256": _sha256(ckpt)}
    partial = folder / (STATE_FILE.format(step=state.step) + ".partial")
    partial.write_text(json.dumps(meta, indent=1))
    os.replace(partial, folder / STATE_FILE.format(step=state.step))
    for old in sorted(folder.glob("step-*.json"))[:-KEEP_CHECKPOINTS]:
        old.unlink()
        old.with_suffix(".ckpt").unlink(missing_ok=True)


def _resume(state_file: Path, recipe: Recipe):
    import mindspore as ms

    from bert_squad.training.trainer import TrainState

    meta = json.loads(state_file.read_text())
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["recipe"].items()}
    mine = asdict(recipe)
    differs = sorted(k for k in mine if saved.get(k) != mine[k])
    if differs:
        raise FinetuneError(f"{state_file.parent} holds a run with other settings ({', '.join(differs)}); pass the "
                            "same ones to resume it, or another --output-dir to start a new run")
    ckpt = state_file.with_suffix(".ckpt")
    if not ckpt.is_file() or _sha256(ckpt) != meta["ckpt_sha256"]:
        raise FinetuneError(f"{ckpt} is missing or changed since it was written; remove {state_file} to resume "
                            "from the checkpoint before it")
    arrays = {name: p.asnumpy() for name, p in ms.load_checkpoint(str(ckpt)).items()}
    part = lambda kind: {n.split(":", 1)[1]: a for n, a in arrays.items() if n.startswith(kind + ":")}  # noqa: E731
    return TrainState(weights=part("weight"), adam_m=part("adam_m"), adam_v=part("adam_v"), step=meta["step"],
                      updates=meta["updates"], loss_scale=meta["loss_scale"], good_steps=meta["good_steps"])


def write_model(folder: Path, loaded, weights, vocab: Path, do_lower_case: bool) -> Path:
    """A Hugging Face BertForQuestionAnswering folder of `weights` (our names), as bert-squad-export reads it."""
    import shutil

    from safetensors.numpy import save_file

    from bert_squad.model.checkpoint import weight_names

    config = loaded.config
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {hf: np.ascontiguousarray(weights[ours], np.float32)
               for ours, _, hf in weight_names(config.num_hidden_layers)}
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["BertForQuestionAnswering"], "model_type": "bert", "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads, "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings, "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.layer_norm_eps, "position_embedding_type": "absolute",
        "hidden_act": {"gelu_erf": "gelu", "gelu_tanh": "gelu_new"}[config.hidden_act],
    }, indent=2) + "\n")
    shutil.copyfile(vocab, folder / "vocab.txt")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": do_lower_case}) + "\n")
    return folder


def train(args) -> Path:
    import mindspore as ms
    from mindspore import dtype as mstype
    from tqdm import tqdm

    from bert_squad.text.tokenizer import load_tokenizer
    from bert_squad.training.trainer import TrainState, Trainer

    ms.set_context(mode=ms.GRAPH_MODE, device_target=args.device.upper() if args.device != "ascend" else "Ascend")
    loaded, vocab, lower = _load_start(args)
    titles = _titles(args.titles)
    if args.seq_length > loaded.config.max_position_embeddings:
        raise FinetuneError(f"--seq-length {args.seq_length} exceeds the model's max_position_embeddings "
                            f"{loaded.config.max_position_embeddings}")
    recipe = Recipe(loaded.sha256, _sha256(args.train_file), titles, args.seq_length, args.doc_stride,
                    settings.MAX_QUERY_LENGTH, args.epochs, args.batch_size, args.grad_accumulation,
                    args.learning_rate, args.warmup, args.weight_decay, args.max_grad_norm, args.dropout, args.seed,
                    args.fp16)
    try:
        questions = read_train_file(args.train_file, titles)
        windows = build_train_windows(load_tokenizer(str(vocab), lower), questions, args.seq_length,
                                      args.doc_stride, settings.MAX_QUERY_LENGTH)
    except (TrainDataError, ValueError) as exc:
        raise FinetuneError(str(exc)) from None
    total = args.epochs * math.ceil(len(windows) / args.batch_size)
    checkpoints = args.output_dir / CHECKPOINTS
    args.output_dir.mkdir(parents=True, exist_ok=True)
    latest = _latest_checkpoint(checkpoints)
    if latest:
        state = _resume(latest, recipe)
        print(f"bert-squad-finetune: resuming at step {state.step} of {total} from {latest.with_suffix('.ckpt')}",
              flush=True)
    else:
        state = TrainState(weights=dict(loaded.weights), loss_scale=2.0 ** 16 if args.fp16 else 1.0)
    print(f"bert-squad-finetune: {len(questions)} questions, {len(windows)} windows of {args.seq_length} tokens, "
          f"{total} steps of {args.batch_size}", flush=True)
    stop = min(total, args.max_steps) if args.max_steps else total
    progress = tqdm(total=total, initial=state.step, unit="step", desc="fine-tuning", disable=args.quiet,
                    dynamic_ncols=True, smoothing=0.1)
    compute = mstype.float16 if args.fp16 else mstype.float32
    started, cpu_started, first = time.perf_counter(), time.process_time(), state.step
    trainer = Trainer(loaded.config, state, args.seed, args.dropout, args.weight_decay, args.max_grad_norm, compute,
                      loss_scaling=args.fp16)
    stopping = _Stop()
    with stopping:
        while state.step < stop and not stopping.asked:
            loss = trainer.step(step_batches(windows, recipe, state.step), learning_rate(recipe, state.step, total))
            state = trainer.state
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}", refresh=False)
            with open(args.output_dir / LOSS_LOG, "a") as log:
                log.write(json.dumps({"step": state.step, "loss": loss,
                                      "seconds": round(time.perf_counter() - started, 3),
                                      "cpu_seconds": round(time.process_time() - cpu_started, 3)}) + "\n")
            if state.step % args.save_steps == 0 or state.step == stop or stopping.asked:
                state = trainer.snapshot()
                _save(checkpoints, state, recipe)
    progress.close()
    if stopping.asked:
        raise FinetuneError(f"interrupted after step {state.step} of {total}; its checkpoint is in {checkpoints}: "
                            "the same command resumes from it", status=130)
    done = state.step - first
    print(f"bert-squad-finetune: {done} steps in {time.perf_counter() - started:.1f} s", flush=True)
    if state.step < total:
        print(f"bert-squad-finetune: stopped at step {state.step} of {total} (--max-steps); run again without it "
              "to go on", flush=True)
        return checkpoints
    model = write_model(args.output_dir / MODEL, loaded, state.weights, vocab, lower)
    print(f"bert-squad-finetune: wrote {model} (bert-squad-export {model})", flush=True)
    return model


def evaluate(model: Path, dev_file: Path, titles: Optional[Sequence[str]]) -> dict:
    """EM/F1 of `model` on `dev_file` (the articles in `titles`), in MindSpore, windows and decoding as served."""
    import mindspore as ms

    from bert_squad.model.checkpoint import build_network, load_checkpoint
    from bert_squad.text.decode import decode
    from bert_squad.text.metric import evaluate as score
    from bert_squad.text.tokenizer import load_tokenizer
    from bert_squad.text.windows import build_features

    dataset = json.loads(dev_file.read_text(encoding="utf-8"))
    if titles is not None:
        dataset = {**dataset, "data": [a for a in dataset["data"] if a["title"] in set(titles)]}
    ms.set_context(mode=ms.PYNATIVE_MODE)
    loaded = load_checkpoint(model)
    net = build_network(loaded)
    tokenizer = load_tokenizer(str(model / "vocab.txt"), True if loaded.do_lower_case is None else loaded.do_lower_case)
    predictions = {}
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                f = build_features(tokenizer, qa["question"], paragraph["context"])
                length = int(f.lengths.max())
                start, end = net(*(ms.Tensor(a[:, :length]) for a in (f.input_ids, f.input_mask, f.token_type_id)))
                answers = decode(start.asnumpy(), end.asnumpy(), f, paragraph["context"])
                predictions[qa["id"]] = answers[0].text
    return score(dataset, predictions)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:  # before training started, or while evaluating: nothing to save
        print("bert-squad-finetune: interrupted", file=sys.stderr)
        return 130


def _run(args) -> int:
    try:
        model = train(args)
        if model.name != MODEL:
            return 0
        if args.export:
            from bert_squad.runtimes.lite_lib import REPO_ROOT
            from bert_squad.export.exporter import ExportError, export_version

            try:
                export_version(model, args.servable_dir or REPO_ROOT / "servable",
                               log=lambda line: print(f"bert-squad-export: {line}", flush=True))
            except ExportError as exc:
                raise FinetuneError(f"cannot export {model}: {exc}") from None
        if args.dev_file:
            result = evaluate(model, args.dev_file, _titles(args.dev_titles))
            print(f"bert-squad-finetune: dev exact_match {result['exact_match']:.2f}  f1 {result['f1']:.2f}  "
                  f"({result['total']} questions)", flush=True)
    except FinetuneError as exc:
        print(f"bert-squad-finetune: {'error: ' if exc.status == 2 else ''}{exc}", file=sys.stderr)
        return exc.status
    return 0


if __name__ == "__main__":
    sys.exit(main())
