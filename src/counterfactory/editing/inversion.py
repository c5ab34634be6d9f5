"""Real-image inversion for text-guided editing: DDIM, null-text, negative-prompt and direct inversion, one API.

``invert(eps_fn, scheduler, x0, cond, uncond, method=...)`` returns an :class:`Inversion` that
:func:`reconstruct` (and the prompt-to-prompt editor) starts from:

- ``"ddim"``: run the deterministic DDIM ODE backwards with the caption (guidance 1); sampling back with
  classifier-free guidance > 1 drifts (the motivation of null-text inversion).
- ``"null-text"`` (Mokady et al., CVPR 2023): after DDIM inversion, optimise the unconditional embedding of each
  step (Adam, ``inner_steps`` per step, early stop) so guided sampling retraces the inversion path.
- ``"negative-prompt"`` (Miyake et al., 2023): the closed-form shortcut: use the caption's own embedding as the
  unconditional one, so guidance cancels and sampling is the guidance-1 reverse of the inversion; no optimisation.
- ``"direct"`` (Ju et al., ICLR 2024, "PnP inversion"): keep the DDIM inversion trajectory and, while sampling,
  put the source branch back onto it after every step (the per-step offset), so the source branch reconstructs
  the image exactly and the edited branch reads its attention from a faithful source.
- ``"fixed-point"`` (fixed-point inversion as in AIDI, Pan et al. 2023, and ReNoise, Garibi et al. 2024):
  each inversion step re-evaluates epsilon at its own noisy estimate ``fixed_point_iters`` times, solving
  x_t = DDIM⁻¹(x_{t-1}, ε(x_t)) instead of using ε(x_{t-1}); sampling back uses the caption as the unconditional
  context (as negative-prompt inversion), so it retraces the solved steps. Few steps suffice, because the
  per-step error of plain DDIM inversion is what it removes: 3 steps with 2 iterations cost 12 calls in all.

``eps_fn(x, t, context) -> epsilon`` is any epsilon-prediction denoiser (the compact model's U-Net or SD's on VAE
latents). The DDIM step is written out here (two lines) because inversion needs it in both directions, with
gradients for null-text, and the per-step trajectory for direct inversion. UNet evaluations are counted per image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import input_error

METHODS = ("ddim", "null-text", "negative-prompt", "direct", "fixed-point")
CAPTION_AS_UNCOND = ("negative-prompt", "fixed-point")  # guidance cancels: one call per sampling step
EpsFn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


class CallCounter:
    """Wrap ``eps_fn`` and count UNet evaluations per image (a CFG step over two prompts counts 2)."""

    def __init__(self, eps_fn: EpsFn, n_images: int):
        self.eps_fn = eps_fn
        self.n_images = max(1, int(n_images))
        self.rows = 0
        self.backward_rows = 0

    def __call__(self, x, t, ctx):
        self.rows += x.shape[0]
        return self.eps_fn(x, t, ctx)

    @property
    def calls(self) -> float:
        return self.rows / self.n_images


@dataclass
class Inversion:
    """What sampling needs to retrace (or edit) the inverted images.

    ``latents[i]`` is the DDIM-inversion state at ``timesteps`` position i counted from the clean end
    (``latents[0]`` = x0, ``latents[-1]`` = x_T); ``null_embeddings[i]`` the optimised unconditional context of
    sampling step i (null-text only); ``uncond`` the unconditional context sampling uses (the caption itself for
    negative-prompt inversion).
    """

    method: str
    timesteps: list[int]
    latents: list[torch.Tensor]
    uncond: torch.Tensor
    null_embeddings: list[torch.Tensor] | None = None
    unet_calls: float = 0.0  # per image, inversion only
    backward_calls: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def x_T(self) -> torch.Tensor:
        return self.latents[-1]

    def uncond_at(self, i: int) -> torch.Tensor:
        return self.null_embeddings[i] if self.null_embeddings is not None else self.uncond


def _alpha(scheduler, t: int) -> torch.Tensor:
    return scheduler.alphas_cumprod[t] if t >= 0 else scheduler.final_alpha_cumprod


def ddim_move(x: torch.Tensor, eps: torch.Tensor, a_from: torch.Tensor, a_to: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM update between two noise levels (either direction)."""
    a_from, a_to = a_from.to(x.dtype), a_to.to(x.dtype)
    x0 = (x - (1 - a_from).sqrt() * eps) / a_from.sqrt()
    return a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps


def sampling_schedule(scheduler, num_inference_steps: int) -> tuple[list[int], int]:
    """The sampling timesteps (high → low) and the stride between them."""
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise input_error("num_inference_steps", num_inference_steps, "an integer >= 1")
    scheduler.set_timesteps(num_inference_steps)
    ts = [int(t) for t in scheduler.timesteps]
    stride = scheduler.config.num_train_timesteps // num_inference_steps
    return ts, stride


def sample_step(scheduler, x, eps, t: int, stride: int):
    return ddim_move(x, eps, _alpha(scheduler, t), _alpha(scheduler, t - stride))


def guided_eps(eps_fn, x, t, cond, uncond, guidance_scale: float, same: bool = False):
    """Classifier-free guided epsilon; one evaluation when the two contexts are the same tensor."""
    if same or guidance_scale == 1.0:
        return eps_fn(x, t, cond)
    e = eps_fn(torch.cat([x, x]), t, torch.cat([uncond, cond]))
    eu, ec = e.chunk(2)
    return eu + guidance_scale * (ec - eu)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise input_error("method", method, f"one of {', '.join(METHODS)}")
    return method


@torch.no_grad()
def ddim_invert(eps_fn, scheduler, x0, cond, num_inference_steps: int, fixed_point_iters: int = 0
                ) -> tuple[list[int], list[torch.Tensor]]:
    """The DDIM inversion path [x0, ..., x_T]; ``fixed_point_iters`` > 0 re-solves each step at its own end."""
    ts, stride = sampling_schedule(scheduler, num_inference_steps)
    latents = [x0]
    x = x0
    for t in reversed(ts):
        a_prev, a_t = _alpha(scheduler, t - stride), _alpha(scheduler, t)
        nxt = ddim_move(x, eps_fn(x, t, cond), a_prev, a_t)
        for _ in range(fixed_point_iters):
            nxt = ddim_move(x, eps_fn(nxt, t, cond), a_prev, a_t)
        x = nxt
        latents.append(x)
    return ts, latents


def invert(eps_fn: EpsFn, scheduler, x0: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, *,
           method: str = "direct", num_inference_steps: int = 10, guidance_scale: float = 3.0,
           inner_steps: int = 10, inner_lr: float = 1e-2, early_stop: float = 1e-5,
           fixed_point_iters: int = 2) -> Inversion:
    """Invert ``x0`` (model space, (B,C,H,W)) under caption context ``cond`` (B,L,D); see the module doc.

    ``uncond``: the unconditional (empty-caption) context (B,L,D). ``inner_steps``/``inner_lr``/``early_stop``
    configure null-text optimisation (Mokady et al.'s defaults: 10, 1e-2 decaying, 1e-5 + 2e-5·i);
    ``fixed_point_iters``: extra epsilon evaluations per step of fixed-point inversion (other methods ignore it).
    """
    check_method(method)
    if isinstance(fixed_point_iters, bool) or not isinstance(fixed_point_iters, int) or fixed_point_iters < 0:
        raise input_error("fixed_point_iters", fixed_point_iters, "an integer >= 0")
    if x0.ndim != 4:
        raise input_error("x0", tuple(x0.shape), "a (B,C,H,W) batch")
    if cond.shape[0] != x0.shape[0] or uncond.shape[0] != x0.shape[0]:
        raise input_error("cond", (tuple(cond.shape), tuple(uncond.shape)), f"one context per image ({x0.shape[0]})")
    counter = CallCounter(eps_fn, x0.shape[0])
    iters = fixed_point_iters if method == "fixed-point" else 0
    ts, latents = ddim_invert(counter, scheduler, x0, cond, num_inference_steps, fixed_point_iters=iters)
    inv = Inversion(method, ts, latents, uncond)
    if method in CAPTION_AS_UNCOND:
        inv.uncond = cond
        inv.info["fixed_point_iters"] = iters
    elif method == "null-text":
        inv.null_embeddings = _null_text(counter, scheduler, ts, latents, cond, uncond, guidance_scale,
                                         inner_steps, inner_lr, early_stop)
    inv.unet_calls = counter.calls
    inv.backward_calls = counter.backward_rows / counter.n_images
    return inv


def _null_text(counter: CallCounter, scheduler, ts, latents, cond, uncond, guidance_scale, inner_steps, lr, early_stop):
    stride = scheduler.config.num_train_timesteps // len(ts)
    n = len(ts)
    x = latents[-1]
    nulls: list[torch.Tensor] = []
    u = uncond.detach().clone()
    for i, t in enumerate(ts):
        target = latents[n - 1 - i]
        u = u.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=lr * (1.0 - i / 100.0))
        with torch.no_grad():
            ec = counter(x, t, cond)
        for _ in range(inner_steps):
            with torch.enable_grad():
                eu = counter(x, t, u)
                counter.backward_rows += x.shape[0]
                eps = eu + guidance_scale * (ec - eu)
                pred = sample_step(scheduler, x, eps, t, stride)
                per = (pred - target).pow(2).flatten(1).mean(1)
                loss = per.sum()  # per-image embeddings: the sum keeps each image's update its own
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if float(per.detach().max()) < early_stop + i * 2 * early_stop:
                break
        u = u.detach()
        nulls.append(u)
        with torch.no_grad():
            eu = counter(x, t, u)
            x = sample_step(scheduler, x, eu + guidance_scale * (ec - eu), t, stride)
    return nulls


@torch.no_grad()
def reconstruct(eps_fn: EpsFn, scheduler, inv: Inversion, cond: torch.Tensor, guidance_scale: float = 3.0
                ) -> tuple[torch.Tensor, float]:
    """Sample back from ``inv`` with the caption; returns (x0 in model space, UNet calls per image)."""
    if inv.method == "direct":
        # the source branch is put back on the inversion path after every step (its per-step offset), so it
        # ends exactly at x0 without evaluating anything; the edited branch is where direct inversion costs calls
        return inv.latents[0].clone(), 0.0
    counter = CallCounter(eps_fn, cond.shape[0])
    ts = inv.timesteps
    stride = scheduler.config.num_train_timesteps // len(ts)
    x = inv.x_T
    for i, t in enumerate(ts):
        eps = guided_eps(counter, x, t, cond, inv.uncond_at(i), guidance_scale, same=inv.method in CAPTION_AS_UNCOND)
        x = sample_step(scheduler, x, eps, t, stride)
    return x, counter.calls


__all__ = ["METHODS", "CAPTION_AS_UNCOND", "Inversion", "invert", "reconstruct", "ddim_invert", "ddim_move", "sample_step",
           "sampling_schedule", "guided_eps", "CallCounter"]
