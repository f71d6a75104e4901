"""Windows built from a question and a context, checked against hand-worked layouts."""
import json

import numpy as np
import pytest

from bert_squad import settings
from bert_squad.errors import InputError
from bert_squad.text.tokenizer import load_tokenizer
from bert_squad.text.windows import build_features

pytestmark = pytest.mark.pure


@pytest.fixture(scope="module")
def tokenizer(vocab_file):
    return load_tokenizer(str(vocab_file))


@pytest.fixture(scope="module")
def words(tokenizer):
    """Vocabulary words that are one token on their own, to build contexts of known length."""
    found = []
    for token in tokenizer.convert_ids_to_tokens(range(3000, 6000)):
        if token.isalpha() and token.isascii() and len(token) > 3:
            if len(tokenizer.tokenize_question(token)) == 1:
                found.append(token)
    assert len(found) > 200
    return found


def test_single_window_layout(tokenizer):
    f = build_features(tokenizer, "who won?", "Denver Broncos won.")
    tokens = tokenizer.convert_ids_to_tokens(f.input_ids[0])
    assert tokens[:10] == ["[CLS]", "who", "won", "?", "[SEP]", "denver", "broncos", "won", ".", "[SEP]"]
    assert set(tokens[10:]) == {"[PAD]"}
    assert f.input_ids.shape == f.input_mask.shape == f.token_type_id.shape == (1, settings.MAX_SEQ_LENGTH)
    assert {a.dtype.name for a in (f.input_ids, f.input_mask, f.token_type_id, f.lengths)} == {"int32"}
    assert f.lengths.tolist() == [10]
    assert f.input_mask[0].tolist() == [1] * 10 + [0] * 374
    assert f.token_type_id[0].tolist() == [0] * 5 + [1] * 5 + [0] * 374
    assert f.char_offsets[0, 5:9].tolist() == [[0, 6], [7, 14], [15, 18], [18, 19]]
    assert (f.char_offsets[0, :5] == -1).all() and (f.char_offsets[0, 9:] == -1).all()
    assert f.max_context[0].tolist() == [False] * 5 + [True] * 4 + [False] * 375


def test_question_is_truncated_to_max_query_length(tokenizer, words):
    question = " ".join(words[:100])
    f = build_features(tokenizer, question, "a short context")
    assert f.input_ids[0, 1:65].tolist() == tokenizer.tokenize_question(question)[:64].tolist()
    assert tokenizer.convert_ids_to_tokens(f.input_ids[0, 65:69]) == ["[SEP]", "a", "short", "context"]


@pytest.mark.parametrize(
    "n_words, stride, windows",
    [
        # One question token, 16 positions: 12 context tokens per window. A word belongs to
        # the window where min(left, right) context is largest (+0.01 x window length), the
        # earlier window on a tie. Worked out by hand: (first word, owned words) per window.
        # Windows 0-11, 4-15, 8-19, 12-21 (the last one shorter).
        (22, 4, [(0, range(0, 8)), (4, range(8, 12)), (8, range(12, 16)), (12, range(16, 22))]),
        # Windows 0-11 and 3-14; word 7 has min context 4 in both: the first window keeps it.
        (15, 3, [(0, range(0, 8)), (3, range(8, 15))]),
    ],
)
def test_windows_and_max_context_hand_checked(tokenizer, words, n_words, stride, windows):
    context = " ".join(words[:n_words])
    word_starts = [len(" ".join(words[:i])) + (i > 0) for i in range(n_words)]
    f = build_features(tokenizer, "why", context, max_seq_length=16, doc_stride=stride, max_query_length=1)
    assert f.lengths.tolist() == [4 + min(12, n_words - first) for first, _ in windows]
    for w, (first, owned) in enumerate(windows):
        n = f.lengths[w] - 4
        assert f.char_offsets[w, 3 : 3 + n, 0].tolist() == word_starts[first : first + n]
        owner_words = [word_starts.index(s) for s in f.char_offsets[w, f.max_context[w], 0]]
        assert owner_words == list(owned)
        assert tokenizer.convert_ids_to_tokens(f.input_ids[w, :3]) == ["[CLS]", "why", "[SEP]"]
        assert tokenizer.convert_ids_to_tokens(f.input_ids[w, 3 + n : 4 + n]) == ["[SEP]"]


def test_long_squad_context_every_token_has_one_owner(tokenizer, squad_head):
    data = json.loads(squad_head.read_text(encoding="utf-8"))["data"]
    paragraph = data[0]["paragraphs"][12]  # Super_Bowl_50, the longest context of the file
    context, question = paragraph["context"], paragraph["qas"][0]["question"]
    ids, offsets = tokenizer.tokenize_context(context)
    q = len(tokenizer.tokenize_question(question))
    f = build_features(tokenizer, question, context)
    assert len(ids) > 384 - q - 3 and len(f.lengths) == 2
    # Second window starts one stride into the context and runs to its end.
    assert f.char_offsets[1, q + 2].tolist() == offsets[128].tolist()
    assert f.lengths[1] == q + 3 + len(ids) - 128
    owned = np.concatenate([f.char_offsets[w][f.max_context[w]] for w in range(2)])
    assert owned.tolist() == offsets.tolist()
    owned_ids = np.concatenate([f.input_ids[w][f.max_context[w]] for w in range(2)])
    assert owned_ids.tolist() == ids.tolist()


def test_stride_must_be_smaller_than_the_room_for_context(tokenizer):
    room = settings.MAX_SEQ_LENGTH - settings.MAX_QUERY_LENGTH - 3
    with pytest.raises(InputError, match=rf"doc_stride \({room}\) must be .* smaller .* = {room}"):
        build_features(tokenizer, "who?", "some context", doc_stride=room)
    with pytest.raises(InputError, match="doc_stride"):
        build_features(tokenizer, "who?", "some context", doc_stride=0)
    assert len(build_features(tokenizer, "who?", "word " * 600, doc_stride=room - 1).lengths) == 2


def test_sequence_must_hold_the_question(tokenizer):
    with pytest.raises(InputError, match="max_seq_length"):
        build_features(tokenizer, "who?", "context", max_seq_length=67, max_query_length=64)


@pytest.mark.parametrize(
    "question, context, message",
    [
        ("", "context", "question is empty"),
        ("  \n\t", "context", "question is empty"),
        ("who?", "", "context is empty"),
        ("who?", "\u00a0 \n", "context is empty"),
        (None, "context", "question must be a string"),
        ("who?", b"bytes", "context must be a string"),
        ("x" * (settings.MAX_QUESTION_CHARS + 1), "context", "question has .* more than the limit"),
        ("who?", "x " * settings.MAX_CONTEXT_CHARS, "context has .* more than the limit"),
        ("\x00\x01\u200b", "context", "question has no tokens"),
        ("who?", "\x07\ufeff", "context has no tokens"),
    ],
)
def test_bad_input_is_a_clear_error(tokenizer, question, context, message):
    with pytest.raises(InputError, match=message) as caught:
        build_features(tokenizer, question, context)
    assert isinstance(caught.value, ValueError)
