"""The data-scarce composed-retrieval study on Morpho-MNIST: real-only vs real + synthetic triplets.

Protocol (all on the fixed split of :func:`counterfactory.data.morphomnist.split_indices`):

1. Every train and test digit is measured (:func:`counterfactory.editing.captions.measure`) and captioned.
2. Real triplets are built inside each split (:func:`counterfactory.retrieval.real.build_real_triplets`).
3. The dual encoder is fitted once on (image, caption) of the train split (seed ``encoder_seed``) and shared by
   every run: it plays the part of the pretrained CLIP of CLIP4Cir.
4. For each fraction f of the real training triplets and each seed s: a seeded subset of f × the train triplets
   (nested: the 10 % subset lies inside the 30 % one for the same seed) trains a Combiner and the text tower;
   the real + synthetic run of a seed adds ``synthetic_per_batch`` triplets of ``synthetic`` to each batch of
   real ones. With ``synthetic_reference="nearest"`` each synthetic triplet's reference is not the digit that was
   edited but the train digit of the same class nearest to it in the measured attributes (:func:`nearest_digits`),
   so that, as in a real triplet, the target is *another* instance than the reference. Same seed → same initialisation, same steps and the same real batches in both conditions, so
   the two runs of a seed are paired.
5. Evaluation on the test split's real triplets with the CIRR protocol: the gallery is every test digit, the
   reference is removed from its ranking; Recall@1/5/10/50 and Recall_subset@1/2/3.

Each run's result is written as it finishes (``runs/<condition>_f<percent>_s<seed>.json``); a rerun with the same
``out`` skips finished runs, so a killed study resumes. ``results.json`` holds every run, mean ± sample std per
setting and the paired difference (real + synthetic − real-only) per fraction and metric.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..errors import ConfigError, input_error
from .cirr import Triplet, TripletFolder, read_triplet_folder, write_triplets
from .metrics import cirr_recalls
from .real import build_real_triplets, image_index

METRICS = ("R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3")
SYNTHETIC_REFERENCES = ("own", "nearest")  # a synthetic triplet's reference: the edited digit, or its nearest twin


@dataclass(frozen=True)
class StudyConfig:
    fractions: tuple[float, ...] = (0.1, 0.3, 1.0)  # shares of the real training triplets
    seeds: tuple[int, ...] = (0, 1, 2)  # paired seeds: subset choice and Combiner initialisation
    encoder_seed: int = 0
    encoder_steps: int = 600  # dual-encoder contrastive steps (batch 256)
    combiner_steps: int = 400  # Combiner + text-tower steps per run (batch 128), the same for every setting
    triplet_seed: int = 0  # seeds the real triplets' modification choice
    finetune_image: bool = False  # also train (a copy of) the image tower on the triplets, CLIP4Cir stage-1 style
    synthetic_per_batch: int = 32  # synthetic triplets added to each batch of 128 real ones (real+synthetic runs)
    synthetic_reference: str = "own"  # one of SYNTHETIC_REFERENCES

    def __post_init__(self):
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ConfigError(f"fractions={self.fractions}: shares in (0, 1]")
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ConfigError(f"seeds={self.seeds}: one or more distinct integers")
        if self.synthetic_reference not in SYNTHETIC_REFERENCES:
            raise ConfigError(f"synthetic_reference={self.synthetic_reference!r}: one of {', '.join(SYNTHETIC_REFERENCES)}")
        for k in ("encoder_steps", "combiner_steps", "synthetic_per_batch"):
            if int(getattr(self, k)) < 1:
                raise ConfigError(f"{k}={getattr(self, k)}: a positive integer")


def _percent(f: float) -> str:
    return f"{100 * f:g}"


def subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """Nested seeded subsets: the first round(f·n) items of one seeded permutation (at least 2)."""
    perm = np.random.default_rng([seed, 7919]).permutation(n)
    return np.sort(perm[: max(2, int(round(fraction * n)))])


class SyntheticTriplets(NamedTuple):
    references: torch.Tensor  # (N,1,28,28) float in [0, 1]
    texts: list[str]
    targets: torch.Tensor
    reference_names: list[str]  # CIRR image names of the references (mm-<file index> for real digits)


def load_synthetic(folder: str | os.PathLike) -> SyntheticTriplets:
    """A CIRR-format triplet folder → reference images (N,1,28,28), texts, target images, reference names."""
    from ..io.images import read_array

    tf: TripletFolder = read_triplet_folder(folder)
    usable = [t for t in tf.triplets if t.target_hard is not None]
    if not usable:
        raise input_error("synthetic", str(folder), "a triplet folder whose entries have target_hard")
    cache: dict[str, np.ndarray] = {}

    def img(name: str) -> np.ndarray:
        if name not in cache:
            a = read_array(tf.image_path(name), mode="L")
            if a.shape != (28, 28):
                raise input_error("synthetic image", str(tf.image_path(name)), f"a 28x28 gray digit (got {a.shape})")
            cache[name] = a
        return cache[name]

    refs = torch.from_numpy(np.stack([img(t.reference) for t in usable]))[:, None]
    tgts = torch.from_numpy(np.stack([img(t.target_hard) for t in usable]))[:, None]
    return SyntheticTriplets(refs.float(), [t.caption for t in usable], tgts.float(), [t.reference for t in usable])


def nearest_digits(indices: Sequence[int], pool: Sequence[int], labels: np.ndarray,
                   measurements: dict[str, np.ndarray]) -> np.ndarray:
    """For each file index in ``indices``: the digit of ``pool`` (file indices) with the same label, other than
    itself, nearest in the checked attributes (Euclidean over
    :data:`~counterfactory.editing.captions.CHECKED_ATTRIBUTES`, each divided by its standard deviation on
    ``pool``: the distance real triplets use to pick their targets). Ties go to the lower file index."""
    from ..editing.captions import CHECKED_ATTRIBUTES

    pool = np.asarray(pool, dtype=np.int64)
    z = np.stack([np.asarray(measurements[a], dtype=np.float64) for a in CHECKED_ATTRIBUTES], axis=1)
    z = z / np.where(z[pool].std(axis=0) > 0, z[pool].std(axis=0), 1.0)
    out = np.empty(len(indices), dtype=np.int64)
    for k, i in enumerate(np.asarray(indices, dtype=np.int64)):
        cand = pool[(labels[pool] == labels[i]) & (pool != i)]
        if cand.size == 0:
            raise input_error("indices", int(i), f"a digit with another digit of its class ({labels[i]}) in the pool")
        d = ((z[cand] - z[i]) ** 2).sum(axis=1)
        out[k] = cand[np.lexsort((cand, d))[0]]
    return out


@dataclass
class PreparedData:
    images: np.ndarray  # (N,28,28) uint8, the whole file
    labels: np.ndarray
    measurements: dict[str, np.ndarray]  # whole file
    train: list[Triplet]
    test: list[Triplet]
    train_idx: np.ndarray
    test_idx: np.ndarray
    val: list[Triplet]
    val_idx: np.ndarray


def prepare(data_root, out: Path, triplet_seed: int = 0, log: Callable[[str], None] = print) -> PreparedData:
    """Load Morpho-MNIST, measure it (cached in ``out/measurements.npz``), build and write the real triplets."""
    from ..data.morphomnist import load_morphomnist, split_indices
    from ..editing.captions import MEASURED, measure
    from ..io.manifest import atomic_path

    data = load_morphomnist(data_root)
    n = len(data)
    train_idx, test_idx, val_idx = (split_indices(n, s) for s in ("train", "test", "val"))
    cache = out / "measurements.npz"
    if cache.is_file():
        with np.load(cache) as z:
            m = {k: z[k] for k in MEASURED}
    else:
        t0 = time.time()
        m = measure(data.images)
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **m)
        log(f"measured {n} digits in {time.time() - t0:.0f} s")
    train = build_real_triplets(train_idx, data.labels, m, seed=triplet_seed)
    test = build_real_triplets(test_idx, data.labels, m, seed=triplet_seed, first_pairid=len(train))
    write_triplets(out / "triplets" / "cap.rc2.train.json", train)
    write_triplets(out / "triplets" / "cap.rc2.test.json", test)
    val = build_real_triplets(val_idx, data.labels, m, seed=triplet_seed, first_pairid=len(train) + len(test))
    return PreparedData(data.images, data.labels, m, train, test, train_idx, test_idx, val, val_idx)


def _images(arr: np.ndarray, idx: Sequence[int]) -> torch.Tensor:
    return torch.from_numpy(arr[np.asarray(idx)].astype(np.float32) / 255.0)[:, None]


def evaluate_model(model, features: torch.Tensor, names: list[str], triplets: Sequence[Triplet],
                   images: torch.Tensor | None = None) -> dict[str, float]:
    """CIRR recalls of ``model`` (a :class:`~counterfactory.retrieval.train.ComposedModel`) on ``triplets``.

    ``features``: the gallery under the frozen encoder; a model with a fine-tuned image tower re-encodes
    ``images`` (the gallery's pixels, same order) instead."""
    if getattr(model, "finetuned_image", False):
        from .train import encode_images

        if images is None:
            raise input_error("images", None, "the gallery images (the model's image tower was fine-tuned)")
        features = encode_images(model.encoder, images)
    pos = {n: i for i, n in enumerate(names)}
    refs = torch.stack([features[pos[t.reference]] for t in triplets])
    q = model.query(refs, [t.caption for t in triplets])
    return cirr_recalls(q, features, names, [t.reference for t in triplets], [t.target_hard for t in triplets],
                        [t.members for t in triplets])


def _encoder(prep: PreparedData, out: Path, config: StudyConfig, encoder, log):
    """The frozen dual encoder: ``encoder`` (a saved folder) when given, else fitted once and kept in out/encoder."""
    from ..editing.captions import MODIFICATION_WORDS, VOCABULARY, AttributeCaptioner
    from .encoders import load_dual_encoder, save_dual_encoder
    from .train import train_dual_encoder

    if encoder is not None:
        return load_dual_encoder(encoder)
    enc_dir = out / "encoder"
    if (enc_dir / "dual_encoder.safetensors").is_file():
        return load_dual_encoder(enc_dir)
    t0 = time.time()
    m_train = {k: v[prep.train_idx] for k, v in prep.measurements.items()}
    captions = AttributeCaptioner().caption_measurements(m_train, prep.labels[prep.train_idx].tolist())
    model = train_dual_encoder(_images(prep.images, prep.train_idx), captions,
                               list(VOCABULARY) + list(MODIFICATION_WORDS), steps=config.encoder_steps,
                               seed=config.encoder_seed)
    save_dual_encoder(model, enc_dir)
    log(f"dual encoder: {config.encoder_steps} steps in {time.time() - t0:.0f} s")
    return model


def _check_settings(out: Path, settings: dict) -> None:
    from ..io.manifest import atomic_write_json

    path = out / "study.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old["config"] != json.loads(json.dumps(settings["config"])) or old.get("encoder") != settings["encoder"]:
            raise input_error("out", str(out), f"a new folder, or the settings it was started with ({old['config']}, "
                              f"encoder {old.get('encoder')})")
        if settings.get("synthetic") is not None and old.get("synthetic") not in (None, settings["synthetic"]):
            raise input_error("synthetic", settings["synthetic"], f"the folder this study used before ({old['synthetic']})")
    atomic_write_json(path, settings)


def run_study(data_root, out, config: StudyConfig | None = None, synthetic=None,
              log: Callable[[str], None] = print, encoder=None) -> dict:
    """The study of the module doc. ``encoder``: a saved dual-encoder folder to use (frozen) instead of fitting one."""
    from ..data.morphomnist import load_morphomnist
    from ..evaluation.stats import paired_difference, summarize
    from ..io.manifest import atomic_write_json
    from .train import encode_images, train_combiner

    config = config or StudyConfig()
    load_morphomnist(data_root)  # bad data or a bad synthetic folder fail before anything is written
    syn = load_synthetic(synthetic) if synthetic is not None else None
    if encoder is not None:
        from .encoders import load_dual_encoder

        load_dual_encoder(encoder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"config": asdict(config), "synthetic": None if synthetic is None else str(Path(synthetic).resolve()),
                "encoder": None if encoder is None else str(Path(encoder).resolve())}
    _check_settings(out, settings)

    prep = prepare(data_root, out, config.triplet_seed, log)
    log(f"real triplets: {len(prep.train)} train, {len(prep.test)} test")
    encoder = _encoder(prep, out, config, encoder, log)

    from .real import image_name

    all_idx = np.concatenate([prep.train_idx, prep.test_idx])
    pixels = _images(prep.images, all_idx)
    # a fine-tuned image tower trains on pixels; a frozen one on features computed once
    feats = pixels if config.finetune_image else encode_images(encoder, pixels)
    fpos = {int(i): k for k, i in enumerate(all_idx)}
    test_names = [image_name(i) for i in prep.test_idx]
    test_rows = [fpos[int(i)] for i in prep.test_idx]
    test_feats, test_pixels = feats[test_rows], pixels[test_rows]
    tr_ref = feats[[fpos[image_index(t.reference)] for t in prep.train]]
    tr_tgt = feats[[fpos[image_index(t.target_hard)] for t in prep.train]]
    tr_txt = [t.caption for t in prep.train]
    if syn is not None:
        sy_ref = syn.references
        if config.synthetic_reference == "nearest":
            own = [image_index(n) for n in syn.reference_names]
            twins = nearest_digits(own, prep.train_idx, prep.labels, prep.measurements)
            sy_ref = _images(prep.images, twins)
        if config.finetune_image:
            sy_txt, sy_tgt = syn.texts, syn.targets
        else:
            sy_ref, sy_txt, sy_tgt = encode_images(encoder, sy_ref), syn.texts, encode_images(encoder, syn.targets)
        log(f"synthetic triplets: {len(sy_txt)} (references: {config.synthetic_reference})")

    conditions = ["real"] + (["real+synthetic"] if syn is not None else [])
    runs_dir = out / "runs"
    runs_dir.mkdir(exist_ok=True)
    for f in config.fractions:
        for s in config.seeds:
            sel = subset(len(prep.train), f, s)
            for cond in conditions:
                path = runs_dir / f"{cond}_f{_percent(f)}_s{s}.json"
                if path.is_file():
                    continue
                t0 = time.time()
                ref, txt, tgt = tr_ref[sel], [tr_txt[i] for i in sel], tr_tgt[sel]
                extra = (sy_ref, list(sy_txt), sy_tgt) if cond == "real+synthetic" else None
                model = train_combiner(encoder, ref, txt, tgt, steps=config.combiner_steps, seed=s,
                                       finetune_image=config.finetune_image, synthetic=extra,
                                       synthetic_per_batch=config.synthetic_per_batch)
                metrics = evaluate_model(model, test_feats, test_names, prep.test, images=test_pixels)
                rec = {"condition": cond, "fraction": f, "seed": s, "real_triplets": int(len(sel)),
                       "synthetic_triplets": 0 if cond == "real" else len(sy_txt), "metrics": metrics,
                       "seconds": round(time.time() - t0, 1)}
                atomic_write_json(path, rec)
                log(f"{cond:15s} {_percent(f):>4s}% seed {s}: R@1 {metrics['R@1']:.1f} R@5 {metrics['R@5']:.1f} "
                    f"Rs@1 {metrics['Rs@1']:.1f} ({rec['seconds']} s)")

    runs = [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))]
    runs = [r for r in runs if r["fraction"] in config.fractions and r["seed"] in config.seeds
            and r["condition"] in conditions]
    summary, paired = [], []
    for f in config.fractions:
        by = {c: {r["seed"]: r for r in runs if r["condition"] == c and r["fraction"] == f} for c in conditions}
        for c in conditions:
            row = {"condition": c, "fraction": f, "n_seeds": len(by[c])}
            for k in METRICS:
                st = summarize([by[c][s]["metrics"][k] for s in config.seeds if s in by[c]])
                row[k] = {"mean": st["mean"], "std": st["std"]}
            summary.append(row)
        if len(conditions) == 2:
            seeds = [s for s in config.seeds if s in by["real"] and s in by["real+synthetic"]]
            paired.append({"fraction": f, **{k: paired_difference(
                [by["real+synthetic"][s]["metrics"][k] for s in seeds], [by["real"][s]["metrics"][k] for s in seeds])
                for k in METRICS}})
    result = {"settings": settings, "real_triplets": {"train": len(prep.train), "test": len(prep.test)},
              "gallery": len(prep.test_idx), "summary": summary, "paired_difference": paired, "runs": runs}
    atomic_write_json(out / "results.json", result)
    return result


def learning_curve(data_root, out, fraction: float = 0.3, seeds: Sequence[int] = (0,), steps: int = 1000,
                   every: int = 100, config: StudyConfig | None = None, encoder=None,
                   log: Callable[[str], None] = print) -> dict:
    """Recall on the *validation* split's real triplets every ``every`` Combiner steps, real triplets only.

    One Combiner run of ``steps`` steps (cosine schedule over ``steps``) per seed, on the same seeded subset of
    ``fraction`` × the real training triplets as the study uses; the points show whether the baseline still
    improves, and so which ``combiner_steps`` budget the study needs. Each seed's curve is written as it
    finishes (``curve_f<percent>_s<seed>.json``); a rerun skips finished seeds. Returns and writes
    ``curve.json``: per step, mean ± sample std over seeds of every metric.
    """
    from ..data.morphomnist import load_morphomnist
    from ..evaluation.stats import summarize
    from ..io.manifest import atomic_write_json
    from .real import image_name
    from .train import encode_images, train_combiner

    config = config or StudyConfig()
    if not 0 < fraction <= 1:
        raise input_error("fraction", fraction, "a share in (0, 1]")
    for name, v in (("steps", steps), ("every", every)):
        if int(v) < 1:
            raise input_error(name, v, "a positive integer")
    load_morphomnist(data_root)
    if encoder is not None:
        from .encoders import load_dual_encoder

        load_dual_encoder(encoder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"config": asdict(config), "encoder": None if encoder is None else str(Path(encoder).resolve()),
                "synthetic": None}
    _check_settings(out, settings)
    prep = prepare(data_root, out, config.triplet_seed, log)
    enc = _encoder(prep, out, config, encoder, log)
    idx = np.concatenate([prep.train_idx, prep.val_idx])
    pixels = _images(prep.images, idx)
    feats = pixels if config.finetune_image else encode_images(enc, pixels)
    fpos = {int(i): k for k, i in enumerate(idx)}
    val_names = [image_name(i) for i in prep.val_idx]
    val_rows = [fpos[int(i)] for i in prep.val_idx]
    val_feats, val_pixels = feats[val_rows], pixels[val_rows]
    tr_ref = feats[[fpos[image_index(t.reference)] for t in prep.train]]
    tr_tgt = feats[[fpos[image_index(t.target_hard)] for t in prep.train]]
    curves = {}
    for s in seeds:
        path = out / f"curve_f{_percent(fraction)}_s{s}.json"
        if path.is_file():
            curves[s] = json.loads(path.read_text())
            continue
        sel = subset(len(prep.train), fraction, s)
        points: list[dict] = []
        t0 = time.time()

        def record(step, model, points=points, t0=t0, s=s):
            m = evaluate_model(model, val_feats, val_names, prep.val, images=val_pixels)
            points.append({"step": step, "seconds": round(time.time() - t0, 1), "metrics": m})
            log(f"seed {s} step {step}: val R@1 {m['R@1']:.1f} R@5 {m['R@5']:.1f} R@50 {m['R@50']:.1f} "
                f"Rs@1 {m['Rs@1']:.1f} ({time.time() - t0:.0f} s)")

        train_combiner(enc, tr_ref[sel], [prep.train[i].caption for i in sel], tr_tgt[sel], steps=steps, seed=s,
                       evaluate=record, eval_every=every, finetune_image=config.finetune_image)
        curves[s] = {"fraction": fraction, "seed": s, "steps": steps, "real_triplets": int(len(sel)),
                     "points": points}
        atomic_write_json(path, curves[s])
    steps_seen = [p["step"] for p in curves[seeds[0]]["points"]]
    table = []
    for k, st in enumerate(steps_seen):
        row = {"step": st}
        for m in METRICS:
            v = summarize([curves[s]["points"][k]["metrics"][m] for s in seeds])
            row[m] = {"mean": v["mean"], "std": v["std"]}
        table.append(row)
    result = {"fraction": fraction, "seeds": list(seeds), "steps": steps, "every": every,
              "val_queries": len(prep.val), "gallery": len(prep.val_idx), "curve": table}
    atomic_write_json(out / "curve.json", result)
    return result


def format_curve(result: dict) -> str:
    """Markdown: validation recall per step; mean ± sample std over seeds (the mean alone for one seed)."""
    one = len(result["seeds"]) == 1
    lines = ["| Combiner steps | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for row in result["curve"]:
        lines.append(f"| {row['step']} | " + " | ".join(
            f"{row[m]['mean']:.1f}" if one else f"{row[m]['mean']:.1f} ± {row[m]['std']:.1f}" for m in METRICS) + " |")
    return "\n".join(lines)


def format_table(result: dict) -> str:
    """Markdown: mean ± sample std per setting, then the paired differences."""
    lines = ["| condition | real triplets | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for row in result["summary"]:
        cells = [f"{row[k]['mean']:.1f} ± {row[k]['std']:.1f}" for k in METRICS]
        lines.append(f"| {row['condition']} | {_percent(row['fraction'])} % | " + " | ".join(cells) + " |")
    if result["paired_difference"]:
        lines += ["", "| paired difference (synthetic − real) | " + " | ".join(METRICS) + " |",
                  "|---|" + "---|" * len(METRICS)]
        for row in result["paired_difference"]:
            cells = [f"{row[k]['mean']:+.1f} [{row[k]['ci_low']:+.1f}, {row[k]['ci_high']:+.1f}]" for k in METRICS]
            lines.append(f"| {_percent(row['fraction'])} % | " + " | ".join(cells) + " |")
    return "\n".join(lines)
