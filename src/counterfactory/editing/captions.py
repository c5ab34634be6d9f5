"""Captions for digits, from measurement: Morpho-MNIST morphometry, attribute words, and caption perturbers.

**Measurement** (:func:`measure`) follows Morpho-MNIST (Castro et al., 2019, ``morpho_mnist/morpho.py``): each
digit is upscaled ×4 (bicubic, ``skimage.transform.pyramid_expand``) and binarised; then

- ``thickness`` = 2 × the mean Euclidean distance-transform value on the skeleton, in original pixels;
- ``slant`` = ``arctan(-mu11 / mu02)`` of the upscaled image's central moments (radians; > 0 leans right, the top
  of the digit to the right of its bottom);
- ``width`` / ``height`` = the extent of the slant-corrected (sheared back) digit between the 2 % and 98 % points of
  its ink mass along each axis, in original pixels;
- ``length`` = skeleton pixel count / 4 (stroke length in original pixels);
- ``area`` and ``intensity`` come from :func:`counterfactory.data.morphomnist.measure` (foreground pixel count and
  median foreground value, 0..255), the one home of those two variables.

The binarisation threshold is relative, ``0.5 × the image's maximum``: the data's intensity variable rescales the
whole stroke, so a fixed threshold would make thickness depend on intensity.

**Captions** (:class:`AttributeCaptioner`): each attribute is binned at its median on the fixed train split into
one of two words (``thin``/``thick``, ``upright``/``slanted``, ``dim``/``bright``, ...), e.g.
``"a thick, slanted, bright seven"``. Every caption holds one word per attribute, so swapping one word keeps the
word count (prompt-to-prompt's *replace* edit needs equal counts).

**Perturbation**: :class:`RulePerturber` swaps exactly one attribute word for its opposite and phrases the change
("make it thicker"); :class:`LLMPerturber` asks a causal language model from a local folder (optionally LoRA-tuned
with :func:`finetune_llm_perturber`, LANCE-style) for the edited caption and reads the change off a word diff.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import CheckpointError, input_error

SCALE = 4  # Morpho-MNIST's measurement upscaling factor
THRESHOLD_REL = 0.5  # binarise the upscaled digit at this fraction of its maximum
BOUND_FRAC = 0.02  # width/height: ink-mass fraction cut at each end of the slant-corrected extent

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
UNKNOWN_DIGIT_WORD = "digit"
MEASURED = ("thickness", "slant", "width", "height", "area", "intensity", "length")

# attribute -> (word below the bin edge, word at or above it)
ATTRIBUTE_WORDS: dict[str, tuple[str, str]] = {
    "thickness": ("thin", "thick"),
    "slant": ("upright", "slanted"),
    "width": ("narrow", "wide"),
    "height": ("short", "tall"),
    "area": ("small", "large"),
    "intensity": ("dim", "bright"),
}
DEFAULT_ATTRIBUTES = ("thickness", "slant", "intensity")  # the caption's adjectives, in this order

# word -> (attribute, +1 for the high word / -1 for the low one)
WORD_ATTRIBUTE: dict[str, tuple[str, int]] = {
    w: (a, s) for a, (lo, hi) in ATTRIBUTE_WORDS.items() for w, s in ((lo, -1), (hi, +1))
}
VOCABULARY: tuple[str, ...] = tuple(
    ["a"] + [w for pair in ATTRIBUTE_WORDS.values() for w in pair] + list(DIGIT_WORDS) + [UNKNOWN_DIGIT_WORD]
)  # every word a caption can contain (captions also hold ", " between adjectives)

# (attribute, direction) -> modification texts; the first is the default phrasing
MODIFICATIONS: dict[tuple[str, int], tuple[str, ...]] = {
    ("thickness", +1): ("make it thicker", "use a thicker stroke", "make the stroke thicker"),
    ("thickness", -1): ("make it thinner", "use a thinner stroke", "make the stroke thinner"),
    ("slant", +1): ("make it slanted", "slant it more", "tilt it to the right"),
    ("slant", -1): ("make it upright", "straighten it up", "make it less slanted"),
    ("width", +1): ("make it wider", "widen it", "make the digit wider"),
    ("width", -1): ("make it narrower", "narrow it", "make the digit narrower"),
    ("height", +1): ("make it taller", "stretch it taller", "make the digit taller"),
    ("height", -1): ("make it shorter", "squash it shorter", "make the digit shorter"),
    ("area", +1): ("make it larger", "use more ink", "make the digit larger"),
    ("area", -1): ("make it smaller", "use less ink", "make the digit smaller"),
    ("intensity", +1): ("make it brighter", "brighten it", "make the stroke brighter"),
    ("intensity", -1): ("make it dimmer", "darken it", "make the stroke dimmer"),
}
MODIFICATION_WORDS: tuple[str, ...] = tuple(
    sorted({w for texts in MODIFICATIONS.values() for t in texts for w in t.split()})
)  # every word a rule-based modification text can contain


# --------------------------------------------------------------------------------------------- measurement
def _as_digit_array(images) -> np.ndarray:
    """(N,28,28) or (28,28) uint8 in 0..255 or float in [0,1] (numpy or torch; (N,1,28,28) too) → float64 [0,1]."""
    try:
        import torch

        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    arr = np.asarray(images)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] == 0 or min(arr.shape[1:]) < 4:
        raise input_error("images", f"shape {arr.shape}", "a non-empty (N,H,W) or (N,1,H,W) array of grayscale digits")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise input_error("images", f"dtype {arr.dtype}", "uint8 in 0..255 or float in [0,1]")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
        raise input_error("images", f"float range [{np.nanmin(arr):.3g}, {np.nanmax(arr):.3g}]", "floats in [0,1]")
    return arr


def _weighted_bounds(coord: np.ndarray, weight: np.ndarray, frac: float) -> tuple[float, float]:
    order = np.argsort(coord, kind="stable")
    c, w = coord[order], weight[order]
    cum = np.cumsum(w)
    total = cum[-1]
    lo = c[min(np.searchsorted(cum, frac * total), len(c) - 1)]
    hi = c[min(np.searchsorted(cum, (1.0 - frac) * total), len(c) - 1)]
    return float(lo), float(hi)


def _measure_one(img: np.ndarray) -> tuple[float, float, float, float, float]:
    from scipy import ndimage
    from skimage.morphology import skeletonize
    from skimage.transform import pyramid_expand

    if img.max() <= 0.0:
        return 0.0, 0.0, 0.0, 0.0, 0.0
    hi = np.clip(pyramid_expand(img, upscale=SCALE, order=3), 0.0, None)
    binary = hi > THRESHOLD_REL * hi.max()
    if not binary.any():
        return 0.0, 0.0, 0.0, 0.0, 0.0
    skeleton = skeletonize(binary)
    dist = ndimage.distance_transform_edt(binary)
    thickness = 2.0 * float(dist[skeleton].mean()) / SCALE if skeleton.any() else 0.0
    length = float(skeleton.sum()) / SCALE
    # moments of the upscaled grey image (rows = y downwards, cols = x)
    ys, xs = np.nonzero(hi > 0)
    w = hi[ys, xs]
    m00 = w.sum()
    cx, cy = (w * xs).sum() / m00, (w * ys).sum() / m00
    mu11 = (w * (xs - cx) * (ys - cy)).sum() / m00
    mu02 = (w * (ys - cy) ** 2).sum() / m00
    shear = mu11 / mu02 if mu02 > 0 else 0.0  # x ≈ cx + shear·(y − cy)
    slant = float(np.arctan(-shear))
    xs_corrected = xs - shear * (ys - cy)
    x0, x1 = _weighted_bounds(xs_corrected, w, BOUND_FRAC)
    y0, y1 = _weighted_bounds(ys.astype(np.float64), w, BOUND_FRAC)
    return thickness, slant, (x1 - x0) / SCALE, (y1 - y0) / SCALE, length


def measure(images) -> dict[str, np.ndarray]:
    """Morpho-MNIST morphometry of each digit: ``{name: (N,) float64}`` for every name in :data:`MEASURED`.

    ``images``: (N,28,28) (or (N,1,28,28), or one (28,28)) uint8 in 0..255 or float in [0,1]; numpy or torch.
    """
    import torch

    from ..data.morphomnist import measure as _area_intensity

    arr = _as_digit_array(images)
    rows = np.array([_measure_one(im) for im in arr], dtype=np.float64).reshape(len(arr), 5)
    area, intensity = _area_intensity(torch.from_numpy(arr.astype(np.float32))[:, None], 1) if arr.shape[2] == 28 else (
        None, None)
    if area is None:  # another width than one 28-px digit: the same rules, measured here
        peak = arr.max(axis=(1, 2), keepdims=True)
        fg = (arr >= 0.5 * peak) & (arr > 0)
        area_np = fg.sum(axis=(1, 2)).astype(np.float64)
        inten_np = np.array([np.median(a[f]) * 255.0 if f.any() else 0.0 for a, f in zip(arr, fg)])
    else:
        area_np = area[:, 0].double().numpy()
        inten_np = intensity[:, 0].double().numpy()
    return {
        "thickness": rows[:, 0],
        "slant": rows[:, 1],
        "width": rows[:, 2],
        "height": rows[:, 3],
        "area": area_np,
        "intensity": inten_np,
        "length": rows[:, 4],
    }


# --------------------------------------------------------------------------------------------- captioners
@runtime_checkable
class Captioner(Protocol):
    """Anything that turns images into one caption each."""

    def caption(self, images, labels: Sequence[int] | None = None) -> list[str]: ...


def digit_word(label) -> str:
    if label is None:
        return UNKNOWN_DIGIT_WORD
    try:
        k = int(label)
    except (TypeError, ValueError):
        raise input_error("labels", label, "digit labels 0..9") from None
    if not 0 <= k <= 9:
        raise input_error("labels", label, "digit labels 0..9")
    return DIGIT_WORDS[k]


def compose_caption(words: Sequence[str], digit: str) -> str:
    """``["thick", "slanted"], "seven"`` → ``"a thick, slanted seven"``."""
    return ("a " + ", ".join(words) + " " + digit) if words else f"a {digit}"


_CAPTION_RE = re.compile(r"[a-z]+")


def caption_words(caption: str) -> list[str]:
    """The lower-case words of a caption, punctuation dropped."""
    return _CAPTION_RE.findall(caption.lower())


@dataclass(frozen=True)
class AttributeCaptioner:
    """Measured attributes → words, binned at stored edges (the train-split medians by default).

    ``edges``: attribute → bin edge (a value at or above it gets the high word). ``attributes``: the adjectives a
    caption holds, in order. Build with :meth:`fit` (medians of given images), :meth:`from_morphomnist` (the fixed
    train split) or :meth:`load`; :data:`DEFAULT_EDGES` are the medians of the real Morpho-MNIST train split.
    """

    edges: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EDGES))
    attributes: tuple[str, ...] = DEFAULT_ATTRIBUTES

    def __post_init__(self):
        attrs = tuple(self.attributes)
        object.__setattr__(self, "attributes", attrs)
        for a in attrs:
            if a not in ATTRIBUTE_WORDS:
                raise input_error("attributes", a, f"attributes among {', '.join(ATTRIBUTE_WORDS)}")
            if a not in self.edges or not np.isfinite(float(self.edges[a])):
                raise input_error("edges", self.edges, f"a finite bin edge for every caption attribute (missing {a})")
        if len(set(attrs)) != len(attrs):
            raise input_error("attributes", attrs, "each attribute at most once")

    # ---- construction
    @classmethod
    def fit(cls, images, attributes: Sequence[str] = DEFAULT_ATTRIBUTES) -> AttributeCaptioner:
        m = measure(images)
        return cls(edges={a: float(np.median(m[a])) for a in ATTRIBUTE_WORDS}, attributes=tuple(attributes))

    @classmethod
    def from_morphomnist(cls, root, attributes: Sequence[str] = DEFAULT_ATTRIBUTES) -> AttributeCaptioner:
        from ..data.morphomnist import load_morphomnist, split_indices

        data = load_morphomnist(root)
        return cls.fit(data.images[split_indices(len(data), "train")], attributes)

    def save(self, path) -> Path:
        from ..io.manifest import atomic_write_text

        path = Path(path)
        atomic_write_text(path, json.dumps({"edges": self.edges, "attributes": list(self.attributes)}, indent=2))
        return path

    @classmethod
    def load(cls, path) -> AttributeCaptioner:
        path = Path(path)
        if not path.is_file():
            raise input_error("captioner", str(path), "a captioner JSON written by AttributeCaptioner.save")
        try:
            d = json.loads(path.read_text())
            return cls(edges={k: float(v) for k, v in d["edges"].items()}, attributes=tuple(d["attributes"]))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise input_error("captioner", str(path), f"a captioner JSON with edges and attributes ({exc})") from None

    # ---- use
    def measure(self, images) -> dict[str, np.ndarray]:
        return measure(images)

    def words(self, measurements: dict[str, np.ndarray]) -> list[list[str]]:
        n = len(next(iter(measurements.values())))
        out: list[list[str]] = [[] for _ in range(n)]
        for a in self.attributes:
            lo, hi = ATTRIBUTE_WORDS[a]
            vals = np.asarray(measurements[a], dtype=np.float64)
            for i, v in enumerate(vals):
                out[i].append(hi if v >= self.edges[a] else lo)
        return out

    def caption_measurements(self, measurements: dict[str, np.ndarray], labels: Sequence[int] | None = None) -> list[str]:
        words = self.words(measurements)
        if labels is not None and len(labels) != len(words):
            raise input_error("labels", f"{len(labels)} labels", f"one label per image ({len(words)})")
        return [compose_caption(w, digit_word(None if labels is None else labels[i])) for i, w in enumerate(words)]

    def caption(self, images, labels: Sequence[int] | None = None) -> list[str]:
        """``"a thick, slanted, bright seven"`` per image; without labels the noun is ``"digit"``."""
        return self.caption_measurements(self.measure(images), labels)


# medians of the real Morpho-MNIST train split (split_indices(10000, "train")), measured with measure() above
DEFAULT_EDGES: dict[str, float] = {
    "thickness": 2.4722,
    "slant": 0.0839,
    "width": 12.3899,
    "height": 18.25,
    "area": 94.0,
    "intensity": 155.0,
}


# --------------------------------------------------------------------------------------------- perturbers
def attribute_of(word: str) -> tuple[str, int]:
    """An attribute word → ``(attribute, +1 high / -1 low)``."""
    if word not in WORD_ATTRIBUTE:
        raise input_error("word", word, f"an attribute word ({', '.join(WORD_ATTRIBUTE)})")
    return WORD_ATTRIBUTE[word]


def describe_change(changed_words: Sequence[str]) -> tuple[str, int]:
    """``(old_word, new_word)`` from a perturber → ``(attribute, direction)`` the edit asks for (+1 = higher)."""
    if len(changed_words) != 2:
        raise input_error("changed_words", changed_words, "(old_word, new_word)")
    attr, sign = attribute_of(changed_words[1])
    return attr, sign


def _as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise input_error("rng", rng, "a numpy Generator or an integer seed")


@dataclass(frozen=True)
class RulePerturber:
    """Swap exactly one attribute word of a caption for its opposite; phrase the change in words.

    ``attributes``: which attributes may be changed (default: any present in the caption). ``vary_phrasing``:
    pick among several natural phrasings (default) instead of always the first.
    """

    attributes: tuple[str, ...] | None = None
    vary_phrasing: bool = True

    def __post_init__(self):
        if self.attributes is not None:
            for a in self.attributes:
                if a not in ATTRIBUTE_WORDS:
                    raise input_error("attributes", a, f"attributes among {', '.join(ATTRIBUTE_WORDS)}")

    def candidates(self, caption: str) -> list[tuple[int, str]]:
        words = caption_words(caption)
        return [(i, w) for i, w in enumerate(words) if w in WORD_ATTRIBUTE
                and (self.attributes is None or WORD_ATTRIBUTE[w][0] in self.attributes)]

    def perturb(self, caption: str, rng=None) -> tuple[str, str, tuple[str, str]]:
        """→ ``(modification_text, counterfactual_caption, (old_word, new_word))``; one attribute changes."""
        if not isinstance(caption, str):
            raise input_error("caption", caption, "a caption string")
        cands = self.candidates(caption)
        if not cands:
            allowed = sorted(WORD_ATTRIBUTE) if self.attributes is None else [
                w for a in self.attributes for w in ATTRIBUTE_WORDS[a]]
            raise input_error("caption", caption, f"a caption holding an attribute word to change ({', '.join(allowed)})")
        g = _as_rng(rng)
        _, old = cands[int(g.integers(len(cands)))]
        attr, sign = WORD_ATTRIBUTE[old]
        lo, hi = ATTRIBUTE_WORDS[attr]
        new = lo if sign > 0 else hi
        texts = MODIFICATIONS[(attr, -sign)]
        text = texts[int(g.integers(len(texts)))] if self.vary_phrasing else texts[0]
        counterfactual = re.sub(rf"\b{old}\b", new, caption, count=1)
        return text, counterfactual, (old, new)


# --------------------------------------------------------------------------------------------- edit check
# how far the named attribute must move the asked way for an edit (or a real triplet) to count (≈ 0.6 train std)
EDIT_MARGINS: dict[str, float] = {"thickness": 0.5, "slant": 0.15, "width": 1.5, "height": 1.0, "area": 20.0,
                                  "intensity": 25.0}
# how far every other checked attribute may drift
EDIT_TOLERANCES: dict[str, float] = {"thickness": 0.4, "slant": 0.12, "width": 2.0, "height": 1.5, "area": 30.0,
                                     "intensity": 25.0}
CHECKED_ATTRIBUTES = ("thickness", "slant", "width", "height", "intensity")  # "the rest" an edit must keep


def check_edit(before_img, after_img, changed_attribute: str, direction: int, *, margin: float | None = None,
               tolerances: dict[str, float] | None = None, others: Sequence[str] | None = None,
               classifier=None, labels=None) -> dict:
    """Did an edit move ``changed_attribute`` the asked way by ``margin`` and keep everything else?

    ``before_img`` / ``after_img``: one digit (28,28) or a batch (N,28,28), uint8 or float in [0,1] (see
    :func:`measure`). ``direction``: +1 (higher, e.g. "thicker") or -1. ``others``: attributes that must stay
    within ``tolerances`` (default: :data:`CHECKED_ATTRIBUTES` without the changed one). ``classifier``: an
    optional callable images (N,28,28) float [0,1] → predicted digits (N,); with it and ``labels`` (the class of
    each digit; default: the classifier's prediction on ``before_img``) the class must be kept.

    Returns ``moved``, ``others_ok``, ``class_kept`` (None without a classifier), ``passed``, ``change`` (the
    named attribute's after − before), ``drift`` {attribute: after − before} and the two measurement dicts;
    booleans/floats for one digit, arrays for a batch.
    """
    if changed_attribute not in ATTRIBUTE_WORDS:
        raise input_error("changed_attribute", changed_attribute, f"one of {', '.join(ATTRIBUTE_WORDS)}")
    if direction not in (1, -1):
        raise input_error("direction", direction, "+1 (more of the attribute) or -1 (less)")
    single = np.asarray(before_img).ndim == 2
    b, a = _as_digit_array(before_img), _as_digit_array(after_img)
    if b.shape != a.shape:
        raise input_error("after_img", f"shape {a.shape}", f"the shape of before_img {b.shape}")
    margin = EDIT_MARGINS[changed_attribute] if margin is None else float(margin)
    if not margin >= 0:
        raise input_error("margin", margin, "a number >= 0")
    tol = dict(EDIT_TOLERANCES)
    tol.update(tolerances or {})
    others = [o for o in (CHECKED_ATTRIBUTES if others is None else others) if o != changed_attribute]
    for o in others:
        if o not in tol:
            raise input_error("others", o, f"attributes with a tolerance ({', '.join(tol)})")
    mb, ma = measure(b), measure(a)
    change = ma[changed_attribute] - mb[changed_attribute]
    moved = direction * change >= margin
    drift = {o: ma[o] - mb[o] for o in others}
    others_ok = np.ones(len(b), dtype=bool)
    for o in others:
        others_ok &= np.abs(drift[o]) <= tol[o]
    class_kept = None
    if classifier is not None:
        pred_after = np.asarray(classifier(a.astype(np.float32))).reshape(-1)
        ref = np.asarray(classifier(b.astype(np.float32)) if labels is None else labels).reshape(-1)
        if ref.shape != pred_after.shape:
            raise input_error("labels", f"{ref.size} labels", f"one label per image ({pred_after.size})")
        class_kept = pred_after == ref
    passed = moved & others_ok & (class_kept if class_kept is not None else True)
    out = {"moved": moved, "others_ok": others_ok, "class_kept": class_kept, "passed": passed, "change": change,
           "drift": drift, "before": mb, "after": ma, "margin": margin}
    if single:
        def first(v):
            return v if v is None or isinstance(v, float) else (
                {k: first(x) for k, x in v.items()} if isinstance(v, dict) else v[0].item())
        out = {k: first(v) for k, v in out.items()}
    return out


# --------------------------------------------------------------------------------------------- local-folder models
def _check_folder(folder, argument: str, what: str) -> Path:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{argument}={folder}: a local {what} folder (config.json + model.safetensors, "
                              "as written by save_pretrained); nothing is downloaded")
    return folder


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the BLIP-2 / CLIP image normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Blip2Captioner:
    """BLIP-2 captions from a local transformers folder (``Blip2ForConditionalGeneration`` + its tokenizer).

    Images: (N,H,W) or (N,C,H,W) (C = 1 or 3) in [0,1] or uint8; they are made RGB, resized (bicubic) to the
    vision tower's size and normalised with the CLIP statistics, as BLIP-2's image processor does. Greedy
    decoding, so captions are deterministic. Labels are ignored (the model names what it sees).
    """

    def __init__(self, folder, device: str = "cpu", max_new_tokens: int = 20):
        from transformers import AutoTokenizer, Blip2ForConditionalGeneration

        folder = _check_folder(folder, "captioner", "BLIP-2")
        self.model = Blip2ForConditionalGeneration.from_pretrained(folder, use_safetensors=True).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.device, self.max_new_tokens = device, int(max_new_tokens)

    def pixel_values(self, images):
        import torch
        import torch.nn.functional as F

        x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
            raise input_error("images", tuple(x.shape), "(N,H,W) or (N,C,H,W) with C = 1 or 3")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = int(self.model.config.vision_config.image_size)
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.device)

    def caption(self, images, labels: Sequence[int] | None = None) -> list[str]:
        import torch

        with torch.no_grad():
            ids = self.model.generate(pixel_values=self.pixel_values(images), max_new_tokens=self.max_new_tokens,
                                      do_sample=False)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


# --------------------------------------------------------------------------------------------- LLM perturber
PERTURB_PROMPT = ("### Instruction:\nChange exactly one attribute word of the caption to its opposite.\n"
                  "### Input:\n{caption}\n### Edited:\n")


def single_word_change(caption: str, edited: str) -> tuple[str, str] | None:
    """``(old, new)`` when ``edited`` differs from ``caption`` in exactly one word (same word count), else None."""
    a, b = caption_words(caption), caption_words(edited)
    if len(a) != len(b):
        return None
    diff = [(x, y) for x, y in zip(a, b) if x != y]
    return diff[0] if len(diff) == 1 else None


def modification_text(old: str, new: str) -> str:
    """Natural phrasing of a one-word change: the attribute's phrase when known, else ``"make it <new>"``."""
    if new in WORD_ATTRIBUTE and old in WORD_ATTRIBUTE and WORD_ATTRIBUTE[new][0] == WORD_ATTRIBUTE[old][0]:
        return MODIFICATIONS[WORD_ATTRIBUTE[new]][0]
    return f"make it {new}"


class LLMPerturber:
    """A causal language model from a local folder (optionally with a LoRA adapter) edits the caption.

    The model completes :data:`PERTURB_PROMPT`; the first line of its answer is the counterfactual caption.
    An answer that does not change exactly one word falls back to :class:`RulePerturber` (``fallback=True``,
    the default) or raises :class:`InputError`. Sampling uses a torch generator seeded from ``rng``.
    """

    def __init__(self, folder, adapter=None, device: str = "cpu", max_new_tokens: int = 16, fallback: bool = True,
                 do_sample: bool = False):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = _check_folder(folder, "model", "causal language model")
        model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
        if adapter is not None:
            from peft import PeftModel

            if not (Path(adapter) / "adapter_config.json").is_file():
                raise CheckpointError(f"adapter={adapter}: a LoRA folder written by finetune_llm_perturber "
                                      "(adapter_config.json + adapter_model.safetensors)")
            model = PeftModel.from_pretrained(model, str(adapter))
        self.model = model.to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.device, self.max_new_tokens = device, int(max_new_tokens)
        self.fallback, self.do_sample = fallback, do_sample
        self.last_used_fallback = False

    def edit(self, caption: str, rng=None) -> str:
        import torch

        g = _as_rng(rng)
        ids = self.tokenizer(PERTURB_PROMPT.format(caption=caption), return_tensors="pt").to(self.device)
        with torch.no_grad():
            torch.manual_seed(int(g.integers(2**31)))  # sampling noise only; greedy decoding ignores it
            out = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        text = self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        return re.sub(r"\s+([,.])", r"\1", text.strip().split("\n")[0].strip())  # word tokenizers decode "a ,"

    def perturb(self, caption: str, rng=None) -> tuple[str, str, tuple[str, str]]:
        if not isinstance(caption, str) or not caption_words(caption):
            raise input_error("caption", caption, "a non-empty caption string")
        g = _as_rng(rng)
        edited = self.edit(caption, g)
        change = single_word_change(caption, edited)
        self.last_used_fallback = change is None
        if change is None:
            if not self.fallback:
                raise input_error("caption", caption, f"a caption the model edits in exactly one word (got {edited!r})")
            return RulePerturber().perturb(caption, g)
        return modification_text(*change), edited, change


def finetune_llm_perturber(folder, pairs: Sequence[tuple[str, str]], out, steps: int = 200, lr: float = 2e-4,
                           batch_size: int = 8, rank: int = 8, alpha: int = 16, dropout: float = 0.05,
                           seed: int = 0, target_modules: Sequence[str] | None = None) -> Path:
    """LoRA (peft; LANCE's r = 8, alpha = 16, dropout 0.05) on (caption, edited caption) pairs; the loss is on
    the edited caption's tokens only. Writes the adapter (safetensors) to ``out``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _check_folder(folder, "model", "causal language model")
    pairs = [(str(a), str(b)) for a, b in pairs]
    if not pairs:
        raise input_error("pairs", 0, "at least one (caption, edited caption) pair")
    if steps < 1 or batch_size < 1:
        raise input_error("steps", steps, "steps >= 1 and batch_size >= 1")
    tok = AutoTokenizer.from_pretrained(folder)
    eos = tok.eos_token or ""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
        cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                         target_modules=list(target_modules) if target_modules else None)
        try:
            model = get_peft_model(model, cfg)
        except ValueError as exc:
            raise input_error("target_modules", target_modules, f"module names of this model ({exc})") from None
        examples = []
        for cap, edited in pairs:
            p = tok(PERTURB_PROMPT.format(caption=cap))["input_ids"]
            t = tok(edited + "\n" + eos)["input_ids"]
            examples.append((p + t, [-100] * len(p) + t))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        g = torch.Generator().manual_seed(seed + 1)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        model.train()
        for _ in range(steps):
            b = torch.randint(len(examples), (min(batch_size, len(examples)),), generator=g).tolist()
            n = max(len(examples[i][0]) for i in b)
            ids = torch.full((len(b), n), pad, dtype=torch.long)
            labels = torch.full((len(b), n), -100, dtype=torch.long)
            att = torch.zeros((len(b), n), dtype=torch.long)
            for r, i in enumerate(b):
                x, y = examples[i]
                ids[r, : len(x)], labels[r, : len(y)], att[r, : len(x)] = torch.tensor(x), torch.tensor(y), 1
            loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    out = Path(out)
    model.save_pretrained(str(out), safe_serialization=True)
    return out
