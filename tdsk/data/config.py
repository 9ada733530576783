"""The ``data:`` section of a recipe, as a validated dataclass (defined with the rest of the
recipe schema in :mod:`tdsk.schema`; this module is its home in the data package).

Keys (defaults are the official Something-Something recipe, docs/recipe.md, docs/sampling.md)::

    dataset: sth              # sampling rules: sth | kinetics
    format: auto              # list format: frames (<dir> <n> <label>) | video (<path> <label>) | auto
    root: ""                  # list entries are relative to this directory
    train_list / val_list / test_list: paths of the annotation lists
    labels: null              # class names (labels.txt, or index,name CSV); sets model.num_classes
    layout: lists             # lists | folders: the *_list keys name <class>/<video> folders
    template: "{:05d}.jpg"    # frame file names, numbered from 1
    num_segments: 8           # T
    num_local: 5              # M
    input_size: 224
    resize: [256, 320]        # [H, W] exact, or an int: the short side (K400: 256)
    num_sample: 2             # repeated augmentation at train (clips per video)
    rand_augment: rand-m7-n4-mstd0.5-inc1   # or null
    flip: sth                 # sth (label pairs swapped) | plain | none
    flip_label_pairs: [[86, 87], [93, 94], [166, 167]]
    grayscale_p: 0.0
    min_frames: 8             # 3-column entries shorter than this are dropped at train/val
    kinetics_wrap: false      # official decord wrap of negative local indices (parity only)
    decoder: auto             # auto | dali | pyav
    num_workers: 8            # CPU loader workers (capped at the machine's cores)
    decode_threads: 1         # FFmpeg threads per worker
    test_crops: 3
    test_clips: 2
    max_bad_fraction: 0.05    # more bad samples than this in an epoch stops with an error
    drop_last: true           # train batches
    mean / std: CLIP values
    few_shot: null            # K: train on K clips per class of train_list (docs/protocols.md)
    few_shot_seed: 0          # which K clips (deterministic)
    class_subset: all         # all | base | novel: keep these classes of data.labels in every list, re-indexed
    base_classes: null        # file naming the base classes; else drawn with class_split_seed
    base_fraction: 0.5        # share of the classes that are base (drawn)
    class_split_seed: 0
"""
from tdsk.schema import SS_FLIP_LABEL_PAIRS, DataConfig, label_swap

__all__ = ["DataConfig", "SS_FLIP_LABEL_PAIRS", "label_swap"]
