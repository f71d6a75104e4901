"""WordPiece tokenization of questions and contexts, with character offsets.

The uncased BERT rules (clean control characters, lower-case, strip accents, split
punctuation, one token per CJK character) run in the Rust `tokenizers` library; its
offsets point into the original Python string, so an answer can be cut from the
context exactly as the user wrote it instead of being rebuilt from word pieces.
"""
from __future__ import annotations

import functools
import os
import unicodedata
from typing import List, Tuple

import numpy as np
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


class BertTokenizer:
    """A BERT WordPiece vocabulary with the ids the windows need."""

    def __init__(self, vocab_file: str, do_lower_case: bool = True):
        if not os.path.isfile(vocab_file):
            raise FileNotFoundError(
                f"vocab file {vocab_file!r} not found; pass the vocab.txt the model was trained with"
            )
        tokenizer = Tokenizer(WordPiece.from_file(vocab_file, unk_token="[UNK]"))
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(
                f"vocab file {vocab_file!r} lacks {', '.join(missing)}; it is not a BERT vocab.txt"
            )
        # Original BERT strips accents only when it lower-cases.
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=True,
            strip_accents=do_lower_case,
            lowercase=do_lower_case,
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self._tokenizer = tokenizer
        self.vocab_file = vocab_file
        self.do_lower_case = do_lower_case
        self.pad_id = tokenizer.token_to_id("[PAD]")
        self.cls_id = tokenizer.token_to_id("[CLS]")
        self.sep_id = tokenizer.token_to_id("[SEP]")

    def tokenize_question(self, text: str) -> np.ndarray:
        """Token ids (int32) of a question; it needs no offsets."""
        return np.array(self._tokenizer.encode(text, add_special_tokens=False).ids, np.int32)

    def tokenize_context(self, text: str) -> Tuple[np.ndarray, np.ndarray]:
        """Token ids (int32 [n]) and [start, end) character offsets (int32 [n, 2]) into `text`."""
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        offsets = np.array(encoding.offsets, np.int32).reshape(-1, 2)
        # Stripping accents drops combining marks (NFD "e" + U+0301), and the token then
        # ends before the mark; give it back so the answer keeps the accent.
        for i in range(len(offsets)):
            limit = offsets[i + 1, 0] if i + 1 < len(offsets) else len(text)
            end = offsets[i, 1]
            while end < limit and unicodedata.category(text[end]) == "Mn":
                end += 1
            offsets[i, 1] = end
        return np.array(encoding.ids, np.int32), offsets

    def convert_ids_to_tokens(self, ids) -> List[str]:
        """Vocabulary strings of ids, to read what the model sees."""
        return [self._tokenizer.id_to_token(int(i)) for i in ids]


@functools.lru_cache(maxsize=8)
def _cached(vocab_file: str, do_lower_case: bool) -> BertTokenizer:
    return BertTokenizer(vocab_file, do_lower_case)


def load_tokenizer(vocab_file: str, do_lower_case: bool = True) -> BertTokenizer:
    """The tokenizer of `vocab_file`, built once per file and reused by every request."""
    return _cached(os.path.realpath(vocab_file), bool(do_lower_case))
