"""tdsk.data.items: the one definition of "item i of epoch e" that the CPU dataset, the DALI
loader and the demo's in-memory loader share (generators, frame indices, bad samples,
augmentation copies). Mostly without decoding: the reading step is a callback."""
import ast
import os
import random

import numpy as np
import pytest
import torch

from video_fixtures import video_fixtures  # noqa: F401  (session fixture)

from tdsk.data import DataConfig, DecodeError, sample_indices
from tdsk.data.dataset import VideoClipDataset, decode_record
from tdsk.data.items import MAX_REPLACEMENTS, ItemPlan, ItemPlanner, augment_copies, frame_indices, item_seed
from tdsk.data.lists import VideoRecord

CFG = DataConfig.from_dict(dict(input_size=32, resize=[36, 44], num_segments=4, num_local=3, rand_augment=None))


class FakeReader:
    """A loader callback: 'bad*' paths fail, others draw indices for ``frames`` frames."""

    def __init__(self, frames=30):
        self.frames, self.calls = frames, []

    def __call__(self, record, pick):
        self.calls.append(record.path)
        if os.path.basename(record.path).startswith("bad"):
            raise DecodeError(record.path, "broken")
        return pick(self.frames), record.path


def _records(names):
    return [VideoRecord(f"/d/{n}", i) for i, n in enumerate(names)]


def test_generators_are_a_function_of_the_item():
    a = ItemPlanner(_records("abc"), CFG, "train", seed=3, rank=1)
    b = ItemPlanner(_records("abc"), CFG, "train", seed=3, rank=1)
    (pa, na), (pb, nb) = a.generators(2, 5, 1), b.generators(2, 5, 1)
    assert pa.random() == pb.random() and na.random() == nb.random()
    s1, s2 = item_seed(3, 1, 5, 2, 1).generate_state(2, dtype=np.uint64)
    assert a.generators(2, 5, 1)[0].random() == random.Random(int(s1)).random()
    assert a.generators(2, 5, 1)[1].random() == np.random.default_rng(int(s2)).random()
    others = [a.generators(2, 6, 1), a.generators(1, 5, 1), a.generators(2, 5, 0),
              ItemPlanner(_records("abc"), CFG, "train", seed=3, rank=0).generators(2, 5, 1)]
    assert len({pa2.random() for pa2, _ in others} | {a.generators(2, 5, 1)[0].random()}) == 5
    # the demo's generator is the same entropy: default_rng([seed, rank, epoch, index])
    assert np.random.default_rng(item_seed(3, 1, 5, 2)).random() == np.random.default_rng([3, 1, 5, 2]).random()


def test_plan_indices_are_sample_indices_of_the_item():
    for split, views in (("train", None), ("val", None), ("test", (3, 2))):
        planner = ItemPlanner(_records("abc"), CFG, split, seed=7, views=views)
        plan = planner.plan(1, 4, FakeReader(frames=30))
        assert isinstance(plan, ItemPlan) and plan.index == plan.requested == 1 and plan.bad == [] and not plan.skipped
        rng = planner.generators(1, 4, 0)[1]
        clips = 2 if split == "test" else 1
        want = np.stack([sample_indices(30, 4, 3, split, k, clips, "sth", rng) for k in range(clips)])
        assert np.array_equal(plan.indices, want) and np.array_equal(plan.payload[0], want)
        assert np.array_equal(frame_indices(CFG, split, 30, num_clips=clips, rng=planner.generators(1, 4, 0)[1]), want)
    with pytest.raises(DecodeError, match="zero frames"):
        frame_indices(CFG, "val", 0, path="/d/x")


def test_plan_replaces_at_train_with_the_replacement_draw():
    names = ["a", "bad1", "b", "bad2", "c", "d"]
    planner = ItemPlanner(_records(names), CFG, "train", seed=1)
    reader = FakeReader()
    plan = planner.plan(1, 0, reader)
    assert plan.requested == 1 and plan.index != 1 and plan.record.path == planner.records[plan.index].path
    assert plan.bad[0] == ("/d/bad1", "broken") and planner.known_bad[1] == "broken"
    # the candidates are the replacement draw's (preferring ones not known bad); attempt n's generators
    draw, expect = planner.replacement_draw(1, 0), []
    known = {1}
    while not expect or names[expect[-1]].startswith("bad"):
        for _ in range(8):
            c = draw.randrange(len(names))
            if c not in known:
                break
        expect.append(c)
        if names[c].startswith("bad"):
            known.add(c)
    assert plan.index == expect[-1] and plan.attempt == len(expect)
    rng = planner.generators(plan.index, 0, plan.attempt)[1]
    assert np.array_equal(plan.indices, sample_indices(30, 4, 3, "train", rng=rng)[None])
    # at train a known bad file is read again (its failure may depend on the frames asked for)
    reader.calls.clear()
    again = planner.plan(1, 0, reader)
    assert "/d/bad1" in reader.calls and again.bad[0] == ("/d/bad1", "broken")
    assert (again.index, again.attempt) == (plan.index, plan.attempt)
    # all bad: stops after MAX_REPLACEMENTS replacements
    worst = ItemPlanner(_records(["bad0", "bad1"]), CFG, "train")
    with pytest.raises(RuntimeError, match=f"{MAX_REPLACEMENTS + 1} consecutive bad samples while loading item 0"):
        worst.plan(0, 0, FakeReader())


@pytest.mark.parametrize("split", ["val", "test"])
def test_plan_never_replaces_at_eval(split):
    planner = ItemPlanner(_records(["a", "bad1", "b"]), CFG, split)
    reader = FakeReader()
    for _ in range(2):
        plan = planner.plan(1, 0, reader)
        assert plan.skipped and plan.index == 1 and plan.bad == [("/d/bad1", "broken")] and plan.payload is None
    assert reader.calls == ["/d/bad1"]  # read once, then known bad


def test_augment_copies_swaps_flipped_labels_only():
    frames = torch.arange(2 * 3 * 2 * 2, dtype=torch.uint8).view(2 * 3, 1, 2, 2)
    flips = iter([True, False, True])

    def transform(x, rng):
        return x.flip(-1), next(flips)

    video, labels = augment_copies(frames, 5, None, transform, 3, {5: 6, 6: 5}, (2, 3))
    assert video.shape == (3, 2, 3, 1, 2, 2) and labels.tolist() == [6, 5, 6] and labels.dtype == torch.int64
    assert torch.equal(video[1], frames.flip(-1).view(2, 3, 1, 2, 2))


def test_dataset_decodes_the_planned_item(video_fixtures):
    fx = video_fixtures
    records = [VideoRecord(fx.videos["carphone.mp4"], 86), VideoRecord(fx.bad["corrupt"], 3)]
    ds = VideoClipDataset(records, CFG, "train", seed=2)
    assert isinstance(ds.items, ItemPlanner)
    item = ds[(0, 3)]
    py_rng, np_rng = ds.items.generators(0, 3, 0)
    frames, _ = decode_record(records[0], CFG, "train", rng=np_rng)
    video, label = ds.items.augment(frames, 86, py_rng)
    assert torch.equal(item["video"], video) and torch.equal(item["label"], label) and item["index"] == 0
    item = ds[(1, 0)]  # replaced: only record 0 is left
    assert item["index"] == 0 and item["bad"][0][0] == fx.bad["corrupt"] and 1 in ds.items.known_bad


def test_dali_loader_plans_with_the_datasets_planner(video_fixtures):
    pytest.importorskip("nvidia.dali", reason="nvidia-dali not installed")
    from tdsk.data.dali import build_dali_loader

    fx = video_fixtures
    records = [VideoRecord(fx.videos["carphone.webm"], 86), VideoRecord(fx.bad["empty"], 3),
               VideoRecord(fx.frames["bikes"], 4, 40)]
    for split in ("train", "val", "test"):
        dl = build_dali_loader(CFG, split, records, batch_size=2, device=torch.device("cpu"), views=(3, 2), seed=5)
        cpu = VideoClipDataset(records, CFG, split, seed=5, views=(3, 2))
        for index in range(3):
            got = dl._prepare(index, 1)
            want = cpu.items.plan(index, 1, lambda record, pick: pick(_frame_count(record)))
            assert (got.index, got.attempt, got.skipped, got.bad) == (want.index, want.attempt, want.skipped, want.bad)
            if not got.skipped:
                assert np.array_equal(got.indices, want.indices)
                assert got.py_rng.random() == want.py_rng.random()
        assert dl.dataset.items.known_bad == {1: "zero-length file"}


def _frame_count(record):
    from tdsk.data.decoders import PyAVVideo, check_jpeg_frames

    if record.is_frames:
        return check_jpeg_frames(record.path, CFG.template, record.num_frames)
    if os.path.getsize(record.path) == 0:
        raise DecodeError(record.path, "zero-length file")
    with PyAVVideo(record.path) as video:
        return video.num_frames


def test_data_modules_depend_one_way():
    """items <- dataset <- base <- {loader, dali}; dali never imports loader (loader imports dali lazily)."""
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tdsk", "data")

    def imports(name):
        tree = ast.parse(open(os.path.join(folder, f"{name}.py"), encoding="utf-8").read())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tdsk.data."):
                found.add(node.module.rsplit(".", 1)[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith("tdsk.data.")}
        return found

    assert not imports("items") & {"dataset", "base", "loader", "dali"}
    assert not imports("dataset") & {"base", "loader", "dali"}
    assert not imports("base") & {"loader", "dali"}
    assert "loader" not in imports("dali") and {"base", "items"} <= imports("dali")


def test_train_plans_do_not_depend_on_the_order_items_are_read():
    """A file that fails only for some frame indices (a truncated video: frames past the cut)
    must not be skipped for an item that asks for other frames just because an earlier item
    saw it fail: planning every item of an epoch forwards, backwards, or from threads gives
    the same candidates, attempts and indices (the threaded DALI reader plans in any order)."""

    class Truncated(FakeReader):
        def __call__(self, record, pick):
            self.calls.append(record.path)
            idx = pick(self.frames)
            if os.path.basename(record.path).startswith("cut") and int(idx[0, 0, 0]) % 2:
                raise DecodeError(record.path, "truncated: frame past the end")
            return idx, record.path

    names = ["a", "cut1", "b", "cut2", "c", "cut3"]
    for epoch in range(6):
        runs = []
        for order in (range(6), reversed(range(6)), [3, 1, 5, 0, 2, 4]):
            planner = ItemPlanner(_records(names), CFG, "train", seed=2)
            plans = {i: planner.plan(i, epoch, Truncated()) for i in order}
            runs.append([(plans[i].index, plans[i].attempt, plans[i].indices.tolist()) for i in range(6)])
        assert runs[0] == runs[1] == runs[2], epoch
