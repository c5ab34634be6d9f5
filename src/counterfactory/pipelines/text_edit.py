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
from ..editing.inversion import (
    CAPTION_AS_UNCOND,
    Inversion,
    check_method,
    invert,
    sample_step,
    sampling_schedule,
)
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
    # direct inversion puts the source branch back on the inversion path after every step, so the source's guided
    # prediction is never used: its unconditional row is skipped (3n rows per call instead of 4n); the source's
    # conditional row stays, prompt-to-prompt needs its attention
    direct = inv.method == "direct"
    previous = install(unet, controller)
    rows = 0
    try:
        for i, t in enumerate(ts):
            controller.begin_step(i)
            unc = inv.uncond_at(i) if inv.method in CAPTION_AS_UNCOND + ("null-text",) else null
            if direct:
                e = unet(torch.cat([x[n:], x]), t, encoder_hidden_states=torch.cat([unc, cond_src, cond_tgt])).sample
                rows += 3 * n
                eu, ec = e[:n], e[2 * n:]
                x_tgt = sample_step(scheduler, x[n:], eu + guidance_scale * (ec - eu), t, stride)
                x = torch.cat([inv.latents[steps - 1 - i], x_tgt])  # the per-step offset of direct inversion
            else:
                e = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([unc, unc, cond_src, cond_tgt])).sample
                rows += 4 * n
                eu, ec = e.chunk(2)
                x = sample_step(scheduler, x, eu + guidance_scale * (ec - eu), t, stride)
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
                raise input_error("target", t, "a caption that differs from the source caption in at least one word")
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


# ------------------------------------------------------------------------------------------------ the report
@dataclass
class EditRow:
    """One edit as the HTML report shows it: grey images (H,W)/(1,H,W) in [0,1] and the two captions."""

    reference: object
    edited: object
    source: str
    target: str
    attention: object  # the changed target word's cross-attention map, [0,1], any resolution
    note: str = ""  # e.g. the measured attribute change


def caption_diff_html(source: str, target: str) -> str:
    """Word diff of two captions as HTML: removed words in ``<del>``, added ones in ``<ins>`` (escaped)."""
    import html

    a, b = source.split(), target.split()
    parts = []
    for op, a0, a1, b0, b1 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            parts.append(html.escape(" ".join(a[a0:a1])))
        else:
            if a1 > a0:
                parts.append(f"<del>{html.escape(' '.join(a[a0:a1]))}</del>")
            if b1 > b0:
                parts.append(f"<ins>{html.escape(' '.join(b[b0:b1]))}</ins>")
    return " ".join(parts)


def _grey(image, name: str):
    """A grey image (tensor or array; (H,W), (1,H,W) or (H,W,1); uint8 or [0,1] floats) as float (H,W) in [0,1]."""
    import numpy as np

    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    arr = arr.squeeze()
    if arr.ndim != 2:
        raise input_error(name, tuple(arr.shape), "one grey image (H,W)")
    return np.clip(arr, 0, 1)


def _png_data_uri(image) -> str:
    import base64
    import io

    from ..io.images import to_pil

    buf = io.BytesIO()
    to_pil(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


REPORT_STYLE = ("<style>body{font-family:sans-serif;margin:1.5em} td,th{padding:4px 8px;text-align:left;"
                "vertical-align:middle} img.px{image-rendering:pixelated} del{color:#b00} ins{color:#070}"
                " table{border-collapse:collapse} tr:nth-child(even){background:#f6f6f6}</style>")


def edit_table_html(rows: Sequence[EditRow], cell_px: int = 112, note_title: str = "") -> str:
    """reference | edited | caption diff | the changed word's attention over the edited digit (| note), one row
    per edit; images embedded (data URIs), digits enlarged with crisp pixels, the map upsampled smoothly."""
    import html

    from ..editing.attention import attention_overlay

    if not isinstance(cell_px, int) or cell_px < 8:
        raise input_error("cell_px", cell_px, "an integer >= 8")
    head = ["reference", "edited", "caption diff", "attention of the changed word (over the edited digit)"]
    if note_title:
        head.append(note_title)
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        ref, edited = _grey(r.reference, "reference"), _grey(r.edited, "edited")
        over = attention_overlay(edited, _grey(r.attention, "attention"), size=cell_px)
        cells = [f"<img class='px' width='{cell_px}' height='{cell_px}' alt='reference' src='{_png_data_uri(ref)}'>",
                 f"<img class='px' width='{cell_px}' height='{cell_px}' alt='edited' src='{_png_data_uri(edited)}'>",
                 caption_diff_html(r.source, r.target),
                 f"<img width='{cell_px}' height='{cell_px}' alt='attention' src='{_png_data_uri(over)}'>"]
        if note_title:
            cells.append(html.escape(r.note))
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def edit_report_html(rows: Sequence[EditRow], title: str = "Text counterfactual edits", intro: str = "",
                     note_title: str = "") -> str:
    """A self-contained HTML page: ``title``, ``intro`` (plain text) and :func:`edit_table_html` of ``rows``."""
    import html

    return ("<!doctype html><meta charset='utf-8'>" f"<title>{html.escape(title)}</title>{REPORT_STYLE}"
            f"<h1>{html.escape(title)}</h1>" + (f"<p>{html.escape(intro)}</p>" if intro else "")
            + edit_table_html(rows, note_title=note_title) + "\n")


__all__ = ["TextEditPipeline", "TextEditOutput", "p2p_sample", "changed_words", "generate", "EditRow",
           "caption_diff_html", "edit_table_html", "edit_report_html"]
