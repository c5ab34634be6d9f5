"""The downstream benchmark's settings and their validation."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from ...errors import input_error

SETTINGS = ("real", "ours", "perlin", "copypaste")
SETTING_TITLES = {
    "real": "(i) real few-shot only",
    "ours": "(ii) real + ours",
    "perlin": "(iii) real + Perlin",
    "copypaste": "(iv) real + copy-paste",
}
METRICS = ("pixel_AP", "pixel_F1max", "pixel_AUROC", "image_AUROC")
# steps per run, chosen from the real-only learning curve on Magnetic Tile (docs/downstream.md): the first
# evaluated step within one standard error of the best mean AP (900; 3 seeds, curve to 1500 steps)
DEFAULT_STEPS = 900


@dataclass(frozen=True)
class DownstreamConfig:
    data: str
    out: str
    split: str | None = None  # default: the first-third few-shot split of the data layer
    generated: str | None = None
    settings: tuple[str, ...] | None = None  # default: every setting that applies
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # paired across settings: same init and same real batches per seed
    steps: int = DEFAULT_STEPS  # optimisation steps per run (same for every setting)
    batch_size: int = 16
    crop: int = 64
    defect_fraction: float = 0.5  # crops per batch that hold a real defect
    synthetic_fraction: float = 0.5  # synthetic crops per batch, as a fraction of the real defect crops
    mix: str = "add"  # "add": synthetic crops come on top of real-only's batch; "replace": they take defect slots
    lr: float = 2e-3  # AdamW learning rate after the linear warm-up (constant: a longer run extends a shorter one)
    warmup_steps: int = 30
    ema_decay: float = 0.99  # the evaluated weights are the EMA of the trained ones
    channels: tuple[int, ...] = (12, 24, 48)
    eval_good: int = 150  # held-out defect-free images evaluated (evenly spaced by id)
    image_pool: int = 15
    max_generated_per_type: int | None = None

    def __post_init__(self):
        if self.settings is not None:
            bad = [s for s in self.settings if s not in SETTINGS]
            if bad or not self.settings:
                raise input_error("settings", ",".join(self.settings), f"a comma-separated subset of {','.join(SETTINGS)}")
            if "ours" in self.settings and self.generated is None:
                raise input_error("settings", ",".join(self.settings), "'ours' only together with generated=DIR")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise input_error("seeds", self.seeds, "at least one seed, each once")
        if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in self.seeds):
            raise input_error("seeds", self.seeds, "integers >= 0")
        for name, v, lo in (("steps", self.steps, 1), ("batch_size", self.batch_size, 2), ("crop", self.crop, 16),
                            ("eval_good", self.eval_good, 1), ("warmup_steps", self.warmup_steps, 0),
                            ("image_pool", self.image_pool, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise input_error(name, v, f"an integer >= {lo}")
        if self.crop % 4:
            raise input_error("crop", self.crop, "a multiple of 4")
        if self.mix not in ("replace", "add"):
            raise input_error("mix", self.mix, "'replace' or 'add'")
        for name, v in (("defect_fraction", self.defect_fraction), ("synthetic_fraction", self.synthetic_fraction)):
            if not 0 <= v <= 1:
                raise input_error(name, v, "a fraction in [0, 1]")
        if not (self.lr > 0 and self.lr < 1):
            raise input_error("lr", self.lr, "a learning rate in (0, 1)")
        if not 0 <= self.ema_decay < 1:
            raise input_error("ema_decay", self.ema_decay, "a decay in [0, 1)")

    def active_settings(self) -> tuple[str, ...]:
        if self.settings is not None:
            return self.settings
        return tuple(s for s in SETTINGS if s != "ours" or self.generated is not None)

    def run_key(self, setting: str) -> str:
        """What a run's *training* depends on, except the step budget (a longer run extends a shorter one).

        The generated folder only matters to 'ours' (adding it later reuses the other settings); the mix does not
        apply to 'real'.
        """
        skip = {"out", "settings", "seeds", "steps", "eval_good", "image_pool"}
        if setting != "ours":
            skip |= {"generated", "max_generated_per_type"}
        if setting == "real":
            skip |= {"mix", "synthetic_fraction"}
        return json.dumps({k: v for k, v in asdict(self).items() if k not in skip}, sort_keys=True, default=str)

    def result_key(self, setting: str) -> str:
        """What a finished run's metrics depend on: the training key plus the budget and the evaluation."""
        return json.dumps({"train": self.run_key(setting), "steps": self.steps, "eval_good": self.eval_good,
                           "image_pool": self.image_pool}, sort_keys=True)

    def run_folder_name(self, setting: str, seed: int) -> str:
        digest = hashlib.sha256(self.run_key(setting).encode()).hexdigest()[:10]
        return f"{setting}-seed{seed}-{digest}"
