"""BertForQuestionAnswering: numerics against an independent numpy forward pass,
padding invariance, and the oracle checkpoint's known answers."""

from __future__ import annotations

import numpy as np
import pytest
from mindspore import Tensor
from mindspore import dtype as mstype
from oracle import build_oracle_checkpoint, read_vocab, reference_forward, uncased_vocab_file

from bert_squad.model.checkpoint import build_network, load_checkpoint, weight_names
from bert_squad.model.config import BertConfig
from bert_squad.model.network import SCORE_MASK_PENALTY, BertForQuestionAnswering

TINY = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=24, max_position_embeddings=64, type_vocab_size=2)
ZOO_TINY = BertConfig(**TINY)
HF_TINY = BertConfig(**TINY, layer_norm_eps=1e-12, hidden_act="gelu_erf", scoring="logits")


def randomized_network(config: BertConfig, seed: int = 0, embedding_scale: float = 1.0):
    """A network whose every parameter (LayerNorm and biases too) is random.

    A small embedding_scale makes the embedding variance comparable to the LayerNorm
    epsilon, so a wrong epsilon shows in the output."""
    rng = np.random.RandomState(seed)
    net = BertForQuestionAnswering(config)
    for name, p in net.parameters_and_names():
        value = rng.normal(0.0, 0.5, p.shape)
        if name.endswith(".gamma"):
            value = 1.0 + 0.3 * value
        if name.startswith("bert.embeddings.") and "layer_norm" not in name:
            value *= embedding_scale
        p.set_data(Tensor(value.astype(np.float32)))
    net.set_train(False)
    return net


def zoo_named_weights(net, config: BertConfig):
    """The network's parameters under model zoo names, for reference_forward."""
    params = {name: p.asnumpy() for name, p in net.parameters_and_names()}
    return {zoo: params[ours] for ours, zoo, _ in weight_names(config.num_hidden_layers)}


def qa_inputs(rng, lengths, seq, vocab_size):
    """Windows of the given real lengths padded to seq, two segments each."""
    ids = np.zeros((len(lengths), seq), np.int32)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.randint(1, vocab_size, n)
        mask[row, :n] = 1
        types[row, n // 3 : n] = 1
    return ids, mask, types


def run(net, ids, mask, types):
    start, end = net(Tensor(ids), Tensor(mask), Tensor(types))
    return start.asnumpy(), end.asnumpy()


@pytest.mark.parametrize("config", [ZOO_TINY, HF_TINY], ids=["zoo", "hugging_face"])
@pytest.mark.parametrize("embedding_scale", [1.0, 3e-4], ids=["plain", "tiny_variance"])
def test_matches_numpy_reference(config, embedding_scale):
    net = randomized_network(config, embedding_scale=embedding_scale)
    rng = np.random.RandomState(1)
    ids, mask, types = qa_inputs(rng, [12, 7, 1], 12, config.vocab_size)
    start, end = run(net, ids, mask, types)
    assert start.shape == end.shape == (3, 12) and start.dtype == np.float32
    ref_start, ref_end = reference_forward(zoo_named_weights(net, config), config, ids, mask, types)
    valid = mask.astype(bool)
    np.testing.assert_allclose(start[valid], ref_start[valid], atol=1e-5, rtol=0)
    np.testing.assert_allclose(end[valid], ref_end[valid], atol=1e-5, rtol=0)
    if config.scoring == "logits":  # raw logits are defined on padding too
        np.testing.assert_allclose(start, ref_start, atol=1e-5, rtol=0)
    else:
        assert np.all(start[~valid] < SCORE_MASK_PENALTY / 2) and np.all(np.isfinite(start))


def test_numerics_follow_the_config():
    """GELU form and LayerNorm epsilon each move the scores far beyond the 1e-5 the
    reference comparison allows, so that comparison would catch either one ignored."""
    rng = np.random.RandomState(2)
    ids, mask, types = qa_inputs(rng, [10], 10, 50)
    base = dict(TINY, scoring="logits")
    for changed, scale in (({"hidden_act": "gelu_erf"}, 1.0), ({"layer_norm_eps": 1e-12}, 3e-4)):
        before = run(randomized_network(BertConfig(**base), embedding_scale=scale), ids, mask, types)[0]
        after = run(randomized_network(BertConfig(**base, **changed), embedding_scale=scale), ids, mask, types)[0]
        assert np.abs(before - after).max() > 2e-4, changed


@pytest.mark.parametrize("config", [ZOO_TINY, HF_TINY], ids=["log_softmax", "logits"])
def test_scores_do_not_depend_on_the_bucket(config):
    net = randomized_network(config, seed=3)
    rng = np.random.RandomState(4)
    ids, mask, types = qa_inputs(rng, [9, 5], 9, config.vocab_size)
    scores = {}
    for bucket in (9, 16, 40):
        pad = ((0, 0), (0, bucket - 9))
        scores[bucket] = run(net, np.pad(ids, pad), np.pad(mask, pad), np.pad(types, pad))
    valid = np.pad(mask, ((0, 0), (0, 31))).astype(bool)
    for bucket in (16, 40):
        for got, want in zip(scores[bucket], scores[9]):
            np.testing.assert_allclose(got[valid[:, :bucket]], want[valid[:, :9]], atol=1e-5, rtol=0)
    if config.scoring == "log_softmax":
        start = scores[40][0]
        np.testing.assert_allclose(np.exp(start).sum(-1), 1.0, atol=1e-5)  # padding adds nothing


def test_float16_matmuls_stay_close_to_float32():
    rng = np.random.RandomState(5)
    ids, mask, types = qa_inputs(rng, [16, 11], 16, 50)
    net32 = randomized_network(HF_TINY, seed=6)
    net16 = BertForQuestionAnswering(HF_TINY, mstype.float16)
    for (_, p16), (_, p32) in zip(net16.parameters_and_names(), net32.parameters_and_names()):
        p16.set_data(p32.data.copy())
    net16.set_train(False)
    start32, _ = run(net32, ids, mask, types)
    start16, _ = run(net16, ids, mask, types)
    assert start16.dtype == np.float32
    difference = np.abs(start16 - start32).max()
    assert 0 < difference < 0.05


# ---------------------------------------------------------------- oracle checkpoint

@pytest.fixture(scope="module")
def oracle_net(tmp_path_factory):
    path = tmp_path_factory.mktemp("oracle") / "oracle.ckpt"
    config = build_oracle_checkpoint(path, uncased_vocab_file(), "paris", "france")
    return build_network(load_checkpoint(path, config))


def window(vocab, question, context, seq):
    tokens = ["[CLS]"] + question.split() + ["[SEP]"] + context.split() + ["[SEP]"]
    n = len(tokens)
    ids = np.zeros((1, seq), np.int32)
    ids[0, :n] = [vocab[t] for t in tokens]
    mask = np.zeros_like(ids)
    mask[0, :n] = 1
    types = np.zeros_like(ids)
    types[0, len(question.split()) + 2 : n] = 1
    return tokens, ids, mask, types


@pytest.mark.parametrize(
    "question, context, seq",
    [
        ("where is it ?", "the capital paris lies in france .", 16),
        ("is paris in france ?", "france has a capital called paris , a big city by the river", 32),
        ("what about paris and france ?", "people in france love paris", 128),
        ("where ?", "paris france", 7),
        ("which city ?", " ".join(["the"] * 150 + ["paris", "is", "in", "france"] + ["a"] * 60), 384),
    ],
    ids=["short", "end_word_first", "question_has_both", "no_padding", "long_window"],
)
def test_oracle_answer_is_known(oracle_net, question, context, seq):
    vocab = read_vocab(uncased_vocab_file())
    tokens, ids, mask, types = window(vocab, question, context, seq)
    start, end = (s[0] for s in run(oracle_net, ids, mask, types))
    context_from = len(question.split()) + 2
    expected_start = context_from + context.split().index("paris")
    expected_end = context_from + context.split().index("france")
    for scores, expected in ((start, expected_start), (end, expected_end)):
        assert int(np.argmax(scores)) == expected
        others = np.delete(scores, expected)
        assert scores[expected] - others.max() > 5.0


def test_oracle_refuses_words_that_are_not_single_tokens(tmp_path):
    for word in ("parisian-ish", "##s", "[SEP]", "Paris"):
        with pytest.raises(ValueError, match="single tokens|lower-case whole word"):
            build_oracle_checkpoint(tmp_path / "x.ckpt", uncased_vocab_file(), word, "france")
