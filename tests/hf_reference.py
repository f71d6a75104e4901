"""Reference start/end logits from Hugging Face transformers (PyTorch).

Run by tests/test_hf_parity.py with the Python 3.11 environment that has torch and
transformers (never imported by the MindSpore side):

    python hf_reference.py MODEL_DIR INPUTS.npz OUTPUT.npz

INPUTS.npz holds one or more cases, each as CASE/input_ids, CASE/input_mask and
CASE/token_type_id ([batch, seq] integers; cases may differ in shape). OUTPUT.npz
receives CASE/start_logits and CASE/end_logits ([batch, seq] float32).
"""

import argparse
import sys

import numpy as np
import torch
from transformers import BertForQuestionAnswering


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("model_dir")
    parser.add_argument("inputs")
    parser.add_argument("output")
    args = parser.parse_args()

    model, info = BertForQuestionAnswering.from_pretrained(
        args.model_dir, output_loading_info=True, attn_implementation="eager"
    )
    if info["missing_keys"]:  # transformers would fill them with random values
        print(f"weights missing from {args.model_dir}: {info['missing_keys']}", file=sys.stderr)
        return 1
    model.eval()
    data = np.load(args.inputs)
    cases = sorted({key.split("/")[0] for key in data.files})
    results = {}
    with torch.no_grad():
        for case in cases:
            out = model(
                input_ids=torch.from_numpy(data[f"{case}/input_ids"].astype(np.int64)),
                attention_mask=torch.from_numpy(data[f"{case}/input_mask"].astype(np.int64)),
                token_type_ids=torch.from_numpy(data[f"{case}/token_type_id"].astype(np.int64)),
            )
            results[f"{case}/start_logits"] = out.start_logits.numpy().astype(np.float32)
            results[f"{case}/end_logits"] = out.end_logits.numpy().astype(np.float32)
    np.savez(args.output, **results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
