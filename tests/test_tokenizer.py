"""WordPiece tokens and their character offsets into the original text."""
import json
import os
import unicodedata

import pytest

from bert_squad.text.tokenizer import load_tokenizer

pytestmark = pytest.mark.pure


@pytest.fixture(scope="module")
def tokenizer(vocab_file):
    return load_tokenizer(str(vocab_file))


def pieces(tokenizer, text):
    ids, offsets = tokenizer.tokenize_context(text)
    return list(zip(tokenizer.convert_ids_to_tokens(ids), map(tuple, offsets.tolist())))


def test_tokens_and_offsets_hand_checked(tokenizer):
    # C0 a1 f2 é3 _4 _5 M6 ü7 l8 l9 e10 r11 ,12 _13 1895 at 14-17, – 18, 1943 at 19-22, . 23
    assert pieces(tokenizer, "Café  Müller, 1895–1943.") == [
        ("cafe", (0, 4)),
        ("muller", (6, 12)),
        (",", (12, 13)),
        ("1895", (14, 18)),
        ("–", (18, 19)),
        ("1943", (19, 23)),
        (".", (23, 24)),
    ]


def test_chinese_characters_are_single_tokens(tokenizer):
    assert pieces(tokenizer, "北京大学 ok") == [
        ("北", (0, 1)), ("京", (1, 2)), ("大", (2, 3)), ("学", (3, 4)), ("ok", (5, 7)),
    ]


def test_offsets_count_python_characters_not_bytes(tokenizer):
    # Each emoji is one Python character (4 UTF-8 bytes, 2 UTF-16 units).
    assert pieces(tokenizer, "😀😀 ok a😀b")[-2:] == [("ok", (3, 5)), ("[UNK]", (6, 9))]


def test_combining_accent_stays_with_its_letter(tokenizer):
    text = "cafe\u0301 noe\u0308l"  # decomposed é and ë
    assert pieces(tokenizer, text) == [("cafe", (0, 5)), ("noel", (6, 11))]


def fold(text):
    """What uncased BERT makes of a piece of text, written independently of the library."""
    text = unicodedata.normalize("NFD", text.lower())
    return "".join(c for c in text if unicodedata.category(c) not in ("Mn", "Cc", "Cf"))


@pytest.mark.parametrize(
    "text",
    [
        "Ångström's café (Zürich), naïve coöperation",
        "I ❤️ 😀 tests, 北京 and 東京",
        "control\x00chars\x07here\tand\x1fthere",
        "many    spaces\n\n and\r\nlines",
        "10\u00a0km\u2009away\u202fnow",
        "zero\u200bwidth\u200djoiner\ufeffBOM",
        "Москва Αθήνα 한국어",
        "cafe\u0301 noe\u0308l",
    ],
)
def test_offsets_point_at_the_text_of_each_token(tokenizer, text):
    spans = {}  # several pieces may share one character's span (a Hangul syllable has 2-3 jamo)
    for token, span in pieces(tokenizer, text):
        spans.setdefault(span, []).append(token)
    previous_end = 0
    for (start, end), tokens in spans.items():
        assert previous_end <= start < end <= len(text)
        previous_end = end
        if "[UNK]" not in tokens:
            assert "".join(t[2:] if t.startswith("##") else t for t in tokens) == fold(text[start:end])
    words = [w for w in fold(text).split() if w]
    assert len(spans) >= len(words)


def test_question_and_context_tokenize_alike(tokenizer):
    text = "Which NFL team represented the AFC at Super Bowl 50?"
    assert tokenizer.tokenize_question(text).tolist() == tokenizer.tokenize_context(text)[0].tolist()
    assert tokenizer.tokenize_question(text).dtype.name == "int32"


def test_do_lower_case_is_honoured(tokenizer, vocab_file):
    cased = load_tokenizer(str(vocab_file), do_lower_case=False)
    assert cased is not tokenizer
    # The uncased vocabulary only knows the lower-case word.
    assert cased.convert_ids_to_tokens(cased.tokenize_question("Paris")) == ["[UNK]"]
    assert tokenizer.convert_ids_to_tokens(tokenizer.tokenize_question("Paris")) == ["paris"]


def test_tokenizer_is_cached_per_file(tokenizer, vocab_file, tmp_path):
    link = tmp_path / "vocab.txt"
    os.symlink(vocab_file, link)
    assert load_tokenizer(str(vocab_file)) is tokenizer
    assert load_tokenizer(str(link)) is tokenizer


def test_missing_vocab_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab file .*nothing.txt.* not found"):
        load_tokenizer(str(tmp_path / "nothing.txt"))


def test_vocab_without_bert_tokens_is_refused(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[UNK]\nhello\nworld\n")
    with pytest.raises(ValueError, match=r"lacks \[PAD\], \[CLS\], \[SEP\]"):
        load_tokenizer(str(vocab))


@pytest.fixture(scope="module")
def squad_paragraphs(squad_head):
    data = json.loads(squad_head.read_text(encoding="utf-8"))["data"]
    return [p for article in data for p in article["paragraphs"]]


def reference_words(text):
    """Words as the reference SQuAD code splits a context before tokenizing each one."""
    return "".join(" " if c in " \t\r\n\u202f" else c for c in text).split(" ")


def test_whole_context_tokenizes_as_word_by_word(tokenizer, squad_paragraphs):
    for paragraph in squad_paragraphs:
        context = paragraph["context"]
        word_by_word = [i for w in reference_words(context) if w for i in tokenizer.tokenize_context(w)[0]]
        assert tokenizer.tokenize_context(context)[0].tolist() == word_by_word


def test_tokens_match_the_pure_python_bert_tokenizer(tokenizer, vocab_file, squad_paragraphs):
    # transformers >= 5 keeps its original pure-Python BERT tokenizer under this name.
    legacy = pytest.importorskip("transformers.models.bert.tokenization_bert_legacy")
    reference = legacy.BertTokenizerLegacy(str(vocab_file), do_lower_case=True)
    for paragraph in squad_paragraphs:
        texts = [paragraph["context"]] + [qa["question"] for qa in paragraph["qas"]]
        for text in texts:
            expected = reference.convert_tokens_to_ids(reference.tokenize(text))
            assert tokenizer.tokenize_question(text).tolist() == expected, text
