"""Training of the three stages, each resumable after a kill: predictors, image mechanism (VAE), CFT.

Run-folder layout (``<out>/<variant-of-data>/...``, the data variant being ``single`` or ``pair``)::

    predictors/        regressor + segmentor (kind "predictors"), shared by all seeds and variants
    none/seed<S>/      the VAE trained by maximum likelihood: the No-CFT model (kind "causal_model", variant "none")
    reg/seed<S>/       that VAE after regressor-guided CFT (variant "reg")
    seg/seed<S>/       that VAE after segmentor-guided CFT (variant "seg")

Every stage is a ``loss_fn`` of :class:`~counterfactory.training.trainer.Trainer` (the one training loop): each
step draws its batch and noise from :func:`~counterfactory.training.checkpoint.step_generator` (seed, step), so a
resumed run continues with exactly the batches it would have seen; checkpoints are written every ``save_every``
steps under ``<stage>/checkpoints/``, and the finished stage as ``model.safetensors`` + ``config.json``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..data.morphomnist import StructureData
from ..errors import CheckpointError, input_error
from ..training.checkpoint import describe_data_change, step_generator, tensor_identity
from ..training.trainer import LoopConfig, Trainer
from .checkpoint import VARIANTS, load_modules, read_meta, save_checkpoint
from .predictors import (
    PredictorConfig,
    Regressor,
    Segmentor,
    regressor_loss,
    regressor_targets,
    segmentor_loss,
)
from .scm import ParentSCM
from .structures import run_data_variant
from .vae import CondVAE, VAEConfig, check_mode


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 64
    predictor_steps: int = 600  # regressor and segmentor, each
    predictor_lr: float = 2e-3
    vae_steps: int = 1200
    vae_lr: float = 1e-3
    z_dim: int = 16
    vae_channels: int = 16
    cft_steps: int = 400
    cft_lr: float = 5e-4  # fine-tuning learning rate of the VAE (causal-gen's CF training uses 1e-4; 5e-4 here: few steps)
    lagrange_lr: float = 1e-2  # gradient ascent on the Lagrange multiplier (causal-gen: 1e-2)
    damping: float = 100.0  # MDMM damping of the ELBO constraint (causal-gen: 100)
    scale_min: float = 0.6  # interventions drawn as area * U(scale_min, scale_max) during CFT
    scale_max: float = 1.4
    counterfactual: str = "noise"  # "noise": x* = mu(z, pa*) + u (pixel noise abducted); "latent": x* = mu(z, pa*)
    save_every: int = 100

    def __post_init__(self):
        for name in ("batch_size", "predictor_steps", "vae_steps", "cft_steps", "save_every", "z_dim", "vae_channels"):
            if getattr(self, name) < 1:
                raise input_error(name, getattr(self, name), "a positive integer")
        if not 0 < self.scale_min < 1 < self.scale_max:
            raise input_error("scale range", (self.scale_min, self.scale_max), "0 < scale_min < 1 < scale_max")
        for name in ("cft_lr", "vae_lr", "predictor_lr"):
            v = getattr(self, name)
            if not 0 < v < 1:
                raise input_error(name, v, "a learning rate in (0, 1)")
        check_mode(self.counterfactual)

    def to_dict(self) -> dict:
        return asdict(self)


def _batch(data: StructureData, size: int, gen: torch.Generator):
    idx = torch.randint(0, len(data), (size,), generator=gen)
    return data.images[idx], data.area[idx], data.intensity[idx], data.digit[idx]


def data_identity(data: StructureData) -> dict:
    """What a causal run trains on: a content hash of the images and parents (however the data was loaded)."""
    return tensor_identity(images=data.images, area=data.area, intensity=data.intensity, digit=data.digit)


def _run_stage(
    folder: Path,
    meta: dict,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    lr_factors: dict[str, Callable[[int], float]],
    steps: int,
    loss_fn: Callable[[int, torch.device], tuple[torch.Tensor, dict[str, float]]],
    save_every: int,
    kind: str,
    variant: str | None,
    progress: bool,
) -> dict:
    """Run one stage with the training loop (resuming its checkpoints), then write the finished stage.

    A finished stage with the same settings and data is returned as it is; other settings are refused.
    """
    if (folder / "config.json").is_file():
        old = read_meta(folder, kind, variant)
        if old.get("settings") != meta.get("settings"):
            raise CheckpointError(
                f"checkpoint={folder}: was trained with other settings; allowed: the same settings to resume, or another --out"
            )
        why = describe_data_change(old["data"], meta["data"]) if "data" in old else None  # older stages: no record
        if why is not None:
            raise CheckpointError(f"checkpoint={folder}: {why}; allowed: the same data to resume, or another --out")
        if old.get("done"):
            return old
    loop = LoopConfig(steps=steps, lr=1.0, warmup_steps=0, grad_clip=0.0, ema_decay=0.0, checkpoint_every=save_every,
                      keep_checkpoints=1, log_every=50)
    identity = {"task": f"cft-{kind}", "variant": variant, "settings": meta["settings"], "data": meta["data"]}
    # the causal models draw their noise inside with CPU generators and are 28-px small: they train on the CPU
    trainer = Trainer(nn.ModuleDict(modules), loss_fn, loop, folder, identity, progress, optimizers=optimizers,
                      lr_lambdas={name: lr_factors.get(name, _constant) for name in optimizers}, cpu=True)
    summary = trainer.run()
    meta = {**meta, "step": steps, "done": True, "log": _read_log(folder / "log.csv"),
            "seconds_last_run": summary["wall_seconds"]}
    save_checkpoint(folder, meta, modules)
    return meta


def _constant(step: int) -> float:
    return 1.0


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: (int(v) if k == "step" else float(v)) for k, v in r.items() if k not in ("lr", "seconds")} for r in rows]


# --------------------------------------------------------------------------------------------- predictors
def _variant_of(train: StructureData, data_variant: str | None) -> str:
    return data_variant or ("single" if train.num_structures == 1 else "pair")


def train_predictors(
    out: Path, train: StructureData, scm: ParentSCM, cfg: TrainConfig, progress: bool = True, data_variant: str | None = None
) -> dict:
    K = train.num_structures
    pcfg = PredictorConfig(height=train.images.shape[2], width=train.images.shape[3], num_structures=K)
    torch.manual_seed(1234)
    reg, seg = Regressor(pcfg), Segmentor(pcfg)
    opt_r = torch.optim.Adam(reg.parameters(), lr=cfg.predictor_lr)
    opt_s = torch.optim.Adam(seg.parameters(), lr=cfg.predictor_lr)
    drop = lambda step: 0.1 if step >= 0.75 * cfg.predictor_steps else 1.0  # noqa: E731

    def loss_fn(step: int, device) -> tuple[torch.Tensor, dict[str, float]]:
        x, a, i, _ = _batch(train, cfg.batch_size, step_generator(1234, step))
        loss_r, loss_s = regressor_loss(reg, scm, x, a, i), segmentor_loss(seg, scm, x, a, i)
        return loss_r + loss_s, {"reg": float(loss_r.detach()), "seg": float(loss_s.detach())}

    settings = {"structures": K, "train": {k: getattr(cfg, k) for k in ("batch_size", "predictor_steps", "predictor_lr")}}
    meta = {"kind": "predictors", "variant": None, "predictor_config": pcfg.to_dict(), "scm": scm.to_dict(),
            "settings": settings, "data": data_identity(train), "data_variant": _variant_of(train, data_variant)}
    return _run_stage(
        out / "predictors", meta, {"regressor": reg, "segmentor": seg}, {"regressor": opt_r, "segmentor": opt_s},
        {"regressor": drop, "segmentor": drop}, cfg.predictor_steps, loss_fn, cfg.save_every, "predictors", None,
        progress,
    )


def load_predictors(folder: Path) -> tuple[Regressor, Segmentor, dict]:
    meta = read_meta(folder, "predictors")
    pcfg = PredictorConfig(**meta["predictor_config"])
    reg, seg = Regressor(pcfg), Segmentor(pcfg)
    load_modules(folder, {"regressor": reg, "segmentor": seg})
    for m in (reg, seg):
        m.eval().requires_grad_(False)
    return reg, seg, meta


# --------------------------------------------------------------------------------------------- VAE (No-CFT)
@torch.no_grad()
def mean_nelbo(vae: CondVAE, scm: ParentSCM, data: StructureData, batch: int = 500, seed: int = 0) -> float:
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for s in range(0, len(data), batch):
        sl = slice(s, s + batch)
        cond = scm.condition(data.area[sl], data.intensity[sl], data.digit[sl])
        total += float(vae.nelbo(data.images[sl], cond, gen).sum())
    return total / len(data)


def train_vae(
    out: Path, train: StructureData, scm: ParentSCM, cfg: TrainConfig, seed: int, progress: bool = True,
    data_variant: str | None = None,
) -> dict:  # fmt: skip
    vcfg = VAEConfig(
        height=train.images.shape[2], width=train.images.shape[3], cond_dim=scm.cond_dim, z_dim=cfg.z_dim, channels=cfg.vae_channels
    )
    torch.manual_seed(seed)
    vae = CondVAE(vcfg)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)

    def loss_fn(step: int, device) -> tuple[torch.Tensor, dict[str, float]]:
        gen = step_generator(seed, step, stream=1)
        x, a, i, d = _batch(train, cfg.batch_size, gen)
        loss = vae.nelbo(x, scm.condition(a, i, d), gen).mean()
        return loss, {"nelbo": float(loss.detach())}

    folder = out / "none" / f"seed{seed}"
    keys = ("batch_size", "vae_steps", "vae_lr", "z_dim", "vae_channels")
    settings = {"structures": train.num_structures, "seed": seed, "train": {k: getattr(cfg, k) for k in keys}}
    meta = {"kind": "causal_model", "variant": "none", "vae_config": vcfg.to_dict(), "scm": scm.to_dict(),
            "settings": settings, "data": data_identity(train), "data_variant": _variant_of(train, data_variant)}
    meta = _run_stage(folder, meta, {"vae": vae}, {"vae": opt},
                      {"vae": lambda step: 0.2 if step >= 0.8 * cfg.vae_steps else 1.0}, cfg.vae_steps, loss_fn,
                      cfg.save_every, "causal_model", "none", progress)
    if "train_nelbo" not in meta:  # the ELBO level CFT must keep (its constraint)
        load_modules(folder, {"vae": vae})
        meta["train_nelbo"] = mean_nelbo(vae, scm, train)
        save_checkpoint(folder, meta, {"vae": vae})
    return meta


def load_causal_model(folder: Path, variant: str | None = None) -> tuple[CondVAE, ParentSCM, dict]:
    """A VAE checkpoint of any variant (or of ``variant`` when given: another variant is refused)."""
    meta = read_meta(folder, "causal_model", variant)
    vae = CondVAE(VAEConfig(**meta["vae_config"]))
    load_modules(folder, {"vae": vae})
    vae.eval()
    return vae, ParentSCM.from_dict(meta["scm"]), meta


# --------------------------------------------------------------------------------------------- CFT
class Lagrange(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lmbda = torch.nn.Parameter(torch.zeros(()))


def sample_intervention(
    scm: ParentSCM, area: torch.Tensor, gen: torch.Generator, scale_min: float, scale_max: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One structure per example, ``a* = area * U(scale_min, scale_max)`` kept inside the training range."""
    B, K = area.shape
    k = torch.randint(0, K, (B,), generator=gen)
    s = scale_min + (scale_max - scale_min) * torch.rand(B, generator=gen)
    new = (area[torch.arange(B), k] * s).clamp(scm.area_min, scm.area_max)
    return k, new


def cft_aux_loss(
    variant: str, x_cf: torch.Tensor, area_cf: torch.Tensor, int_cf: torch.Tensor, scm: ParentSCM, regressor: Regressor, segmentor: Segmentor
) -> torch.Tensor:
    """Squared error (normalised units) between what the frozen guide measures on x* and the CF parents.

    reg: the regressor measures every area and intensity. seg: the segmentor's soft area measures every
    structure's area (non-intervened ones are held at their values), the regressor's intensity head measures
    intensity (intensity is not a structure size) — so the variants differ only in how area is supervised.
    """
    K = area_cf.shape[1]
    target = regressor_targets(scm, area_cf, int_cf)
    pred = regressor(x_cf)
    if variant == "seg":
        pred = torch.cat([scm.norm_area(segmentor.soft_area(x_cf)), pred[:, K:]], dim=1)
    elif variant != "reg":
        raise input_error("variant", variant, "'reg' or 'seg' for fine-tuning")
    return F.mse_loss(pred, target)


def cft_step(
    vae: CondVAE, scm: ParentSCM, regressor: Regressor, segmentor: Segmentor, variant: str,
    x, area, intensity, digit, gen: torch.Generator, eps: float, lagrange: Lagrange, cfg: TrainConfig,
) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """The constrained CF loss of one batch: ``aux - (lambda - damp) * (eps - nelbo)`` (causal-gen's train_cf)."""
    k, new = sample_intervention(scm, area, gen, cfg.scale_min, cfg.scale_max)
    area_cf, int_cf = scm.intervene_area(area, intensity, digit, k, new)
    cond, cond_cf = scm.condition(area, intensity, digit), scm.condition(area_cf, int_cf, digit)
    nelbo, x_cf = vae.nelbo_and_counterfactual(x, cond, cond_cf, gen, cfg.counterfactual)
    nelbo = nelbo.mean()
    aux = cft_aux_loss(variant, x_cf, area_cf, int_cf, scm, regressor, segmentor)
    gap = eps - nelbo
    damp = cfg.damping * gap.detach()
    loss = aux - (lagrange.lmbda - damp) * gap
    return loss, {"aux": float(aux.detach()), "nelbo": float(nelbo.detach()), "lambda": float(lagrange.lmbda.detach())}


def train_cft(
    out: Path, train: StructureData, variant: str, seed: int, cfg: TrainConfig, progress: bool = True
) -> dict:
    if variant not in VARIANTS:
        raise input_error("variant", variant, f"one of {', '.join(VARIANTS)}")
    base = out / "none" / f"seed{seed}"
    vae, scm, base_meta = load_causal_model(base, "none")
    if "train_nelbo" not in base_meta:  # a VAE stage stopped between finishing and recording its ELBO level
        base_meta["train_nelbo"] = mean_nelbo(vae, scm, train)
        save_checkpoint(base, base_meta, {"vae": vae})
    if variant == "none":
        return base_meta
    regressor, segmentor, _ = load_predictors(out / "predictors")
    vae.train()
    lagrange = Lagrange()
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.cft_lr)
    opt_l = torch.optim.SGD(lagrange.parameters(), lr=cfg.lagrange_lr, maximize=True)
    eps = float(base_meta["train_nelbo"])

    def loss_fn(step: int, device) -> tuple[torch.Tensor, dict[str, float]]:
        # one stream for both guides: Reg- and Seg-CFT of a seed see the same batches, interventions and noise
        gen = step_generator(seed, step, stream=2)
        x, a, i, d = _batch(train, cfg.batch_size, gen)
        return cft_step(vae, scm, regressor, segmentor, variant, x, a, i, d, gen, eps, lagrange, cfg)

    keys = ("batch_size", "cft_steps", "cft_lr", "lagrange_lr", "damping", "scale_min", "scale_max")
    if cfg.counterfactual != "noise":  # recorded when not the default, so that older runs still resume
        keys += ("counterfactual",)
    settings = {"seed": seed, "base": base_meta["settings"], "train": {k: getattr(cfg, k) for k in keys}}
    meta = {**{k: base_meta[k] for k in ("vae_config", "scm", "train_nelbo")}, "kind": "causal_model", "variant": variant,
            "settings": settings, "elbo_constraint": eps, "data": data_identity(train),
            "data_variant": run_data_variant(base_meta), "counterfactual": cfg.counterfactual}  # fmt: skip
    folder = out / variant / f"seed{seed}"
    return _run_stage(folder, meta, {"vae": vae, "lagrange": lagrange}, {"vae": opt, "lagrange": opt_l}, {},
                      cfg.cft_steps, loss_fn, cfg.save_every, "causal_model", variant, progress)


def train_all(
    out: Path, train: StructureData, variant: str, seed: int, cfg: TrainConfig, progress: bool = True,
    data_variant: str | None = None,
) -> dict:  # fmt: skip
    """Whatever is missing of predictors → VAE(seed) → CFT(variant, seed); finished stages are skipped."""
    out.mkdir(parents=True, exist_ok=True)
    scm = ParentSCM.fit(train.area, train.intensity, train.digit)
    train_predictors(out, train, scm, cfg, progress, data_variant)
    train_vae(out, train, scm, cfg, seed, progress, data_variant)
    return train_cft(out, train, variant, seed, cfg, progress)
