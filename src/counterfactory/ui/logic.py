"""What the web app does, without the web: editor values → image + mask, pipeline runs, the files a run writes.

Everything here is plain Python (no gradio import), so it is tested directly; :mod:`counterfactory.ui.app`
only lays these functions out on a page. Every user mistake raises the library's one-line
:class:`~counterfactory.errors.InputError`; the app shows that line.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import __version__
from ..errors import CheckpointError, input_error
from ..io.images import pil_to_array, save_image
from ..io.manifest import atomic_write_json
from ..io.masks import bbox, check_box

BARE_BASE = "shipped base, no adapter"  # the adapter choice that runs the base alone
NO_TYPE = "(any: surface fill)"  # the only damage type of the bare base
MAX_SEEDS = 16  # largest batch of variations one click may ask for
DIFF_GAIN = 4  # difference view: |result - input| × 4, as in the demo report
ALPHA_DRAWN = 128  # a brush pixel counts as drawn from half opacity (anti-aliased stroke edges do not)

Progress = Callable[[float, str], None]


def _no_progress(fraction: float, text: str) -> None:
    return None


# ---------------------------------------------------------------------------------------------------- inputs
def editor_image(value, name: str = "image") -> np.ndarray:
    """The background of an image-editor value (dict with ``background``/``layers``/``composite``, PIL or
    numpy) as float32 (H,W,3) in [0,1]; an image that uses transparency is an error, as in the CLI."""
    bg = value.get("background") if isinstance(value, dict) else value
    if bg is None:
        raise input_error(name, "none", "an uploaded image (PNG, JPEG, ...): drop one on the editor first")
    if isinstance(bg, np.ndarray):
        bg = Image.fromarray(bg)
    return pil_to_array(bg, mode="RGB", name=name)


def editor_mask(value, shape: tuple[int, int], name: str = "mask") -> np.ndarray:
    """The union of everything drawn on the editor's layers as a {0,1} float32 (H,W) mask (1 = paint here)."""
    mask = np.zeros(shape, dtype=bool)
    layers = (value.get("layers") if isinstance(value, dict) else None) or []
    for k, layer in enumerate(layers):
        arr = np.asarray(layer)
        if arr.shape[:2] != tuple(shape):
            raise input_error(f"{name} layer {k} size", f"{arr.shape[1]}x{arr.shape[0]}",
                              f"the image size {shape[1]}x{shape[0]} (draw on the uploaded image)")
        if arr.ndim == 3 and arr.shape[2] in (2, 4):
            drawn = arr[..., -1] >= ALPHA_DRAWN
        else:  # a layer without alpha: anything not black was drawn
            drawn = (arr.reshape(*shape, -1) > 0).any(axis=-1)
        mask |= drawn
    return mask.astype(np.float32)


def uploaded_mask(mask, shape: tuple[int, int], name: str = "mask_image") -> np.ndarray:
    """An uploaded mask file (PIL/numpy; white = paint) as a {0,1} float32 (H,W) mask of the image's size."""
    if isinstance(mask, np.ndarray):
        mask = Image.fromarray(mask)
    arr = pil_to_array(mask, mode="L", alpha="drop", name=name)
    if arr.shape != tuple(shape):
        raise input_error(f"{name} size", f"{arr.shape[1]}x{arr.shape[0]}", f"the image size {shape[1]}x{shape[0]}")
    return (arr >= 0.5).astype(np.float32)


def check_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    area = float(mask.mean())
    if area == 0:
        raise input_error(name, "empty", "a drawn region: paint over the image with the brush where the defect goes "
                                         "(or upload a mask, white = paint)")
    if area == 1:
        raise input_error(name, "covers the whole image", "a region that leaves context around it")
    return mask


def parse_box(text: str, name: str = "box") -> tuple[int, int, int, int]:
    """``"x0,y0,x1,y1"`` (pixels, end exclusive) → a tuple of four ints."""
    allowed = "four integers x0,y0,x1,y1 (pixels, end exclusive), e.g. 10,20,50,60"
    parts = [p.strip() for p in str(text).replace(" ", ",").split(",") if p.strip()]
    try:
        box = tuple(int(p) for p in parts)
    except ValueError:
        raise input_error(name, text, allowed) from None
    if len(box) != 4:
        raise input_error(name, text, allowed)
    return box  # type: ignore[return-value]


def resolve_box(typed: str | None, drawn: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box to fill: the typed one when given, else the bounding box of what was drawn."""
    if typed and str(typed).strip():
        return check_box(parse_box(typed), shape, name="box")
    b = bbox(drawn)
    if b is None:
        raise input_error("box", "none", "a box: draw over the region on the image, or type x0,y0,x1,y1")
    return check_box(b, shape, name="box")


def check_seed(seed, n) -> tuple[int, int]:
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise input_error("seed", seed, "an integer >= 0")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SEEDS:
        raise input_error("variations", n, f"an integer in [1, {MAX_SEEDS}] (one result per seed, from seed upward)")
    return seed, n


def check_steps(steps) -> int:
    if isinstance(steps, float) and steps.is_integer():
        steps = int(steps)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000:
        raise input_error("num_inference_steps", steps, "an integer in [1, 1000]")
    return steps


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| × DIFF_GAIN (float (H,W,3) in [0,1]): black where nothing changed."""
    return np.clip(np.abs(a.astype(np.float32) - b.astype(np.float32)) * DIFF_GAIN, 0, 1)


def to_u8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------- models
class Models:
    """Loaded pipelines, by (kind, adapter folder); the last few stay in memory so switching back is instant."""

    def __init__(self, base: str | Path | None = None, keep: int = 3, text_model: str | Path | None = None):
        self.base = str(base) if base else None
        self.text_model = str(text_model) if text_model else None  # default: the shipped weights/text2image
        self.keep = keep
        self._cache: OrderedDict[tuple[str, str | None], object] = OrderedDict()
        self.lock = threading.Lock()  # one generation at a time: torch's threads are shared

    def _get(self, key, load):
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        pipe = load()
        self._cache[key] = pipe
        while len(self._cache) > self.keep:
            self._cache.popitem(last=False)
        return pipe

    def defect(self, adapter: str | None):
        from ..pipelines.defect_inpaint import DefectInpaintPipeline

        adapter = _adapter_arg(adapter, "adapter")
        return self._get(("defect", adapter), lambda: DefectInpaintPipeline.from_compact(self.base, adapter))

    def reference(self, adapter: str | None):
        from ..pipelines.reference_inpaint import ReferenceInpaintPipeline

        adapter = _adapter_arg(adapter, "reference adapter")
        if adapter is None:
            raise input_error("reference adapter", "none", "a reference adapter folder (train one with "
                                                           "`counterfactory train-reference --data DATASET --out DIR`)")
        return self._get(("reference", adapter), lambda: ReferenceInpaintPipeline.from_compact(adapter, base=self.base))


    def text(self):
        from ..pipelines.text_edit import TextEditPipeline

        return self._get(("text", self.text_model), lambda: TextEditPipeline.from_pretrained(self.text_model))


def _adapter_arg(adapter, name: str) -> str | None:
    if adapter is None or str(adapter).strip() in ("", BARE_BASE):
        return None
    path = Path(str(adapter).strip()).expanduser()
    if not path.is_dir():
        raise input_error(name, str(adapter), "an existing adapter folder (with adapter_config.json)")
    return str(path.resolve())


def damage_types(models: Models, adapter: str | None) -> list[str]:
    """The damage types an adapter paints (the bare base: one entry, an unconditioned surface fill)."""
    if _adapter_arg(adapter, "adapter") is None:
        return [NO_TYPE]
    return list(models.defect(adapter).defect_types)


def find_adapters(out_root: Path, extra: list[str | None] = ()) -> list[str]:
    """Adapter choices: the given ones, the demo's (``demo_out/adapter``), the ones trained in the app, the bare base."""
    found: list[str] = []
    candidates = [*extra, "demo_out/adapter", *sorted(str(p.parent) for p in (out_root / "adapters").glob("*/adapter_config.json"))]
    for c in candidates:
        if c and (Path(c) / "adapter_config.json").is_file():
            r = str(Path(c).resolve())
            if r not in found:
                found.append(r)
    return [*found, BARE_BASE]


# ---------------------------------------------------------------------------------------------------- runs
@dataclass
class RunResult:
    """One click's output: the run folder, the views (uint8 arrays) and the files offered for download."""

    folder: Path
    input: np.ndarray
    mask: np.ndarray
    results: list[np.ndarray]
    differences: list[np.ndarray]
    files: list[Path]
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0


def _step_hook(pipe, progress: Progress, done: float, share: float, label: str, steps: int) -> dict:
    """Per-step progress: the pipeline's ``callback_on_step_end`` when it has one (diffusers' convention);
    otherwise the caller tracks the pipeline's own progress bar (gradio's ``track_tqdm``)."""
    import inspect

    if "callback_on_step_end" not in inspect.signature(pipe.__call__).parameters:
        return {}

    def callback(_pipe, step, _timestep, kwargs):
        k = min(step + 1, steps)
        progress(done + share * k / steps, f"{label}: step {k}/{steps}")
        return kwargs

    return {"callback_on_step_end": callback}


def _per_seed(models: Models, pipe, seeds: list[int], steps: int, progress: Progress, call) -> list[np.ndarray]:
    """``call(generator=..., **step_hook)`` once per seed under the model lock, with progress per seed and step."""
    n, results = len(seeds), []
    with models.lock, torch.inference_mode():
        for i, s in enumerate(seeds):
            label = f"seed {s} ({i + 1}/{n})"
            progress(i / n, label)
            out = call(generator=torch.Generator().manual_seed(s), **_step_hook(pipe, progress, i / n, 1 / n, label, steps))
            results.append(out.images[0])
    progress(1.0, "writing files")
    return results


def _new_run_folder(out_root: Path, kind: str) -> tuple[Path, Path]:
    """(temporary folder to write into, final name): the final folder appears only once complete."""
    runs = out_root / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    k = 0
    while (runs / f"{kind}-{stamp}-{k}").exists() or (runs / f".{kind}-{stamp}-{k}.tmp").exists():
        k += 1
    tmp = runs / f".{kind}-{stamp}-{k}.tmp"
    tmp.mkdir()
    return tmp, runs / f"{kind}-{stamp}-{k}"


def _finish(tmp: Path, final: Path, names: list[str]) -> list[Path]:
    tmp.rename(final)
    return [final / n for n in names]


def _write_run(out_root: Path, kind: str, image: np.ndarray, mask: np.ndarray, results: list[np.ndarray],
               seeds: list[int], settings: dict) -> tuple[Path, list[Path]]:
    tmp, final = _new_run_folder(out_root, kind)
    try:
        names = []
        for s, r in zip(seeds, results):
            names.append(f"result_seed{s}.png")
            save_image(r, tmp / names[-1])
        save_image(to_u8(mask), tmp / "mask.png")
        save_image(to_u8(image), tmp / "input.png")
        settings = {**settings, "files": {"results": names, "mask": "mask.png", "input": "input.png"}}
        atomic_write_json(tmp / "settings.json", settings)
        files = _finish(tmp, final, [*names, "mask.png", "settings.json"])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, files


def run_defect(models: Models, out_root: str | Path, image: np.ndarray, mask: np.ndarray, adapter: str | None,
               defect_type: str | None, num_inference_steps: int, guidance_scale: float, seed: int, n: int = 1,
               progress: Progress = _no_progress) -> RunResult:
    """Paint ``defect_type`` into ``mask`` of ``image`` once per seed (``seed``, ``seed+1``, ...), write
    ``runs/defect-*/{result_seed*.png, mask.png, input.png, settings.json}`` and return the views."""
    t0 = time.time()
    check_mask(mask)
    steps = check_steps(num_inference_steps)
    seed, n = check_seed(seed, n)
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise input_error("guidance_scale", guidance_scale, "a finite number >= 0 (1 = no guidance)")
    progress(0.0, "loading the model")
    pipe = models.defect(adapter)
    bare = not pipe.defect_types
    dtype = None if bare else defect_type
    if not bare and (defect_type is None or defect_type == NO_TYPE):
        raise input_error("damage type", defect_type, f"one of {list(pipe.defect_types)}")
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    m = torch.from_numpy(mask)[None, None].float()
    seeds = list(range(seed, seed + n))
    results = _per_seed(models, pipe, seeds, steps, progress,
                        lambda **kw: pipe(x, m, defect_type=dtype, num_inference_steps=steps,
                                          guidance_scale=float(guidance_scale), output_type="np", **kw))
    inp = to_u8(image)
    settings = {
        "task": "defect", "counterfactory": __version__, "base": pipe.info.get("base"),
        "adapter": pipe.info.get("adapter"), "defect_type": dtype, "num_inference_steps": steps,
        "guidance_scale": float(guidance_scale), "seeds": seeds, "image_size": [image.shape[1], image.shape[0]],
        "mask_pixels": int(mask.sum()), "crop_to_mask": True,
    }
    folder, files = _write_run(Path(out_root), "defect", image, mask, results, seeds, settings)
    diffs = [to_u8(difference(r / 255.0, image)) for r in results]
    return RunResult(folder, inp, to_u8(mask), results, diffs, files, settings, round(time.time() - t0, 2))


HARMONISE = {"refine_band": 0.25, "paste_mode": "poisson"}  # paste-and-harmonise: the measured best insertion


def run_reference(models: Models, out_root: str | Path, image: np.ndarray, reference: np.ndarray,
                  box: tuple[int, int, int, int], adapter: str | None, num_inference_steps: int,
                  guidance_scale: float, seed: int, n: int = 1, progress: Progress = _no_progress,
                  harmonise: bool = False) -> RunResult:
    """Paint ``reference`` into ``box`` of ``image`` once per seed; same files as :func:`run_defect`. With
    ``harmonise`` the reference is pasted (Poisson) and only the band along the box's edge is denoised
    (:data:`HARMONISE`, the pipeline's ``refine_band`` / ``paste_mode``)."""
    from ..io.masks import box_mask

    t0 = time.time()
    steps = check_steps(num_inference_steps)
    seed, n = check_seed(seed, n)
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise input_error("guidance_scale", guidance_scale, "a finite number >= 0 (1 = no guidance)")
    progress(0.0, "loading the model")
    pipe = models.reference(adapter)
    x = torch.from_numpy(image).permute(2, 0, 1).float()
    ref = torch.from_numpy(reference).permute(2, 0, 1).float()
    seeds = list(range(seed, seed + n))
    mode = HARMONISE if harmonise else {}
    results = _per_seed(models, pipe, seeds, steps, progress,
                        lambda **kw: pipe(x, ref, box=box, num_inference_steps=steps,
                                          guidance_scale=float(guidance_scale), output_type="np", **mode, **kw))
    mask = box_mask(box, image.shape[:2])[0].numpy().astype(np.float32)
    settings = {
        "task": "reference", "counterfactory": __version__, "base": pipe.info.get("base"),
        "adapter": pipe.info.get("adapter"), "box": list(box), "num_inference_steps": steps,
        "guidance_scale": float(guidance_scale), "seeds": seeds, "image_size": [image.shape[1], image.shape[0]],
        "reference_size": [reference.shape[1], reference.shape[0]],
        "refine_band": mode.get("refine_band"), "paste_mode": mode.get("paste_mode", "plain"),
    }
    folder, files = _write_run(Path(out_root), "reference", image, mask, results, seeds, settings)
    save_image(to_u8(reference), folder / "reference.png")
    diffs = [to_u8(difference(r / 255.0, image)) for r in results]
    return RunResult(folder, to_u8(image), to_u8(mask), results, diffs, files, settings, round(time.time() - t0, 2))


def train_small_adapter(out_root: str | Path, data: str | None, steps: int, seed: int = 0,
                        base: str | None = None) -> Path:
    """Train a few-shot adapter from the app: on ``data`` (an MVTec-layout category folder) or, when empty,
    on procedural surfaces with 4 damage types (written under ``out_root/data``). Returns the adapter folder.
    Progress comes from the trainer's progress bar; a rerun with the same settings resumes."""
    from ..data.surfaces import synth_dataset
    from ..training.inpaint import AdapterTrainConfig, train_adapter
    from ..training.trainer import LoopConfig

    steps = check_steps(steps)
    out_root = Path(out_root)
    if data and str(data).strip():
        root = Path(str(data).strip()).expanduser()
        if not root.is_dir():
            raise input_error("training data", str(data), "an existing dataset folder (MVTec layout: train/good, "
                                                          "test/<type>, ground_truth/<type>), or empty for procedural surfaces")
        name = f"{root.name}-{steps}steps-seed{seed}"
    else:
        root = out_root / "data" / f"seed{seed}" / "surface"
        if not (root / "ground_truth").is_dir():
            synth_dataset(root.parent, seed=seed, size=128, n_train_good=8, n_test_good=0, n_per_type=8)
        name = f"procedural-{steps}steps-seed{seed}"
    out = out_root / "adapters" / name
    loop = LoopConfig(steps=steps, lr=1e-3, warmup_steps=min(20, max(1, steps // 5)), checkpoint_every=max(10, steps // 4),
                      seed=seed)
    train_adapter(AdapterTrainConfig(out=str(out), data=str(root), base=base, shots=5 if not data else None,
                                     loop=loop), progress=True)
    if not (out / "adapter_config.json").is_file():
        raise CheckpointError(f"training stopped before the adapter was written to {out}: run it again to resume")
    return out.resolve()


def settings_text(result: RunResult) -> str:
    return json.dumps(result.settings, indent=1)


# ---------------------------------------------------------------------------------------------------- text edits
TEXT_VIEW_PX = 224  # digits are shown enlarged (crisp pixels), the attention map smooth
NO_CLASS = "(not given)"  # the digit class choice that captions the noun as "digit"
TEXT_METHODS = ("direct", "fixed-point", "negative-prompt", "null-text", "ddim")


def text_digit(value, size: int = 28, name: str = "digit") -> np.ndarray:
    """An uploaded digit (PIL/numpy/editor value; grey or RGB, light stroke on dark) as float32 (size,size) in
    [0,1]; other sizes are resized (area average) to the model's ``size``."""
    bg = value.get("background") if isinstance(value, dict) else value
    if bg is None:
        raise input_error(name, "none", "an uploaded digit image (light stroke on a dark background), or draw one")
    if isinstance(bg, np.ndarray):
        arr = bg.astype(np.float32) / 255.0 if bg.dtype == np.uint8 else bg.astype(np.float32)
        if arr.ndim == 3:
            arr = arr[..., :3].mean(-1) if arr.shape[-1] >= 3 else arr[..., 0]
        bg = Image.fromarray(to_u8(arr))
    arr = pil_to_array(bg, mode="L", alpha="drop", name=name)
    if arr.shape != (size, size):
        arr = pil_to_array(Image.fromarray(to_u8(arr)).resize((size, size), Image.Resampling.BOX), mode="L")
    return arr.astype(np.float32)


def _digit_class(value) -> int | None:
    if value is None or str(value).strip() in ("", NO_CLASS):
        return None
    try:
        k = int(str(value).strip())
    except ValueError:
        raise input_error("digit class", value, f"0..9 or {NO_CLASS!r}") from None
    if not 0 <= k <= 9:
        raise input_error("digit class", value, f"0..9 or {NO_CLASS!r}")
    return k


def source_caption(image: np.ndarray, digit_class=None) -> str:
    """The attribute captioner's caption of a digit (measured thickness, slant, brightness; the class word when
    given, else "digit")."""
    from ..editing.captions import AttributeCaptioner

    k = _digit_class(digit_class)
    return AttributeCaptioner().caption(to_u8(image)[None], labels=None if k is None else [k])[0]


def suggest_target(source: str) -> str:
    """A counterfactual caption: the first attribute word of ``source`` swapped for its opposite."""
    from ..editing.captions import WORD_ATTRIBUTE, RulePerturber

    cands = RulePerturber().candidates(source)
    first = (WORD_ATTRIBUTE[cands[0][1]][0],) if cands else None  # none: perturb() names the problem
    _, target, _ = RulePerturber(attributes=first, vary_phrasing=False).perturb(source, np.random.default_rng(0))
    return target


def draw_digit(models: Models, caption: str, seed, steps: int = 20) -> np.ndarray:
    """A digit drawn by the text-to-image model from ``caption`` (seeded): float32 (28,28) in [0,1]."""
    from ..pipelines.text_edit import generate

    seed, _ = check_seed(seed, 1)
    pipe = models.text()
    pipe.model.tokenizer.encode([caption], argument="caption")
    with models.lock, torch.inference_mode():
        x = generate(pipe.model, [caption], num_inference_steps=check_steps(steps),
                     generator=torch.Generator().manual_seed(seed))
    return to_u8(x[0, 0].numpy()).astype(np.float32) / 255.0  # on the 8-bit grid, as a saved PNG


def _fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= float(value) <= 1:
        raise input_error(name, value, "a fraction in [0, 1]")
    return float(value)


def enlarge(image: np.ndarray, px: int = TEXT_VIEW_PX) -> np.ndarray:
    """A grey [0,1] digit as uint8 (px,px,3), nearest neighbour (crisp pixels)."""
    im = Image.fromarray(to_u8(image)).resize((px, px), Image.Resampling.NEAREST).convert("RGB")
    return np.asarray(im)


@dataclass
class TextRunResult:
    """One text edit: the run folder, the enlarged views (uint8), the caption diff and the downloadable files."""

    folder: Path
    input: np.ndarray
    edited: np.ndarray
    attention: np.ndarray
    caption_diff: str  # HTML
    files: list[Path]
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0


def run_text_edit(models: Models, out_root: str | Path, image: np.ndarray, source: str, target: str,
                  method: str = "direct", num_inference_steps: int = 10, guidance_scale: float = 3.0,
                  cross_replace_steps: float = 0.8, self_replace_steps: float = 0.4, local_blend: bool = True,
                  progress: Progress = _no_progress) -> TextRunResult:
    """Edit the digit ``image`` ((H,W) in [0,1], the model's size) from caption ``source`` to ``target``; write
    ``runs/text-*/{input.png, edited.png, attention.png, attention_overlay.png, report.html, settings.json}``."""
    from ..editing.attention import attention_overlay
    from ..pipelines.text_edit import EditRow, caption_diff_html, edit_report_html

    t0 = time.time()
    if method not in TEXT_METHODS:
        raise input_error("method", method, f"one of {', '.join(TEXT_METHODS)}")
    steps = check_steps(num_inference_steps)
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not guidance_scale >= 1:
        raise input_error("guidance_scale", guidance_scale, "a number >= 1 (1 = no guidance)")
    cross = _fraction(cross_replace_steps, "cross_replace_steps")
    self_ = _fraction(self_replace_steps, "self_replace_steps")
    for name, text in (("source caption", source), ("target caption", target)):
        if not isinstance(text, str) or not text.strip():
            raise input_error(name, text, "a caption such as 'a thin, upright, dim seven'")
    source, target = source.strip(), target.strip()
    progress(0.0, "loading the text-to-image model")
    pipe = models.text()
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    progress(0.2, f"{method} inversion and prompt-to-prompt edit, {steps} steps")
    with models.lock, torch.inference_mode(False), torch.no_grad():
        out = pipe(x, source, target, method=method, num_inference_steps=steps, guidance_scale=float(guidance_scale),
                   cross_replace_steps=cross, self_replace_steps=self_, local_blend=bool(local_blend))
    progress(0.9, "writing files")
    edited = out.images[0, 0].numpy()
    att = out.attention_maps[0, 0].numpy()
    overlay = attention_overlay(edited, att, size=TEXT_VIEW_PX)
    removed, added = out.changed_words[0]
    settings = {"task": "text", "counterfactory": __version__, "model": models.text_model or "weights/text2image",
                "source": source, "target": target, "removed_words": removed, "added_words": added,
                "edit_type": out.edit_types[0], "method": method, "num_inference_steps": steps,
                "guidance_scale": float(guidance_scale), "cross_replace_steps": cross, "self_replace_steps": self_,
                "local_blend": bool(local_blend), "unet_calls": out.unet_calls}
    tmp, final = _new_run_folder(Path(out_root), "text")
    try:
        save_image(to_u8(image), tmp / "input.png")
        save_image(to_u8(edited), tmp / "edited.png")
        save_image(to_u8(att), tmp / "attention.png")
        save_image(overlay, tmp / "attention_overlay.png")
        row = EditRow(image, edited, source, target, att, note=f"{out.edit_types[0]}, {method}, {steps} steps")
        (tmp / "report.html").write_text(edit_report_html([row], title="Text counterfactual edit", note_title="settings"))
        atomic_write_json(tmp / "settings.json", settings)
        files = _finish(tmp, final, ["edited.png", "attention_overlay.png", "attention.png", "report.html",
                                     "settings.json"])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(1.0, "done")
    return TextRunResult(final, enlarge(image), enlarge(edited), overlay, caption_diff_html(source, target), files,
                         settings, round(time.time() - t0, 2))
