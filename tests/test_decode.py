"""Answers decoded from scores whose peak sits on a known span.

Expected token positions come from tokenizing the text before the answer and the
answer itself, not from the windows under test.
"""
import json

import numpy as np
import pytest
from conftest import SQUAD_DEV

from bert_squad import settings
from bert_squad.text.decode import NO_ANSWER, Answer, decode
from bert_squad.errors import InputError
from bert_squad.text.tokenizer import load_tokenizer
from bert_squad.text.windows import build_features

pytestmark = pytest.mark.pure


@pytest.fixture(scope="module")
def tokenizer(vocab_file):
    return load_tokenizer(str(vocab_file))


@pytest.fixture(scope="module")
def squad():
    """Question id -> (question, context, answers) of the whole SQuAD v1.1 dev set."""
    assert SQUAD_DEV.is_file(), f"SQuAD dev file missing: {SQUAD_DEV}"
    data = json.loads(SQUAD_DEV.read_text(encoding="utf-8"))["data"]
    return {
        qa["id"]: (qa["question"], p["context"], qa["answers"])
        for article in data
        for p in article["paragraphs"]
        for qa in p["qas"]
    }


def answer_tokens(tokenizer, context, start, text):
    """First and last context token of an answer, counted from the text alone."""
    assert context[start : start + len(text)] == text
    first = len(tokenizer.tokenize_context(context[:start])[0])
    return first, first + len(tokenizer.tokenize_context(text)[0]) - 1


def peaked_scores(features, q_len, first, last, windows=None, seed=0):
    """Low random scores with a peak on context tokens first..last, in the windows that hold both.

    Window w starts at context token 128 * w; its tokens sit after [CLS] question [SEP].
    """
    rng = np.random.default_rng(seed)
    start = rng.uniform(-6, -4, features.input_ids.shape).astype(np.float32)
    end = rng.uniform(-6, -4, features.input_ids.shape).astype(np.float32)
    holding = []
    for w, length in enumerate(features.lengths):
        offset = q_len + 2 - settings.DOC_STRIDE * w
        if q_len + 2 <= first + offset and last + offset < length - 1:
            holding.append(w)
            if windows is None or w in windows:
                start[w, first + offset] = 5.0
                end[w, last + offset] = 5.0
    return start, end, holding


CASES = {
    # question id: (answer index, why it is here)
    "56beb4e43aeaaa14008c9269": (0, "Wade Phillips, answer in both of 2 windows"),
    "5726c3da708984140094d0db": (0, "narcotic drugs: 5 windows, owned by the 3rd"),
    "5726bc1add62a815002e8eaa": (0, "between 3 and 14 hours a week: only in the 4th window"),
    "56dfa01738dc42170015211d": (0, "(1893) in brackets"),
    "56beb6533aeaaa14008c928d": (0, "(4,530) with an inner comma"),
    "573362b94776f41900660975": (0, "(1688–1692). with an en dash"),
    "56e202e9e3433e1400423240": (0, "a title in quotes"),
    "56beaf5e3aeaaa14008c91ff": (0, "Beyoncé"),
    "57336755d058e614000b5a40": (0, "Łazienki"),
    "573382d24776f41900660c37": (0, "(Śródmieście),"),
    "56e0c0c7231d4119001ac378": (0, "Gospić, Austrian Empire"),
    "57285ed5ff5b5019007da1b6": (2, "元朝; Chinese characters"),
    "5728809f2ca10214002da40e": (0, "(授時暦) Chinese characters in brackets"),
}


@pytest.mark.parametrize("qid", CASES)
def test_squad_answers_are_cut_from_the_context(tokenizer, squad, qid):
    question, context, answers = squad[qid]
    expected = answers[CASES[qid][0]]
    features = build_features(tokenizer, question, context)
    q_len = min(len(tokenizer.tokenize_question(question)), settings.MAX_QUERY_LENGTH)
    first, last = answer_tokens(tokenizer, context, expected["answer_start"], expected["text"])
    start, end, holding = peaked_scores(features, q_len, first, last)
    assert holding, "the answer must lie inside some window"
    best = decode(start, end, features, context)
    assert len(best) == 1
    assert best[0].text == expected["text"]
    assert best[0].start == expected["answer_start"]
    assert best[0].end == expected["answer_start"] + len(expected["text"])
    assert 0.9 < best[0].score <= 1.0


def test_only_the_window_with_most_context_may_start_an_answer(tokenizer, squad):
    question, context, answers = squad["5726c3da708984140094d0db"]  # "narcotic drugs"
    features = build_features(tokenizer, question, context)
    q_len = len(tokenizer.tokenize_question(question))
    first, last = answer_tokens(tokenizer, context, answers[0]["answer_start"], answers[0]["text"])
    # By hand: 27 question tokens leave 354 context tokens per window; windows start at
    # 0, 128, 256, 384, 512. Token 453 has min(left, right) context 28 in window 1,
    # 156 in window 2, 69 in window 3: window 2 owns it.
    assert (q_len, first, len(features.lengths)) == (27, 453, 5)
    span = (answers[0]["answer_start"], answers[0]["answer_start"] + len(answers[0]["text"]))
    start, end, holding = peaked_scores(features, q_len, first, last, windows=[1, 3])
    assert holding == [1, 2, 3]
    found = decode(start, end, features, context, top_k=settings.MAX_TOP_K)
    assert span not in [(a.start, a.end) for a in found]
    start, end, _ = peaked_scores(features, q_len, first, last, windows=[2])
    best = decode(start, end, features, context)[0]
    assert (best.start, best.end) == span


CONTEXT = "Denver Broncos beat Carolina Panthers."
# [CLS] which ? [SEP] denver(4) broncos(5) beat(6) carolina(7) panthers(8) .(9) [SEP](10)


@pytest.fixture()
def small(tokenizer):
    features = build_features(tokenizer, "which?", CONTEXT)
    start = np.full((1, settings.MAX_SEQ_LENGTH), -np.inf, np.float32)
    return features, start, start.copy()


def test_probabilities_are_a_softmax_over_span_sums(small):
    features, start, end = small
    start[0, 4], start[0, 7] = np.log(3.0), 0.0
    end[0, 5], end[0, 8] = 0.0, -np.log(2.0)
    # Sums: (4,5) ln 3, (4,8) ln 1.5, (7,8) ln 0.5, (7,5) ends before it starts.
    # exp: 3, 1.5, 0.5 out of 5.
    found = decode(start, end, features, CONTEXT, top_k=5)
    assert [(a.text, a.start, a.end) for a in found] == [
        ("Denver Broncos", 0, 14),
        ("Denver Broncos beat Carolina Panthers", 0, 37),
        ("Carolina Panthers", 20, 37),
    ]
    assert [a.score for a in found] == pytest.approx([0.6, 0.3, 0.1])
    # The softmax runs over the n-best, not over the answers returned.
    assert decode(start, end, features, CONTEXT)[0].score == pytest.approx(0.6)


def test_log_softmax_and_logits_rank_alike_within_a_window(small):
    features, _, _ = small
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 1, settings.MAX_SEQ_LENGTH))
    n = features.lengths[0]
    logprobs = logits.copy()
    logprobs[:, :, :n] -= np.log(np.exp(logits[:, :, :n]).sum(-1, keepdims=True))
    a = decode(logits[0], logits[1], features, CONTEXT, top_k=5)
    b = decode(logprobs[0], logprobs[1], features, CONTEXT, top_k=5)
    assert [(x.start, x.end) for x in a] == [(x.start, x.end) for x in b]
    assert [x.score for x in a] == pytest.approx([x.score for x in b])
    assert all(x.score >= y.score for x, y in zip(a, a[1:])) and sum(x.score for x in a) <= 1.0


@pytest.mark.parametrize(
    "start_at, end_at, why",
    [
        (7, 5, "end before start"),
        (1, 2, "span in the question"),
        (0, 0, "[CLS]"),
        (4, 10, "end on the final [SEP]"),
        (20, 30, "padding"),
    ],
)
def test_invalid_spans_are_never_answers(small, start_at, end_at, why):
    features, start, end = small
    start[0, start_at] = end[0, end_at] = 10.0
    assert decode(start, end, features, CONTEXT) == [NO_ANSWER]


def test_a_lone_valid_span_wins_however_unlikely(small):
    features, start, end = small
    start[0, 4] = end[0, 4] = -30.0
    assert decode(start, end, features, CONTEXT, top_k=3) == [Answer("Denver", 0, 6, 1.0)]


def test_padding_scores_do_not_matter(small):
    features, start, end = small
    start[0, 7] = end[0, 8] = 0.0
    start[0, 11:] = end[0, 11:] = 50.0  # raw logits of padding may be anything
    assert decode(start, end, features, CONTEXT)[0].text == "Carolina Panthers"


def test_answer_length_limit_in_tokens(tokenizer):
    context = " ".join(["word"] * 40)
    features = build_features(tokenizer, "which?", context)
    start = np.full((1, settings.MAX_SEQ_LENGTH), -np.inf)
    end = start.copy()
    start[0, 4] = end[0, 4 + 30] = 0.0  # a 31-token span
    assert decode(start, end, features, context) == [NO_ANSWER]
    assert decode(start, end, features, context, max_answer_length=31)[0].end == len(context) - 9 * 5
    end[0, 4 + 29] = 0.0  # 30 tokens fit the default limit
    assert decode(start, end, features, context)[0].text == " ".join(["word"] * 30)


def test_same_span_counts_once(tokenizer):
    # A Hangul syllable becomes three word pieces with the same character span.
    context = "한국 team"
    features = build_features(tokenizer, "which?", context)
    assert features.char_offsets[0, 4:7].tolist() == [[0, 1]] * 3
    start = np.full((1, settings.MAX_SEQ_LENGTH), -np.inf)
    end = start.copy()
    start[0, 4:7] = 0.0
    end[0, 4:7] = 0.0
    found = decode(start, end, features, context, top_k=5)
    assert found == [Answer("한", 0, 1, 1.0)]


def test_scores_may_be_cut_to_a_bucket_or_given_per_window(tokenizer, squad):
    question, context, answers = squad["56beb4e43aeaaa14008c9269"]
    features = build_features(tokenizer, question, context)
    q_len = len(tokenizer.tokenize_question(question))
    first, last = answer_tokens(tokenizer, context, answers[0]["answer_start"], answers[0]["text"])
    start, end, _ = peaked_scores(features, q_len, first, last)
    padded = decode(start, end, features, context, top_k=3)
    bucket = min(b for b in settings.BUCKETS if b >= features.lengths.max())
    assert decode(start[:, :bucket], end[:, :bucket], features, context, top_k=3) == padded
    rows = [(s[:n], e[:n]) for s, e, n in zip(start, end, features.lengths)]
    assert decode([r[0] for r in rows], [r[1] for r in rows], features, context, top_k=3) == padded
    with pytest.raises(ValueError, match="window 0 has .* tokens but scores for only 100"):
        decode(start[:, :100], end[:, :100], features, context)
    with pytest.raises(ValueError, match="scores for 1 / 1 windows, features have 2"):
        decode(start[:1], end[:1], features, context)
    start[1, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        decode(start, end, features, context)


def test_top_k_answers_are_ranked(tokenizer, small):
    features, _, _ = small
    rng = np.random.default_rng(2)
    start, end = rng.normal(size=(2, 1, settings.MAX_SEQ_LENGTH))
    found = decode(start, end, features, CONTEXT, top_k=np.int32(4))
    assert len(found) == 4
    assert all(a.score >= b.score for a, b in zip(found, found[1:]))
    assert all(0.0 <= a.score <= 1.0 and CONTEXT[a.start : a.end] == a.text for a in found)
    assert len({(a.start, a.end) for a in found}) == 4
    assert decode(start, end, features, CONTEXT, top_k=np.array(4, np.int32)) == found


@pytest.mark.parametrize(
    "options, message",
    [
        ({"top_k": 0}, "top_k is 0; use a value from 1 to 20"),
        ({"top_k": settings.MAX_TOP_K + 1}, "top_k is 21"),
        ({"top_k": 1.5}, "top_k must be a whole number"),
        ({"top_k": "3"}, "top_k must be a whole number"),
        ({"max_answer_length": 0}, "max_answer_length is 0"),
    ],
)
def test_bad_options_are_clear_errors(small, options, message):
    features, start, end = small
    with pytest.raises(InputError, match=message):
        decode(start, end, features, CONTEXT, **options)
