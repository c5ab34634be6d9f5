"""Datasets, splits, the procedural surfaces generator and mask-aware augmentation."""

from .augment import AugmentConfig, AugmentParams, MaskAwareAugment
from .dataset import LAYOUTS, Dataset, Problem, detect_layout, natural_key, open_dataset
from .magnetic_tile import read_magnetic_tile
from .mvtec import read_mvtec, write_mvtec_sample
from .sample import GOOD, Sample
from .splits import Split, few_shot_split, load_split, save_split
from .surfaces import DEFECT_TYPES, add_defect, render_sample, render_surface, synth_dataset

__all__ = [
    "AugmentConfig",
    "AugmentParams",
    "DEFECT_TYPES",
    "Dataset",
    "GOOD",
    "LAYOUTS",
    "MaskAwareAugment",
    "Problem",
    "Sample",
    "Split",
    "add_defect",
    "detect_layout",
    "few_shot_split",
    "load_split",
    "natural_key",
    "open_dataset",
    "read_magnetic_tile",
    "read_mvtec",
    "render_sample",
    "render_surface",
    "save_split",
    "synth_dataset",
    "write_mvtec_sample",
]
