"""The text pipeline: tokenization, windows, decoding, the SQuAD metric. No MindSpore import."""
