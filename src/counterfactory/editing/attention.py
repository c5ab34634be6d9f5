"""Prompt-to-prompt (Hertz et al., 2022) as diffusers attention processors.

:class:`P2PAttnProcessor` is diffusers' plain ``AttnProcessor`` computation with one hook: the attention
probabilities go through a :class:`P2PController` before they weight the values (diffusers ships no P2P processor
in its core library). Install it on any ``UNet2DConditionModel`` with :func:`install` — the compact model and
Stable Diffusion alike — and remove it with :func:`uninstall`.

Batch layout the controller expects (``n_images`` images, each with a source and a target prompt):
``[uncond half | cond half]`` when guidance is on, each half ``[source_1..source_n, target_1..target_n]``; the
unconditional half may hold the targets only (``[target_1..target_n | cond half]``, 3n rows) when the source
branch's guided prediction is not needed. Only the conditional half is edited (as in the reference
implementation); the controller:

- **replace** (word swap): the target's cross-attention map is the source's, re-indexed token-for-token
  (prompts with the same word count); **refine**: aligned tokens take the source's map, added words keep their
  own; both for steps before ``cross_replace_steps``;
- **reweight**: multiply chosen target tokens' cross-attention by a factor;
- ``self_replace_steps``: the target's self-attention is the source's for early steps (structure kept), in layers
  with at most ``self_max_queries`` queries;
- **local blend**: the summed cross-attention of chosen words (source and target) gives a mask; after
  ``start_blend`` of the steps the target latent outside the mask is reset to the source latent.

It also stores the conditional cross-attention maps (averaged over layers and steps, at ``store_size``) for
reporting the changed word's map.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import input_error

EDIT_TYPES = ("replace", "refine", "none")


def _step_range(value, name: str) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        lo, hi = 0.0, float(value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        lo, hi = float(value[0]), float(value[1])
    else:
        raise input_error(name, value, "a fraction in [0,1] or a (start, end) pair of fractions")
    if not (0 <= lo <= hi <= 1):
        raise input_error(name, value, "fractions with 0 <= start <= end <= 1")
    return lo, hi


def replace_mapper(source_tokens: Sequence[str], target_tokens: Sequence[str]) -> torch.Tensor:
    """(L_src, L_tgt) identity-like mapper for a word swap; equal token counts are required."""
    if len(source_tokens) != len(target_tokens):
        raise input_error("target", " ".join(target_tokens),
                          f"the same number of words as the source ({len(source_tokens)}) for a replace edit; "
                          "use edit_type='refine' for captions of different length")
    n = len(source_tokens)
    return torch.eye(n)


def refine_alignment(source_tokens: Sequence[str], target_tokens: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(index (L_tgt,), alpha (L_tgt,)): target position j reads source position index[j] where alpha[j] = 1.

    Tokens are aligned by longest matching blocks (``difflib``), the sequence alignment P2P's refine needs.
    """
    idx = torch.arange(len(target_tokens))
    alpha = torch.zeros(len(target_tokens))
    sm = difflib.SequenceMatcher(a=list(source_tokens), b=list(target_tokens), autojunk=False)
    for a, b, size in sm.get_matching_blocks():
        for k in range(size):
            idx[b + k] = a + k
            alpha[b + k] = 1.0
    return idx.clamp(max=max(0, len(source_tokens) - 1)), alpha


@dataclass
class LocalBlend:
    """Blend mask from the cross-attention of token positions (per image: source positions, target positions)."""

    source_positions: list[list[int]]
    target_positions: list[list[int]]
    threshold: float = 0.3
    start_blend: float = 0.2  # fraction of steps after which blending starts
    dilate: int = 1  # max-pool radius on the mask (pixels of the latent)


class P2PController:
    """Edits attention probabilities of ``n_images`` (source, target) pairs; see the module doc."""

    def __init__(self, n_images: int, num_steps: int, tokens_source: Sequence[Sequence[str]] | None = None,
                 tokens_target: Sequence[Sequence[str]] | None = None, *, edit_type: str = "replace",
                 cross_replace_steps=0.8, self_replace_steps=0.4, reweight: float = 1.0,
                 reweight_positions: Sequence[Sequence[int]] | None = None,
                 local_blend: LocalBlend | None = None, guidance: bool = True, self_max_queries: int = 32 * 32,
                 store_size: int | None = None, max_length: int | None = None, on_mismatch: str = "refine"):
        if edit_type not in EDIT_TYPES:
            raise input_error("edit_type", edit_type, f"one of {', '.join(EDIT_TYPES)}")
        if on_mismatch not in ("refine", "error"):
            raise input_error("on_mismatch", on_mismatch, "'refine' or 'error'")
        self.n = int(n_images)
        self.num_steps = int(num_steps)
        self.cross_range = _step_range(cross_replace_steps, "cross_replace_steps")
        self.self_range = _step_range(self_replace_steps, "self_replace_steps")
        self.guidance = guidance
        self.self_max_queries = self_max_queries
        self.local_blend = local_blend
        self.store_size = store_size
        self.step = 0
        self.edit_types: list[str] = []
        self.mappers: list[tuple[torch.Tensor, torch.Tensor]] = []  # per image (index (L,), alpha (L,))
        self.reweight = float(reweight)
        self.reweight_positions = reweight_positions
        ts = tokens_source or [[]] * self.n
        tt = tokens_target or [[]] * self.n
        if len(ts) != self.n or len(tt) != self.n:
            raise input_error("tokens", (len(ts), len(tt)), f"one token list per image ({self.n})")
        for s, t in zip(ts, tt):
            kind = edit_type
            if kind == "replace" and len(s) != len(t):
                if on_mismatch == "error":
                    replace_mapper(s, t)  # raises the one-line error
                kind = "refine"  # different word counts: fall back to refine
            if kind == "replace":
                idx, alpha = torch.arange(len(t)), torch.ones(len(t))
            elif kind == "refine":
                idx, alpha = refine_alignment(s, t)
            else:
                idx, alpha = torch.arange(len(t)), torch.zeros(len(t))
            self.edit_types.append(kind)
            self.mappers.append((idx, alpha))
        self.max_length = max_length
        self._store: dict[int, torch.Tensor] = {}  # query count -> summed (2n, Q, K) cond cross maps
        self._store_count: dict[int, int] = {}
        self._blend_maps: list[torch.Tensor] = []

    # ------------------------------------------------------------------ step bookkeeping
    def begin_step(self, i: int) -> None:
        self.step = int(i)
        self._blend_maps = []

    def _active(self, rng: tuple[float, float]) -> bool:
        f = self.step / max(1, self.num_steps)
        return rng[0] <= f < rng[1]

    # ------------------------------------------------------------------ the hook
    def __call__(self, probs: torch.Tensor, is_cross: bool, heads: int) -> torch.Tensor:
        """``probs``: (batch·heads, Q, K) attention probabilities of one layer."""
        rows = probs.shape[0] // heads
        allowed = (3 * self.n, 4 * self.n) if self.guidance else (2 * self.n,)
        if rows not in allowed:
            return probs  # not an editing batch (e.g. a plain forward): untouched
        p = probs.view(rows, heads, *probs.shape[1:])
        cond = p[-2 * self.n:].view(2, self.n, heads, *probs.shape[1:])  # the conditional [source, target] rows
        src, tgt = cond[0], cond[1]
        if is_cross:
            self._record(cond)
            if self._active(self.cross_range):
                new = []
                for i, (idx, alpha) in enumerate(self.mappers):
                    if self.edit_types[i] == "replace":  # equal word counts: the source's map, token for token
                        new.append(src[i])
                        continue
                    L = min(len(idx), src.shape[-1] - 1)
                    a = alpha[:L].to(src.dtype).to(src.device)
                    mapped = src[i][..., 1 + idx[:L].to(src.device)]  # aligned source token of each target word
                    cur = tgt[i].clone()
                    cur[..., 1:L + 1] = mapped * a + cur[..., 1:L + 1] * (1 - a)
                    new.append(cur)
                tgt = torch.stack(new)
            if self.reweight != 1.0 and self.reweight_positions is not None:
                tgt = tgt.clone()
                for i, positions in enumerate(self.reweight_positions):
                    for pos in positions:
                        tgt[i, ..., pos] = tgt[i, ..., pos] * self.reweight
        elif probs.shape[1] <= self.self_max_queries and self._active(self.self_range):
            tgt = src.clone()
        else:
            return probs
        out = p.clone()
        out[-self.n:] = tgt
        return out.view_as(probs)

    def _record(self, cond: torch.Tensor) -> None:
        maps = cond.mean(dim=2).detach()  # (2, n, Q, K) averaged over heads
        q = maps.shape[-2]
        self._blend_maps.append(maps)
        self._store[q] = self._store.get(q, 0) + maps
        self._store_count[q] = self._store_count.get(q, 0) + 1

    # ------------------------------------------------------------------ maps and blending
    def word_maps(self, positions: Sequence[Sequence[int]], branch: int = 1, size: int | None = None,
                  from_step: bool = False) -> torch.Tensor:
        """(n, 1, size, size) mean cross-attention of the token ``positions`` of each image, normalised to max 1."""
        sources = self._blend_maps if from_step else [
            self._store[q] / self._store_count[q] for q in self._store]
        if not sources:
            raise input_error("attention maps", "none recorded", "a sampling run with the controller installed")
        size = size or self.store_size or max(int(round(m.shape[-2] ** 0.5)) for m in sources)
        acc = None
        for m in sources:
            side = int(round(m.shape[-2] ** 0.5))
            sel = torch.stack([m[branch, i][:, list(pos)].sum(-1) if pos else torch.zeros(m.shape[-2])
                               for i, pos in enumerate(positions)])  # (n, Q)
            img = F.interpolate(sel.view(-1, 1, side, side).float(), size=(size, size), mode="bilinear",
                                align_corners=False)
            acc = img if acc is None else acc + img
        acc = acc / len(sources)
        peak = acc.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return acc / peak

    def blend(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """Local blend of the latents ``x`` (2n or 4n rows: [source, target] per half) after this step."""
        lb = self.local_blend
        if lb is None or self.step < lb.start_blend * self.num_steps or not self._blend_maps:
            return x
        mask = self.blend_mask(size)
        src, tgt = x[: self.n], x[self.n: 2 * self.n]
        tgt = src + mask.to(x.dtype) * (tgt - src)
        return torch.cat([src, tgt, x[2 * self.n:]])

    def blend_mask(self, size: int) -> torch.Tensor:
        lb = self.local_blend
        m = self.word_maps(lb.source_positions, branch=0, size=size) + self.word_maps(
            lb.target_positions, branch=1, size=size)
        if lb.dilate > 0:
            m = F.max_pool2d(m, 2 * lb.dilate + 1, stride=1, padding=lb.dilate)
        m = m / m.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (m >= lb.threshold).float()


class P2PAttnProcessor:
    """diffusers ``AttnProcessor`` with a prompt-to-prompt hook on the attention probabilities."""

    def __init__(self, controller: P2PController | None, place: str = ""):
        self.controller = controller
        self.place = place

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states.shape if encoder_hidden_states is None
                                          else encoder_hidden_states.shape)
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        is_cross = encoder_hidden_states is not None
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)
        probs = attn.get_attention_scores(query, key, attention_mask)
        if self.controller is not None:
            probs = self.controller(probs, is_cross, attn.heads)
        hidden_states = torch.bmm(probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install(unet, controller: P2PController | None) -> dict:
    """Put a P2P processor on every attention layer of ``unet``; returns the previous processors."""
    previous = dict(unet.attn_processors)
    unet.set_attn_processor({name: P2PAttnProcessor(controller, name) for name in previous})
    return previous


def uninstall(unet, previous: dict) -> None:
    unet.set_attn_processor(previous)


def attention_overlay(image, attention, size: int | None = None, alpha: float = 0.6):
    """The attention map drawn over the image: uint8 (S,S,3), ``S = size`` (default: the image's side).

    ``image``: (H,W), (1,H,W) or (H,W,1) grey in [0,1] (tensor or array); ``attention``: (h,w) or (1,h,w) in
    [0,1] at any resolution. The map is upsampled bilinearly (smooth), the image with nearest neighbours (crisp
    pixels); the map is stretched to its own range (its weakest point 0, its strongest 1, so a map that is nearly
    flat still shows where the word attends most), coloured with matplotlib's ``inferno`` and blended with
    per-pixel opacity ``alpha·attention``: the grey digit shows through where the word attends least.
    """
    import numpy as np
    from matplotlib import colormaps

    img = torch.as_tensor(np.asarray(image, dtype=np.float32)).squeeze()
    att = torch.as_tensor(np.asarray(attention, dtype=np.float32)).squeeze()
    if img.ndim != 2:
        raise input_error("image", tuple(img.shape), "one grey image (H,W)")
    if att.ndim != 2:
        raise input_error("attention", tuple(att.shape), "one map (h,w)")
    if not 0 <= alpha <= 1:
        raise input_error("alpha", alpha, "a number in [0, 1]")
    side = int(size or img.shape[-1])
    if side < 1:
        raise input_error("size", size, "an integer >= 1")
    g = F.interpolate(img[None, None].clamp(0, 1), size=(side, side), mode="nearest")[0, 0].numpy()
    a = F.interpolate(att[None, None].clamp(0, 1), size=(side, side), mode="bilinear", align_corners=False)[0, 0]
    lo, hi = float(a.min()), float(a.max())
    a = ((a - lo) / (hi - lo) if hi - lo > 1e-6 else torch.zeros_like(a)).clamp(0, 1).numpy()
    heat = colormaps["inferno"](a)[..., :3]
    w = (alpha * a)[..., None]
    out = (1 - w) * g[..., None] + w * heat
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


__all__ = ["P2PController", "P2PAttnProcessor", "LocalBlend", "install", "uninstall", "replace_mapper",
           "refine_alignment", "attention_overlay", "EDIT_TYPES"]
