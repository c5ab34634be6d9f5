"""The one sample type every dataset reader returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..io.images import load_image
from ..io.masks import read_mask

GOOD = "good"  # the defect type name of defect-free samples (anomalib's convention)


@dataclass(frozen=True)
class Sample:
    """One image of a dataset: where it is, its mask (None for defect-free), its type and a stable id.

    ``source_id`` is unique inside a dataset and stable across runs (e.g. ``"Blowhole/exp1_num_4727"``);
    manifests, splits and reports refer to samples by it.
    """

    image_path: Path
    mask_path: Path | None
    defect_type: str
    source_id: str

    @property
    def is_good(self) -> bool:
        return self.defect_type == GOOD

    def load_image(self, mode: str = "RGB") -> torch.Tensor:
        """(C,H,W) float in [0,1]."""
        return load_image(self.image_path, mode=mode)

    def load_mask(self, threshold: float = 0.5) -> torch.Tensor:
        """(1,H,W) float in {0,1}; all zeros for a defect-free sample without a mask file."""
        if self.mask_path is None:
            img = load_image(self.image_path, mode="L")
            return torch.zeros_like(img)
        return torch.from_numpy(read_mask(self.mask_path, threshold))[None]
