"""Bad inputs never kill a loader: replaced at train, left out (never replaced) at val/test,
warned once, counted per epoch, and an error above the configured fraction (README,
"Evaluation rules")."""
import logging
import os

import pytest
import torch

from video_fixtures import video_fixtures  # noqa: F401  (session fixture)

from tdsk.data import BadSampleError, DecodeError, PyAVVideo, build_loader, read_jpeg_frames

SMALL = dict(input_size=32, resize=[36, 45], num_workers=0, num_segments=4, num_local=3, rand_augment=None)


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_seen():
    handler = Collect()
    logger = logging.getLogger("tdsk")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def list_with(fx, name, bad_line):
    good = [f"videos/carphone.mp4 {fx.labels['carphone']}", f"videos/bikes.webm {fx.labels['bikes']}",
            f"videos/tiny.mp4 {fx.labels['tiny']}"]
    return fx.write_list(name, good + [bad_line])


BAD_VIDEO_CASES = ["missing", "truncated_index", "truncated", "truncated_webm", "corrupt", "empty", "notavideo"]


@pytest.mark.parametrize("case", BAD_VIDEO_CASES)
def test_decoder_raises_decode_error(video_fixtures, case):
    with pytest.raises(DecodeError) as err:
        with PyAVVideo(video_fixtures.bad[case]) as video:
            video.get_frames(range(video.num_frames))
    assert err.value.path == video_fixtures.bad[case]


def test_unreadable_jpeg_raises(video_fixtures):
    with pytest.raises(DecodeError, match="unreadable image"):
        read_jpeg_frames(video_fixtures.bad["bad_jpeg"], [3])


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("case", BAD_VIDEO_CASES)
def test_bad_video_is_replaced_at_train_left_out_at_val(video_fixtures, warnings_seen, case, split):
    fx = video_fixtures
    rel = os.path.relpath(fx.bad[case], fx.root)
    lst = list_with(fx, f"list_{case}.txt", f"{rel} 7")
    cfg = dict(SMALL, root=fx.root, train_list=lst, val_list=lst, max_bad_fraction=0.5, num_sample=1)
    loader = build_loader(cfg, split, batch_size=2, device="cpu")
    for epoch in range(2):
        loader.set_epoch(epoch)
        batches = list(loader)
        videos = torch.cat([v for v, _ in batches])
        labels = torch.cat([l for _, l in batches])
        assert torch.isfinite(videos).all() and 7 not in labels.tolist()
        report = loader.bad_samples
        if split == "train":  # the bad entry was replaced by a good sample
            assert videos.shape == (4, 4, 3, 3, 32, 32) and loader.skipped == []
        else:  # the bad entry is left out, never replaced: 3 videos, the good ones, each once
            assert videos.shape == (3, 4, 3, 3, 32, 32)
            assert sorted(labels.tolist()) == sorted([fx.labels[n] for n in ("carphone", "bikes", "tiny")])
            assert loader.skipped == [(fx.bad[case], report.files[fx.bad[case]])]
        assert report.epoch == epoch and report.num_bad == 1 and report.num_samples == 4
        assert list(report.files) == [fx.bad[case]]
        assert fx.bad[case] in str(report)
    named = [m for m in warnings_seen if fx.bad[case] in m]
    assert len(named) == 3  # warned once when first seen + once per end-of-epoch report
    if split == "val":
        assert "not replaced" in named[0]


def test_unreadable_jpeg_and_short_folder_replaced(video_fixtures):
    fx = video_fixtures
    lst = fx.write_list("frames_bad.txt", [
        "frames/carphone 40 86",
        "bad_frames/carphone 40 5",      # every JPEG is junk
        "frames/bikes 60 3",             # the list claims 60 frames, the folder has 40
        "frames/missing_dir 40 4",       # folder absent
    ])
    cfg = dict(SMALL, root=fx.root, train_list=lst, max_bad_fraction=0.9, num_sample=2)
    loader = build_loader(cfg, "train", batch_size=2, device="cpu")
    batches = list(loader)
    labels = torch.cat([l for _, l in batches]).tolist()
    assert len(labels) == 8 and set(labels) <= {86, 87, 3}
    report = loader.bad_samples
    assert set(report.files) == {os.path.join(fx.root, p) for p in
                                 ("bad_frames/carphone", "frames/bikes", "frames/missing_dir")}
    assert "unreadable image" in report.files[os.path.join(fx.root, "bad_frames/carphone")]
    assert "not found" in report.files[os.path.join(fx.root, "frames/bikes")]


def test_short_video_is_not_bad(video_fixtures):
    # 5 frames < T*M = 40: the clamping of docs/sampling.md §2 handles it, it is a valid sample
    fx = video_fixtures
    lst = fx.write_list("short.txt", ["videos/tiny.webm 93", "videos/tiny.mp4 93"])
    cfg = dict(SMALL, root=fx.root, train_list=lst, num_segments=8, num_local=5, max_bad_fraction=0.0)
    loader = build_loader(cfg, "train", batch_size=2, device="cpu")
    (video, labels), = list(loader)
    assert video.shape == (4, 8, 5, 3, 32, 32) and loader.bad_samples.num_bad == 0


def test_fraction_exceeded_raises_with_offenders(video_fixtures):
    fx = video_fixtures
    lines = ["videos/carphone.mp4 1"] * 6 + [os.path.relpath(fx.bad[c], fx.root) + " 2" for c in
                                                ("missing", "empty", "notavideo")]
    lst = fx.write_list("mostly_bad.txt", lines)
    cfg = dict(SMALL, root=fx.root, val_list=lst)  # default max_bad_fraction 0.05
    loader = build_loader(cfg, "val", batch_size=3, device="cpu")
    with pytest.raises(BadSampleError) as err:
        list(loader)
    msg = str(err.value)
    assert "max_bad_fraction=0.05" in msg and "first offenders" in msg
    assert any(fx.bad[c] in msg for c in ("missing", "empty", "notavideo"))
    # a higher threshold lets the same epoch through, every bad file counted and left out
    loader = build_loader(dict(cfg, max_bad_fraction=0.5), "val", batch_size=3, device="cpu")
    assert sum(len(l) for _, l in loader) == 6  # the last batch (bad files only) is not yielded
    assert loader.bad_samples.num_bad == 3
    assert [p for p, _ in loader.skipped] == [fx.bad[c] for c in ("missing", "empty", "notavideo")]


def test_bad_samples_counted_across_workers(video_fixtures):
    fx = video_fixtures
    lst = list_with(fx, "list_workers.txt", os.path.relpath(fx.bad["corrupt"], fx.root) + " 7")
    cfg = dict(SMALL, root=fx.root, train_list=lst, max_bad_fraction=0.5, num_sample=1)
    loader = build_loader(cfg, "train", batch_size=2, device="cpu", num_workers=2)
    assert sum(len(l) for _, l in loader) == 4
    assert list(loader.bad_samples.files) == [fx.bad["corrupt"]]


def test_all_bad_raises_clearly(video_fixtures):
    fx = video_fixtures
    lst = fx.write_list("all_bad.txt", [os.path.relpath(fx.bad["empty"], fx.root) + " 1"])
    cfg = dict(SMALL, root=fx.root, train_list=lst, test_list=lst, max_bad_fraction=1.0)
    loader = build_loader(cfg, "test", batch_size=1, device="cpu", views=(1, 1))
    with pytest.raises(BadSampleError, match="no test video of this pass could be decoded") as err:
        list(loader)
    assert fx.bad["empty"] in str(err.value) and loader.skipped == [(fx.bad["empty"], "zero-length file")]
    with pytest.raises(RuntimeError, match="consecutive bad samples"):  # train: no replacement found
        list(build_loader(cfg, "train", batch_size=1, device="cpu"))
