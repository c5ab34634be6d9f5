"""Text-guided counterfactual editing of real images: inversion + prompt-to-prompt.

``TextEditPipeline(model)(image, source, target)`` inverts ``image`` under its caption ``source`` (one of the
:mod:`~counterfactory.editing.inversion` methods), then samples the source and the target caption together from
the inverted noise with the prompt-to-prompt processors installed, so the target branch keeps the source's
attention (structure) and changes what the swapped word controls. Local blend (on by default) keeps pixels away
from the changed word's attention as they were. Works batched: ``image`` (B,1,H,W), ``source``/``target`` lists.

:func:`p2p_sample` is the model-agnostic loop (any ``UNet2DConditionModel`` on pixels or latents).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..editing.attention import LocalBlend, P2PController, install, uninstall
from ..editing.inversion import CAPTION_AS_UNCOND, Inversion, check_method, invert, sample_step, sampling_schedule
from ..errors import input_error
from ..io.images import from_model_space, to_model_space
from ..models.text2image import Text2ImageModel


@dataclass
class TextEditOutput:
    images: torch.Tensor  # (B,C,H,W) edited, [0,1]
    attention_maps: torch.Tensor  # (B,1,H,W) the changed target word's cross-attention, max 1
    blend_masks: torch.Tensor | None  # (B,1,H,W) local-blend region (1 = may change), None without blending
    source_images: torch.Tensor  # (B,C,H,W) the source branch (the reconstruction), [0,1]
    changed_words: list[tuple[list[str], list[str]]]  # per image: (removed source words, added target words)
    edit_types: list[str]  # per image: replace, or refine where the word counts differ
    unet_calls: float  # per image, inversion + edit


def changed_words(tokens_source: Sequence[str], tokens_target: Sequence[str]) -> tuple[list[int], list[int]]:
    """Token positions (BOS = 0) of words that differ: (in the source, in the target)."""
    sm = difflib.SequenceMatcher(a=list(tokens_source), b=list(tokens_target), autojunk=False)
    src, tgt = [], []
    for op, a0, a1, b0, b1 in sm.get_opcodes():
        if op != "equal":
            src += [i + 1 for i in range(a0, a1)]
            tgt += [j + 1 for j in range(b0, b1)]
    return src, tgt


def p2p_sample(unet, scheduler, inv: Inversion, cond_src: torch.Tensor, cond_tgt: torch.Tensor,
               controller: P2PController, guidance_scale: float, null: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Sample (source, target) from ``inv`` with ``controller`` installed on ``unet``.

    Returns (source x0, target x0, UNet calls per image) in model space. ``null``: the empty-caption context; the
    inversion decides the unconditional context per step (optimised nulls, the source caption, or ``null``).
    """
    n = cond_src.shape[0]
    ts = inv.timesteps
    stride = scheduler.config.num_train_timesteps // len(ts)
    steps = len(ts)
    x = torch.cat([inv.x_T, inv.x_T])
    previous = install(unet, controller)
    rows = 0
    try:
        for i, t in enumerate(ts):
            controller.begin_step(i)
            unc = inv.uncond_at(i) if inv.method in CAPTION_AS_UNCOND + ("null-text",) else null
            ctx = torch.cat([unc, unc, cond_src, cond_tgt])
            e = unet(torch.cat([x, x]), t, encoder_hidden_states=ctx).sample
            rows += 4 * n
            eu, ec = e.chunk(2)
            eps = eu + guidance_scale * (ec - eu)
            x = sample_step(scheduler, x, eps, t, stride)
            if inv.method == "direct":  # the per-step offset: the source branch stays on the inversion path
                x = torch.cat([inv.latents[steps - 1 - i], x[n:]])
            x = controller.blend(x, x.shape[-1])
    finally:
        uninstall(unet, previous)
    src, tgt = x[:n], x[n:]
    return src, tgt, rows / n


@torch.no_grad()
def generate(model: Text2ImageModel, prompts: Sequence[str], num_inference_steps: int = 20,
             guidance_scale: float = 3.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Text-to-image sampling (DDIM from seeded noise, classifier-free guidance): (B,C,H,W) in [0,1]."""
    cond = model.encode(list(prompts), "prompts")
    null = model.encode([""] * len(prompts))
    c, s = model.cfg.in_channels, model.cfg.sample_size
    x = torch.randn((len(prompts), c, s, s), generator=generator).to(model.device)
    ts, stride = sampling_schedule(model.scheduler, num_inference_steps)
    for t in ts:
        e = model.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([null, cond])).sample
        eu, ec = e.chunk(2)
        x = sample_step(model.scheduler, x, eu + guidance_scale * (ec - eu), t, stride)
    return from_model_space(x).clamp(0, 1).cpu()


class TextEditPipeline:
    """Edit real digits with the compact text-to-image model (or any model of the same interface)."""

    def __init__(self, model: Text2ImageModel):
        self.model = model

    @classmethod
    def from_pretrained(cls, folder=None, device="cpu") -> TextEditPipeline:
        return cls(Text2ImageModel.load(folder, device=device))

    # ------------------------------------------------------------------ checks
    def check_inputs(self, image, source, target, num_inference_steps: int, guidance_scale: float):
        self.model.check_image(image, "image")
        b = image.shape[0]
        source = [source] * b if isinstance(source, str) else list(source)
        target = [target] * b if isinstance(target, str) else list(target)
        if len(source) != b or len(target) != b:
            raise input_error("source/target", (len(source), len(target)), f"one caption per image ({b})")
        self.model.tokenizer.encode(source, argument="source")
        self.model.tokenizer.encode(target, argument="target")
        for s, t in zip(source, target):
            ps, pt = changed_words(self.model.tokenizer.split(s), self.model.tokenizer.split(t))
            if not ps and not pt:
                raise input_error("target", t, "a caption that differs from --source in at least one word")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise input_error("num_inference_steps", num_inference_steps, "an integer >= 1")
        if not (guidance_scale >= 1.0):
            raise input_error("guidance_scale", guidance_scale, "a number >= 1")
        if float(image.min()) < 0 or float(image.max()) > 1:
            raise input_error("image", f"range [{float(image.min()):.3g}, {float(image.max()):.3g}]", "values in [0,1]")
        return source, target

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(self, image: torch.Tensor, source: str | Sequence[str], target: str | Sequence[str], *,
                 method: str = "direct", edit_type: str = "replace", num_inference_steps: int = 10,
                 guidance_scale: float = 3.0, cross_replace_steps=0.8, self_replace_steps=0.4,
                 reweight: float = 1.0, local_blend: bool = True, blend_threshold: float = 0.3,
                 start_blend: float = 0.2, inversion: Inversion | None = None, inner_steps: int = 10,
                 on_mismatch: str = "refine") -> TextEditOutput:
        """Edit ``image`` (B,1,H,W) in [0,1] from caption ``source`` to caption ``target``.

        ``method``: inversion (direct, fixed-point, negative-prompt, null-text, ddim); ``edit_type``: replace (word swap; falls
        back to refine when word counts differ, or raises with ``on_mismatch='error'``) or refine;
        ``reweight``: factor on the changed target words' cross-attention; ``local_blend``: keep pixels outside
        the changed words' attention (threshold ``blend_threshold``, from ``start_blend`` of the steps).
        """
        check_method(method)
        source, target = self.check_inputs(image, source, target, num_inference_steps, guidance_scale)
        m = self.model
        tok = m.tokenizer
        n = image.shape[0]
        x0 = to_model_space(image.to(m.device).float())
        cond_src, cond_tgt = m.encode(source, "source"), m.encode(target, "target")
        null = m.encode([""] * n)
        unet = m.unet

        def eps_fn(x, t, ctx):
            return unet(x, t, encoder_hidden_states=ctx).sample

        with torch.enable_grad() if method == "null-text" else torch.no_grad():
            inv = inversion if inversion is not None else invert(
                eps_fn, m.scheduler, x0, cond_src, null, method=method, num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale, inner_steps=inner_steps)
        toks_s = [tok.split(s) for s in source]
        toks_t = [tok.split(t) for t in target]
        changes = [changed_words(a, b) for a, b in zip(toks_s, toks_t)]
        blend = LocalBlend([c[0] for c in changes], [c[1] for c in changes], threshold=blend_threshold,
                           start_blend=start_blend) if local_blend else None
        controller = P2PController(n, len(inv.timesteps), toks_s, toks_t, edit_type=edit_type,
                                   cross_replace_steps=cross_replace_steps, self_replace_steps=self_replace_steps,
                                   reweight=reweight, reweight_positions=[c[1] for c in changes], local_blend=blend,
                                   on_mismatch=on_mismatch)
        src, tgt, calls = p2p_sample(unet, m.scheduler, inv, cond_src, cond_tgt, controller, guidance_scale, null)
        size = image.shape[-1]
        maps = controller.word_maps([c[1] for c in changes], branch=1, size=size)
        masks = controller.blend_mask(size) if blend is not None else None
        words = [([a[p - 1] for p in c[0]], [b[p - 1] for p in c[1]]) for a, b, c in zip(toks_s, toks_t, changes)]
        return TextEditOutput(images=from_model_space(tgt).clamp(0, 1).cpu(), attention_maps=maps.cpu(),
                              blend_masks=None if masks is None else masks.cpu(),
                              source_images=from_model_space(src).clamp(0, 1).cpu(), changed_words=words,
                              edit_types=list(controller.edit_types), unet_calls=inv.unet_calls + calls)


__all__ = ["TextEditPipeline", "TextEditOutput", "p2p_sample", "changed_words", "generate"]
