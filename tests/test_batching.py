"""The model stage packs windows by bucket and routes scores back to their question."""
import numpy as np
import pytest

from bert_squad.runtimes.batching import PAD_SCORE, bucket_for, run_windows, zero_pad

pytestmark = pytest.mark.pure
BUCKETS = (8, 16, 32)


def instance(lengths, seq=32, seed=0):
    """Windows whose ids are distinct per (instance seed, window, position)."""
    ids = np.zeros((len(lengths), seq), np.int32)
    for w, n in enumerate(lengths):
        ids[w, :n] = 1000 * seed + 100 * w + np.arange(1, n + 1)
    mask = (ids > 0).astype(np.int32)
    return ids, mask, np.zeros_like(ids), np.array(lengths, np.int32)


def test_bucket_for_picks_smallest_that_fits():
    assert [bucket_for(n, BUCKETS) for n in (1, 8, 9, 16, 17, 32)] == [8, 8, 16, 16, 32, 32]
    with pytest.raises(ValueError, match="33 tokens"):
        bucket_for(33, BUCKETS)


def test_windows_of_all_instances_share_one_call_per_bucket_and_come_back_to_their_owner():
    calls = []

    def model(bucket, ids, mask, segment):
        calls.append((bucket, ids.shape))
        assert ids.shape[1] == mask.shape[1] == segment.shape[1] == bucket
        return ids.astype(np.float32), -ids.astype(np.float32)  # a score that names its own token

    instances = [instance([5, 20], seed=1), instance([9], seed=2), instance([30, 7, 12], seed=3)]
    results = run_windows(instances, model, BUCKETS)

    assert sorted(calls) == [(8, (2, 8)), (16, (2, 16)), (32, (2, 32))]
    for (ids, _, _, lengths), (start, end) in zip(instances, results):
        assert start.shape == end.shape == ids.shape
        for w, n in enumerate(lengths):
            bucket = bucket_for(int(n), BUCKETS)
            np.testing.assert_array_equal(start[w, :bucket], ids[w, :bucket])
            np.testing.assert_array_equal(end[w, :bucket], -ids[w, :bucket])
            assert (start[w, bucket:] == PAD_SCORE).all()


def test_windows_shorter_than_their_bucket_are_zero_padded_and_scores_cut_back():
    """predict_features sends [length] rows; the model still sees a full bucket."""
    seen = []

    def model(bucket, ids, mask, segment):
        seen.append((ids.copy(), mask.copy()))
        return np.arange(bucket, dtype=np.float32)[None].repeat(len(ids), 0), np.zeros(ids.shape, np.float32)

    ids, mask, segment, lengths = instance([5], seq=5, seed=4)
    (start, end), = run_windows([(ids, mask, segment, lengths)], model, BUCKETS)
    sent_ids, sent_mask = seen[0]
    assert sent_ids.shape == (1, 8)
    np.testing.assert_array_equal(sent_ids[0, :5], ids[0])
    assert (sent_ids[0, 5:] == 0).all() and (sent_mask[0, 5:] == 0).all()
    np.testing.assert_array_equal(start, [[0, 1, 2, 3, 4]])


def test_zero_pad_puts_the_array_top_left_in_a_contiguous_int32_block():
    a = np.arange(6, dtype=np.int64).reshape(2, 3)[:, ::-1]  # not int32, not contiguous
    out = zero_pad(a, 4, 5)
    assert out.dtype == np.int32 and out.flags.c_contiguous and out.shape == (4, 5)
    np.testing.assert_array_equal(out, [[2, 1, 0, 0, 0], [5, 4, 3, 0, 0], [0] * 5, [0] * 5])
    ready = np.ones((2, 3), np.int32)
    assert zero_pad(ready, 2, 3) is ready  # nothing to add: no copy
    np.testing.assert_array_equal(zero_pad(a.astype(np.int32), 2, 3), a)
