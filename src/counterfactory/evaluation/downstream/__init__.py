"""Downstream benefit: does synthetic defect data help a segmentation network find real defects?

The field's main claim (AnomalyDiffusion / SeaS protocol), scaled to a CPU; see :data:`runner.PROTOCOL`.
Parts: ``config`` (settings), ``data`` (loading, the paired crop sampler), ``model`` (the U-Net and its loss),
``training`` (the segmenter as a ``loss_fn`` of the project's Trainer), ``metrics`` (torchmetrics), ``runner``
(settings × seeds, paired statistics, learning curve), ``report`` (HTML).
"""

from .config import DEFAULT_STEPS, METRICS, SETTING_TITLES, SETTINGS, DownstreamConfig
from .data import CropSampler, DownstreamData, load_downstream_data
from .metrics import binary_metrics, evaluate_maps, predict
from .model import SmallUNet, build_segmenter, focal_dice_loss
from .runner import choose_budget, learning_curve, paired_table, run_downstream, summarize_runs
from .training import segmenter_loss_fn, train_segmenter

__all__ = [
    "DEFAULT_STEPS", "METRICS", "SETTINGS", "SETTING_TITLES", "CropSampler", "DownstreamConfig", "DownstreamData",
    "SmallUNet", "binary_metrics", "build_segmenter", "choose_budget", "evaluate_maps", "focal_dice_loss",
    "learning_curve", "load_downstream_data", "paired_table", "predict", "run_downstream", "segmenter_loss_fn",
    "summarize_runs", "train_segmenter",
]
