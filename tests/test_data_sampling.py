"""sample_indices against values computed by hand from the official rules (docs/sampling.md §1-2)."""
import numpy as np
import pytest

from tdsk.data import sample_indices
from tdsk.data.sampling import local_indices, segment_offsets


def centres(idx):
    return idx[:, idx.shape[1] // 2].tolist()


# ---- Something-Something ---------------------------------------------------------------

def test_sth_val_centre():
    # s = 39/8 = 4.875, int(s/2) = 2; round(s*i) = 0 5 10 15 20(19.5 half-even) 24 29 34
    idx = sample_indices(40, 8, 5, "val", dataset="sth")
    assert idx.shape == (8, 5) and idx.dtype == np.int64
    assert centres(idx) == [2, 7, 12, 17, 22, 26, 31, 36]
    assert idx[0].tolist() == [0, 1, 2, 3, 4]
    assert idx[7].tolist() == [34, 35, 36, 37, 38]


def test_sth_val_round_half_to_even():
    # s = 20/8 = 2.5: round(2.5)=2, round(7.5)=8, round(12.5)=12, round(17.5)=18; int(1.25)=1
    assert segment_offsets(21, 8, "val", dataset="sth").tolist() == [1, 3, 6, 9, 11, 13, 16, 19]


def test_sth_test_two_clips():
    # s = 4.875, d = s/3 = 1.625: clip 0 adds int(1.625)=1, clip 1 adds int(3.25)=3
    c0 = sample_indices(40, 8, 5, "test", clip_index=0, num_clips=2, dataset="sth")
    c1 = sample_indices(40, 8, 5, "test", clip_index=1, num_clips=2, dataset="sth")
    assert centres(c0) == [1, 6, 11, 16, 21, 25, 30, 35]
    assert centres(c1) == [3, 8, 13, 18, 23, 27, 32, 37]
    assert c0[0].tolist() == [0, 0, 1, 2, 3]  # o-2 = -1 clamped to 0 (docs/sampling.md §2)
    assert c1[7].tolist() == [35, 36, 37, 38, 39]


def test_sth_test_one_clip_equals_val():
    for n in (5, 9, 40, 77, 300):
        np.testing.assert_array_equal(sample_indices(n, 8, 5, "test", 0, 1, "sth"), sample_indices(n, 8, 5, "val"))


def test_sth_short_video_val_clamps_both_ends():
    # n=5: s=0.5, int(0.25)=0, round(0.5*i) = 0 0 1 2 2 2 3 4 (0.5->0, 1.5->2, 2.5->2, 3.5->4)
    idx = sample_indices(5, 8, 5, "val", dataset="sth")
    assert centres(idx) == [0, 0, 1, 2, 2, 2, 3, 4]
    assert idx[0].tolist() == [0, 0, 0, 1, 2]
    assert idx[7].tolist() == [2, 3, 4, 4, 4]
    assert idx.min() == 0 and idx.max() == 4


def test_sth_train_tsn_shift():
    # n=40, T=8: ticks 0,5,...,40, offset_i = 5i + U{0..4}
    seen = [set() for _ in range(8)]
    for seed in range(200):
        off = segment_offsets(40, 8, "train", dataset="sth", rng=seed)
        for i, o in enumerate(off):
            assert 5 * i <= o < 5 * i + 5
            seen[i].add(int(o))
    assert all(s == set(range(5 * i, 5 * i + 5)) for i, s in enumerate(seen))


def test_sth_train_uneven_ticks():
    # n=13, T=8: ticks floor(13*i/8) = 0 1 3 4 6 8 9 11 13
    ticks = [0, 1, 3, 4, 6, 8, 9, 11, 13]
    for seed in range(100):
        off = segment_offsets(13, 8, "train", dataset="sth", rng=seed)
        assert all(ticks[i] <= o < ticks[i + 1] for i, o in enumerate(off))


def test_sth_train_reproduces_official_numpy_stream():
    # The official code calls np.random.randint(tick_len) once per segment, in order.
    ref = np.random.RandomState(1024)
    ticks = [i * 40 // 8 for i in range(9)]
    expected = [ticks[i] + ref.randint(ticks[i + 1] - ticks[i]) for i in range(8)]
    got = segment_offsets(40, 8, "train", dataset="sth", rng=np.random.RandomState(1024))
    assert got.tolist() == expected


@pytest.mark.parametrize("n", [1, 3, 5, 8])
def test_sth_train_short_video(n):
    # n <= T: all frames 0..n-1 plus T-n uniform draws, sorted
    for seed in range(20):
        off = segment_offsets(n, 8, "train", dataset="sth", rng=seed)
        assert len(off) == 8 and list(off) == sorted(off)
        assert set(range(n)) <= set(off.tolist()) and off.max() < n
    idx = sample_indices(n, 8, 5, "train", rng=0)
    assert idx.min() >= 0 and idx.max() <= n - 1


# ---- Kinetics --------------------------------------------------------------------------

def test_kinetics_val_segment_start():
    assert segment_offsets(40, 8, "val", dataset="kinetics").tolist() == [0, 5, 10, 15, 20, 25, 30, 35]
    # int(6.25 i)
    assert segment_offsets(50, 8, "val", dataset="kinetics").tolist() == [0, 6, 12, 18, 25, 31, 37, 43]


def test_kinetics_test_clips():
    # tau = 6.25, linspace(0, 5.25, 4) = 0, 1.75, 3.5, 5.25 -> starts 0 1 3 5
    expect = {0: [0, 6, 12, 18, 25, 31, 37, 43], 1: [1, 7, 13, 19, 26, 32, 38, 44],
              2: [3, 9, 15, 21, 28, 34, 40, 46], 3: [5, 11, 17, 23, 30, 36, 42, 48]}
    for k, want in expect.items():
        assert segment_offsets(50, 8, "test", k, 4, "kinetics").tolist() == want


def test_kinetics_test_short_video():
    # n=6: tau=0.75, linspace(0,-0.25,4) truncates to 0; int(0.75 i) = 0 0 1 2 3 3 4 5
    for k in range(4):
        assert segment_offsets(6, 8, "test", k, 4, "kinetics").tolist() == [0, 0, 1, 2, 3, 3, 4, 5]


def test_kinetics_train_inclusive_bounds():
    # s = 4.875: [round(s i), round(s (i+1))] = [0,5] [5,10] [10,15] [15,20] [20,24] [24,29] [29,34] [34,39]
    bounds = [(0, 5), (5, 10), (10, 15), (15, 20), (20, 24), (24, 29), (29, 34), (34, 39)]
    seen = [set() for _ in range(8)]
    for seed in range(400):
        for i, o in enumerate(segment_offsets(40, 8, "train", dataset="kinetics", rng=seed)):
            assert bounds[i][0] <= o <= bounds[i][1]
            seen[i].add(int(o))
    assert all(s == set(range(a, b + 1)) for s, (a, b) in zip(seen, bounds))


def test_kinetics_wrap_option():
    clamp = sample_indices(40, 8, 5, "val", dataset="kinetics")
    wrap = sample_indices(40, 8, 5, "val", dataset="kinetics", wrap_negative=True)
    assert clamp[0].tolist() == [0, 0, 0, 1, 2]
    assert wrap[0].tolist() == [38, 39, 0, 1, 2]  # decord's Python-style negative indices
    np.testing.assert_array_equal(clamp[1:], wrap[1:])
    # the upper end is clamped either way
    assert local_indices(np.array([39]), 40, 5, wrap_negative=True)[0].tolist() == [37, 38, 39, 39, 39]


# ---- general ---------------------------------------------------------------------------

@pytest.mark.parametrize("dataset", ["sth", "kinetics"])
@pytest.mark.parametrize("mode", ["train", "val", "test"])
@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 41, 1000])
def test_shape_range_and_purity(dataset, mode, n):
    a = sample_indices(n, 8, 5, mode, 1 if mode == "test" else 0, 3 if mode == "test" else 1, dataset, rng=3)
    b = sample_indices(n, 8, 5, mode, 1 if mode == "test" else 0, 3 if mode == "test" else 1, dataset, rng=3)
    assert a.shape == (8, 5) and a.dtype == np.int64
    assert a.min() >= 0 and a.max() <= n - 1
    np.testing.assert_array_equal(a, b)  # same seed, same indices
    # consecutive local frames within a segment, up to clamping
    assert (np.diff(a, axis=1) >= 0).all() and (np.diff(a, axis=1) <= 1).all()


def test_num_local_one_and_three():
    assert sample_indices(40, 8, 1, "val").shape == (8, 1)
    assert sample_indices(40, 8, 1, "val")[:, 0].tolist() == [2, 7, 12, 17, 22, 26, 31, 36]
    assert sample_indices(40, 8, 3, "val")[0].tolist() == [1, 2, 3]


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_frames=0, num_segments=8, num_local=5, mode="val"), "num_frames"),
    (dict(num_frames=10, num_segments=8, num_local=5, mode="bogus"), "mode"),
    (dict(num_frames=10, num_segments=8, num_local=5, mode="val", dataset="ucf"), "dataset"),
    (dict(num_frames=10, num_segments=8, num_local=5, mode="test", clip_index=2, num_clips=2), "clip_index"),
    (dict(num_frames=10, num_segments=8, num_local=0, mode="val"), "num_local"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_indices(**kwargs)
