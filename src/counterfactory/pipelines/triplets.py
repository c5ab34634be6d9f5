"""Composed-image-retrieval triplets from text counterfactuals: caption → perturb → invert + P2P edit → filter → write.

For each real reference digit: the attribute captioner writes its caption, the rule perturber swaps one attribute
word (giving the modification text and the counterfactual caption), the text-edit pipeline edits the digit
towards the counterfactual caption, and the edit is kept only when it passes every enabled filter
(``TripletConfig.filters``; each is computed for every candidate whose instrument is at hand and recorded in the
manifest, so the summary shows what each filter alone would pass):

- ``attribute``: the named attribute, *measured* on the pixels, moved the asked way by its margin
  (``captions.EDIT_MARGINS``);
- ``others``: every other checked attribute stayed within its tolerance (``captions.EDIT_TOLERANCES``);
- ``class``: the digit classifier (``counterfactory cir classifier``; default the shipped
  ``weights/digit_classifier``) still reads the reference's label;
- ``local``: the mean pixel change outside the local-blend region is at most ``outside_tolerance``;
- ``similarity``: LANCE / InstructPix2Pix directional similarity in the compact dual encoder's space
  (``counterfactory cir encoder``; default the shipped ``weights/cir_encoder``):
  cos(E(edited) − E(reference), T(counterfactual caption) − T(caption)) ≥ ``similarity_threshold``.

Output folder (CIRR layout, readable by the CIR evaluation)::

    cap.rc2.<split>.json     kept triplets: pairid, reference, target_hard, target_soft, caption, img_set
    split.rc2.<split>.json   image name -> ./images/<name>.png (every reference, target and set member)
    images/<name>.png        real digits (mm-<index>) and edited ones (cf-<pairid>)
    manifest.jsonl           one record per candidate (kept or not, measured change, drift, reasons)
    settings.json            what identifies the run (a rerun with other settings is refused)
    summary.json             counts and pass rate

Work goes in fixed batches; batch k is a pure function of (seed, k), so a killed run resumes where it stopped and
the result is bit-identical to an uninterrupted one.

Sharding (``shard=``, ``--num-shards K --shard i`` or the ranks of ``accelerate launch``): shard ``i`` of ``K``
takes batches ``i, i + K, ...`` and lists its candidates in ``manifest-shard<i>-of<K>.jsonl``; the settings every
shard must share (with ``n`` and ``max_candidates``) are in ``shards.json``. A one-process run stops after the first
batch that brings the kept count to ``n``; a shard cannot know that batch while earlier batches of other shards are
unfinished, so before each batch it reads the other shards' manifests (shards share the folder) and stops once the
finished batches before it hold ``n`` kept triplets. The shard that finds every batch up to the stopping one
finished writes the folder of a one-process run (:func:`merge_triplets`: ``manifest.jsonl``, caption, split,
summary and report files, byte-identical) and removes the images of batches past the stopping one that shards
running ahead computed.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, input_error
from ..io.images import save_image
from ..io.manifest import (
    SHARDS_FILE,
    Manifest,
    Shard,
    atomic_write_json,
    atomic_write_text,
    claim_shards,
    merge_shards,
    read_all,
)
from ..models.compact import DEFAULT_WEIGHTS_DIR
from .text_edit import TextEditPipeline

SET_SIZE = 6  # CIRR img_set size: reference, target and 4 distractors
FILTERS = ("attribute", "others", "class", "local", "similarity")
WEIGHTS = DEFAULT_WEIGHTS_DIR  # the shipped instruments are package data, like the compact base
DEFAULT_CLASSIFIER = WEIGHTS / "digit_classifier"
DEFAULT_ENCODER = WEIGHTS / "cir_encoder"


@dataclass(frozen=True)
class TripletConfig:
    out: str
    data: str  # Morpho-MNIST folder
    n: int = 1000  # kept triplets wanted
    split: str = "train"  # which fixed split supplies the reference digits
    cirr_split: str = "train"  # the <split> in cap.rc2.<split>.json
    seed: int = 0
    batch_size: int = 32
    max_candidates: int | None = None  # stop after this many candidates (default 10 x n)
    method: str = "direct"
    num_inference_steps: int = 10
    guidance_scale: float = 3.0
    cross_replace_steps: float = 0.8
    self_replace_steps: float = 0.4
    blend_threshold: float = 0.3
    outside_tolerance: float = 0.02  # mean |change| outside the local-blend region, in [0,1] units
    model: str | None = None  # text-to-image folder (default: the shipped weights/text2image)
    filters: tuple[str, ...] = FILTERS  # the filters that decide what is kept
    classifier: str | None = None  # digit-classifier folder (default: the shipped weights/digit_classifier)
    encoder: str | None = None  # dual-encoder folder (default: the shipped weights/cir_encoder)
    similarity_threshold: float = 0.2  # directional similarity threshold (LANCE / InstructPix2Pix: 0.2 with CLIP)
    restore_intensity: bool = True  # edits that do not name intensity get the reference's stroke intensity back

    def __post_init__(self):
        for name in ("n", "batch_size", "num_inference_steps"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: an integer >= 1")
        if self.max_candidates is not None and self.max_candidates < 1:
            raise ConfigError(f"max_candidates={self.max_candidates}: an integer >= 1")
        if not self.outside_tolerance >= 0:
            raise ConfigError(f"outside_tolerance={self.outside_tolerance}: a number >= 0")
        object.__setattr__(self, "filters", tuple(dict.fromkeys(self.filters)))
        bad = [f for f in self.filters if f not in FILTERS]
        if bad:
            raise ConfigError(f"filters={list(self.filters)}: names among {', '.join(FILTERS)} (unknown {bad[0]!r})")
        if not -1 <= self.similarity_threshold <= 1:
            raise ConfigError(f"similarity_threshold={self.similarity_threshold}: a cosine in [-1, 1]")


def _settings(cfg: TripletConfig) -> dict:
    d = asdict(cfg)
    for k in ("out", "n", "max_candidates"):
        d.pop(k)  # more or fewer triplets, or another folder, do not change what each batch is
    return d


def _max_candidates(cfg: TripletConfig) -> int:
    return cfg.max_candidates or 10 * cfg.n


def _shard_settings(cfg: TripletConfig, shard: Shard) -> dict:
    """What every shard of a folder must share: the batches' settings, and where the run stops."""
    return {"writer": "triplets", "num_shards": shard.count, "n": cfg.n, "max_candidates": _max_candidates(cfg),
            **_settings(cfg)}


def check_shards(cfg: TripletConfig, shard: Shard | None = None, write: bool = False) -> None:
    """InputError naming every setting that differs from what the other shards of ``cfg.out`` were started with (a
    one-process run of a sharded folder too: ``num_shards`` differs); ``write``: a shard records the settings."""
    shard = shard or Shard()
    out = Path(cfg.out)
    if shard.count > 1 or (out / SHARDS_FILE).is_file():
        claim_shards(out, _shard_settings(cfg, shard), write=write and shard.count > 1)


def complete_batches(records, batch_size: int) -> dict[int, list[dict]]:
    """Batch -> its records in pairid order, for the batches whose every candidate is listed (first copy of each
    record id). ``records``: manifest lines of one or more shards (``read_all`` of a run folder); a batch cut by a
    kill or a time limit is left out."""
    by_id: dict[str, dict] = {}
    for r in records:
        by_id.setdefault(str(r["id"]), r)
    batches: dict[int, list[dict]] = {}
    for r in by_id.values():
        batches.setdefault(int(r["batch"]), []).append(r)
    return {b: sorted(rs, key=lambda r: r["pairid"]) for b, rs in batches.items() if len(rs) == batch_size}


def _stopping_batch(cfg: TripletConfig, complete: dict[int, list[dict]]) -> tuple[int | None, int | None]:
    """``(last batch of the run, None)`` when every batch a one-process run makes is finished, else ``(None, first
    unfinished batch)``. The run makes batches 0, 1, ... up to the first that brings the kept count to ``n``, or
    up to ``max_candidates``."""
    kept = 0
    last = -(-_max_candidates(cfg) // cfg.batch_size) - 1
    for k in range(last + 1):
        if k not in complete:
            return None, k
        kept += sum(r["kept"] for r in complete[k])
        if kept >= cfg.n:
            return k, None
    return last, None


def _needed_images(records: list[dict]) -> set[str]:
    """The files under images/ and attention/ that the kept candidates of ``records`` use."""
    names = set()
    for r in records:
        if r["kept"]:
            names |= {f"images/cf-{r['pairid']:08d}.png", f"attention/cf-{r['pairid']:08d}.png"}
            names |= {f"images/mm-{j:05d}.png" for j in [r["reference_index"], *r["set_members"]]}
    return names


def merge_triplets(out: str | Path) -> Path:
    """The folder of a one-process run from a finished sharded one: ``manifest.jsonl`` (the candidates of every
    batch up to the stopping one, each line as its shard wrote it), the caption, split, summary and report files,
    and no image of a batch past the stopping one. InputError naming the first unfinished batch otherwise."""
    out = Path(out)
    header = json.loads((out / SHARDS_FILE).read_text())
    fields = set(TripletConfig.__dataclass_fields__) - {"out"}
    cfg = TripletConfig(out=str(out), **{k: tuple(v) if k == "filters" else v for k, v in header.items() if k in fields})
    complete = complete_batches(read_all(out), cfg.batch_size)
    last, missing = _stopping_batch(cfg, complete)
    if missing is not None:
        count = header.get("num_shards")
        raise input_error("out", str(out), f"a folder whose {count} shards are all finished (batch {missing} is not: "
                                           f"run shard {missing % count} of {count} again, it resumes; then merge)")
    records = [r for k in range(last + 1) for r in complete[k]]
    path = merge_shards(out, [r["id"] for r in records])
    needed = _needed_images(records)
    for folder in ("images", "attention"):
        for f in sorted((out / folder).glob("*.png")):
            if f"{folder}/{f.name}" not in needed:
                f.unlink(missing_ok=True)
    write_outputs(cfg, records)
    return path


def restore_intensity(before_u8: np.ndarray, after_u8: np.ndarray, region: np.ndarray,
                      which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Give the edits in ``which`` the reference's stroke intensity back: inside ``region`` (the local-blend mask),
    the edited digit is multiplied by (reference intensity / edited intensity), measured as Morpho-MNIST does
    (median foreground value). In Morpho-MNIST intensity is one gain on the whole stroke, so an edit that was asked
    for thickness or slant and also brightened or dimmed the stroke made a second, unasked change; this undoes it.
    ``before_u8``/``after_u8``: (N,28,28) uint8; ``region``: (N,28,28) bool; ``which``: (N,) bool. Returns the
    digits (uint8) and the gains (1 where not applied)."""
    from ..data.morphomnist import measure

    def _intensity(u8):
        return measure(torch.from_numpy(u8).float()[:, None] / 255.0)[1][:, 0].double().numpy()

    ib, ia = _intensity(before_u8), _intensity(after_u8)
    gains = np.where(which & (ia > 0), ib / np.maximum(ia, 1e-6), 1.0)
    scaled = np.clip(np.round(after_u8.astype(np.float64) * gains[:, None, None]), 0, 255).astype(np.uint8)
    return np.where(region & which[:, None, None], scaled, after_u8), gains


def _write_digit(path: Path, img: np.ndarray) -> None:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(torch.from_numpy(img)[None].float() / 255.0 if img.dtype == np.uint8 else torch.from_numpy(img)[None],
                   path)


class TripletWriter:
    """Runs the loop of the module doc; ``run()`` returns the summary."""

    def __init__(self, cfg: TripletConfig, pipe: TextEditPipeline | None = None, progress: bool = True):
        from ..data.morphomnist import load_morphomnist, split_indices
        from ..editing.captions import AttributeCaptioner, RulePerturber

        self.cfg = cfg
        self.out = Path(cfg.out)
        self.data = load_morphomnist(cfg.data)
        self.indices = split_indices(len(self.data), cfg.split)
        self.pipe = pipe if pipe is not None else TextEditPipeline.from_pretrained(cfg.model)
        s = self.pipe.model.cfg.sample_size
        if s != self.data.images.shape[-1]:
            raise input_error("model", cfg.model, f"a model of the data's image size ({self.data.images.shape[-1]} px)")
        self.captioner = AttributeCaptioner()
        self.perturber = RulePerturber()
        self.progress = progress
        self.by_class = {int(c): self.indices[self.data.labels[self.indices] == c] for c in range(10)}
        # an instrument is loaded when its filter is on, or when it was named or shipped (then only recorded)
        self.classifier = self._instrument(cfg.classifier, DEFAULT_CLASSIFIER, "class", "classifier")
        self.encoder = self._instrument(cfg.encoder, DEFAULT_ENCODER, "similarity", "encoder")

    def _instrument(self, folder, default: Path, filter_name: str, argument: str):
        from ..retrieval.encoders import load_dual_encoder
        from ..retrieval.train import DigitClassifier

        load = DigitClassifier.load if argument == "classifier" else load_dual_encoder
        if folder is None and filter_name not in self.cfg.filters and not default.is_dir():
            return None
        return load(default if folder is None else folder)

    # ------------------------------------------------------------------ bookkeeping
    def _check_settings(self):
        path = self.out / "settings.json"
        mine = json.loads(json.dumps(_settings(self.cfg)))
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved != mine:
                diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
                raise input_error("--out", str(self.out), f"a folder of a run with the same settings ({', '.join(diff)} "
                                  "differ): use a new --out, or the same settings to resume")
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, mine)

    def _batch(self, k: int):
        rng = np.random.default_rng([self.cfg.seed, k, 29])
        refs = rng.choice(self.indices, size=self.cfg.batch_size, replace=False)
        return rng, refs

    # ------------------------------------------------------------------ one batch
    def process_batch(self, k: int) -> list[dict]:
        from ..editing.captions import check_edit, describe_change

        cfg = self.cfg
        rng, refs = self._batch(k)
        imgs_u8 = self.data.images[refs]
        labels = self.data.labels[refs]
        captions = self.captioner.caption(imgs_u8, labels=labels.tolist())
        mods, targets, attrs, dirs = [], [], [], []
        for c in captions:
            text, cf, words = self.perturber.perturb(c, rng)
            attr, sign = describe_change(words)
            mods.append(text)
            targets.append(cf)
            attrs.append(attr)
            dirs.append(sign)
        image = torch.from_numpy(imgs_u8).float()[:, None] / 255.0
        out = self.pipe(image, captions, targets, method=cfg.method, num_inference_steps=cfg.num_inference_steps,
                        guidance_scale=cfg.guidance_scale, cross_replace_steps=cfg.cross_replace_steps,
                        self_replace_steps=cfg.self_replace_steps, blend_threshold=cfg.blend_threshold)
        edited = (out.images[:, 0].numpy() * 255.0).round().astype(np.uint8)  # what is written is what is measured
        gains = np.ones(len(refs))
        if cfg.restore_intensity:
            edited, gains = restore_intensity(imgs_u8, edited, out.blend_masks[:, 0].numpy() > 0.5,
                                              np.array([a != "intensity" for a in attrs]))
        outside = 1.0 - out.blend_masks[:, 0].numpy()
        diff = np.abs(edited.astype(np.float64) - imgs_u8.astype(np.float64)) / 255.0
        outside_change = (diff * outside).sum(axis=(1, 2)) / np.maximum(outside.sum(axis=(1, 2)), 1.0)
        similarity, image_similarity = self._similarities(imgs_u8, edited, captions, targets)
        predicted = self.classifier.predict(edited.astype(np.float32) / 255.0) if self.classifier is not None else None
        records = []
        for i in range(len(refs)):
            chk = check_edit(imgs_u8[i], edited[i], attrs[i], dirs[i])
            local_ok = bool(outside_change[i] <= cfg.outside_tolerance)
            passed = {"attribute": bool(chk["moved"]), "others": bool(chk["others_ok"]), "local": local_ok}
            if predicted is not None:
                passed["class"] = bool(predicted[i] == labels[i])
            if similarity is not None:
                passed["similarity"] = bool(similarity[i] >= cfg.similarity_threshold)
            kept = all(passed[f] for f in cfg.filters)
            pairid = k * cfg.batch_size + i
            others = [int(j) for j in rng.choice(self.by_class[int(labels[i])], size=SET_SIZE - 1, replace=False)
                      if j != refs[i]][: SET_SIZE - 2]
            records.append({
                "id": f"{pairid:08d}", "pairid": pairid, "batch": k, "reference_index": int(refs[i]),
                "label": int(labels[i]), "caption": captions[i], "target_caption": targets[i],
                "modification": mods[i], "attribute": attrs[i], "direction": int(dirs[i]),
                "change": round(float(chk["change"]), 4),
                "drift": {a: round(float(v), 4) for a, v in chk["drift"].items()},
                "moved": bool(chk["moved"]), "others_ok": bool(chk["others_ok"]),
                "outside_change": round(float(outside_change[i]), 5), "local_ok": local_ok,
                "intensity_gain": round(float(gains[i]), 4),
                "predicted_class": None if predicted is None else int(predicted[i]),
                "similarity": None if similarity is None else round(float(similarity[i]), 4),
                "image_similarity": None if image_similarity is None else round(float(image_similarity[i]), 4),
                "passed": passed, "kept": kept,
                "edit_type": out.edit_types[i], "set_members": others, "_edited": edited[i],
                "_attention": (out.attention_maps[i, 0].numpy() * 255.0).round().astype(np.uint8),
            })
        return records

    @torch.no_grad()
    def _similarities(self, before_u8, after_u8, captions, targets):
        """Directional cos(E(after) − E(before), T(target) − T(caption)) and image cos(E(before), E(after))."""
        if self.encoder is None:
            return None, None
        import torch.nn.functional as F

        enc = self.encoder
        e0 = enc.encode_image(torch.from_numpy(before_u8).float()[:, None] / 255.0)
        e1 = enc.encode_image(torch.from_numpy(after_u8).float()[:, None] / 255.0)
        t0, t1 = enc.encode_text(list(captions)), enc.encode_text(list(targets))
        return F.cosine_similarity(e1 - e0, t1 - t0, dim=-1).numpy(), F.cosine_similarity(e0, e1, dim=-1).numpy()

    # ------------------------------------------------------------------ the run
    def _write_batch(self, batch: list[dict]) -> None:
        """The images of a batch's kept candidates (before any of its manifest lines: a killed run never lists a
        missing image)."""
        img_dir = self.out / "images"
        for r in batch:
            if r["kept"]:
                _write_digit(img_dir / f"cf-{r['pairid']:08d}.png", r["_edited"])
                _write_digit(self.out / "attention" / f"cf-{r['pairid']:08d}.png", r["_attention"])
                for j in [r["reference_index"], *r["set_members"]]:
                    _write_digit(img_dir / f"mm-{j:05d}.png", self.data.images[j])

    def run(self, shard: Shard | None = None) -> dict:
        cfg = self.cfg
        shard = shard or Shard()
        check_shards(cfg, shard, write=True)
        self._check_settings()
        if shard.count > 1:
            return self._run_shard(shard)
        manifest = Manifest(self.out / "manifest.jsonl")
        by_id = {r["id"]: r for r in manifest.read()}  # a batch cut by a kill is redone; its lines are not doubled
        counts: dict[int, int] = {}
        for r in by_id.values():
            counts[r["batch"]] = counts.get(r["batch"], 0) + 1
        done_batches = {b for b, c in counts.items() if c == cfg.batch_size}
        records = [r for r in by_id.values() if r["batch"] in done_batches]
        kept = sum(r["kept"] for r in records)
        max_cand = _max_candidates(cfg)
        k = 0
        t0 = time.time()
        img_dir = self.out / "images"
        img_dir.mkdir(parents=True, exist_ok=True)
        while kept < cfg.n and k * cfg.batch_size < max_cand:
            if k in done_batches:
                k += 1
                continue
            batch = self.process_batch(k)
            self._write_batch(batch)
            for r in batch:
                r = {k2: v for k2, v in r.items() if not k2.startswith("_")}
                if r["id"] not in by_id:
                    manifest.append(r)
                records.append(r)
                kept += r["kept"]
            self.write_outputs(records)  # a run stopped after this batch leaves a complete, readable folder
            if self.progress:
                print(f"batch {k}: kept {kept}/{cfg.n} of {len(records)} candidates "
                      f"({time.time() - t0:.0f} s)", flush=True)
            k += 1
        summary = self.write_outputs(records)
        summary["seconds_this_run"] = round(time.time() - t0, 1)
        return summary

    def _run_shard(self, shard: Shard) -> dict:
        """This shard's batches (module doc); the folder of a one-process run once every needed batch is done."""
        cfg = self.cfg
        manifest = Manifest(shard.manifest_path(self.out))
        (self.out / "images").mkdir(parents=True, exist_ok=True)
        last = -(-_max_candidates(cfg) // cfg.batch_size) - 1
        made = skipped = 0
        t0 = time.time()
        for k in range(shard.index, last + 1, shard.count):
            records = read_all(self.out)  # every shard's progress so far
            complete = complete_batches(records, cfg.batch_size)
            if sum(r["kept"] for j, rs in complete.items() if j < k for r in rs) >= cfg.n:
                break  # the run stops before batch k
            if k in complete:
                skipped += 1
                continue
            listed = {str(r["id"]) for r in records}
            batch = self.process_batch(k)
            self._write_batch(batch)
            for r in batch:
                if r["id"] not in listed:  # a batch cut by a kill is redone; its lines are not doubled
                    manifest.append({k2: v for k2, v in r.items() if not k2.startswith("_")})
            made += 1
            if self.progress:
                print(f"shard {shard} batch {k}: {sum(r['kept'] for r in batch)} kept of {len(batch)} "
                      f"({time.time() - t0:.0f} s)", flush=True)
        done, _ = _stopping_batch(cfg, complete_batches(read_all(self.out), cfg.batch_size))
        summary = {"shard": str(shard), "batches": made, "skipped": skipped, "merged": done is not None}
        if done is not None:
            merge_triplets(self.out)
            summary.update(json.loads((self.out / "summary.json").read_text()))
        summary["seconds_this_run"] = round(time.time() - t0, 1)
        return summary

    def write_outputs(self, records: list[dict]) -> dict:
        return write_outputs(self.cfg, records)


def write_outputs(cfg: TripletConfig, records: list[dict]) -> dict:
    """The caption, split, summary and report files of ``cfg.out`` from the candidates in ``records``."""
    out = Path(cfg.out)
    kept = [r for r in sorted(records, key=lambda r: r["pairid"]) if r["kept"]][: cfg.n]
    entries, names = [], {}
    for r in kept:
        ref = f"mm-{r['reference_index']:05d}"
        tgt = f"cf-{r['pairid']:08d}"
        members = [ref, tgt] + [f"mm-{j:05d}" for j in r["set_members"]]
        order = np.random.default_rng([cfg.seed, r["pairid"], 31]).permutation(len(members))
        members = [members[o] for o in order]
        entries.append({"pairid": r["pairid"], "reference": ref, "target_hard": tgt, "target_soft": {tgt: 1.0},
                        "caption": r["modification"],
                        "img_set": {"id": r["pairid"], "members": members,
                                    "reference_rank": members.index(ref), "target_rank": members.index(tgt)}})
        for name in members:
            names[name] = f"./images/{name}.png"
    atomic_write_text(out / f"cap.rc2.{cfg.cirr_split}.json", json.dumps(entries))
    atomic_write_text(out / f"split.rc2.{cfg.cirr_split}.json", json.dumps(dict(sorted(names.items()))))
    summary = summarize_records(records, kept, cfg.filters)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "report.html", report_html(kept, summary, out))
    return summary


def _edit_name(r: dict) -> str:
    return f"{r['attribute']}{'+' if r['direction'] > 0 else '-'}"


def _rate(flags) -> float | None:
    flags = list(flags)
    return round(sum(flags) / len(flags), 4) if flags else None


def _stats(values) -> dict | None:
    from ..evaluation.stats import summarize

    v = [float(x) for x in values]
    if not v:
        return None
    st = summarize(v)
    return {"mean": round(st["mean"], 4), "std": round(st["std"], 4), "n": st["n"]}


def _group_summary(records: list[dict], kept: list[dict]) -> dict:
    names = [f for f in FILTERS if any(f in r.get("passed", {}) for r in records)]
    out = {"candidates": len(records), "kept": len(kept), "pass_rate": _rate(r["kept"] for r in records),
           "filter_pass_rate": {f: _rate(r["passed"][f] for r in records if f in r.get("passed", {})) for f in names},
           "kept_change": _stats(r["change"] for r in kept),
           "kept_drift": {a: _stats(r["drift"][a] for r in kept if a in r["drift"])
                          for a in dict.fromkeys(a for r in kept for a in r["drift"])},
           "kept_outside_change": _stats(r["outside_change"] for r in kept)}
    sims = [r["similarity"] for r in kept if r.get("similarity") is not None]
    if sims:
        out["kept_similarity"] = _stats(sims)
    return out


def summarize_records(records: list[dict], kept: list[dict], filters) -> dict:
    """Counts and pass rates overall, per filter and per edit type; for kept edits the measured change of the
    named attribute, the drift of every other attribute and the pixel change outside the local-blend region
    (mean ± sample std)."""
    n = len(records)
    summary = {"filters": list(filters), **_group_summary(records, kept),
               "moved_rate": _rate(r["moved"] for r in records),
               "others_ok_rate": _rate(r["others_ok"] for r in records),
               "local_ok_rate": _rate(r["local_ok"] for r in records),
               "mean_outside_change_kept": round(float(np.mean([r["outside_change"] for r in kept])), 5)
               if kept else None}
    kept_ids = {r["pairid"] for r in kept}
    per_edit = {}
    for name in sorted({_edit_name(r) for r in records}):
        rs = [r for r in records if _edit_name(r) == name]
        per_edit[name] = _group_summary(rs, [r for r in rs if r["pairid"] in kept_ids])
    summary["per_edit"] = per_edit
    summary["candidates"] = n
    return summary


def format_summary(summary: dict) -> str:
    """Markdown tables: pass rate per filter and per edit type; measured change and drift of the kept edits."""
    names = list(summary["filter_pass_rate"])
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [f"{summary['kept']} kept of {summary['candidates']} candidates (filters on: "
             f"{', '.join(summary['filters']) or 'none'})", "",
             "| edit | candidates | kept | pass % | " + " | ".join(f"{f} %" for f in names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]
    for name, g in [("all", summary), *summary["per_edit"].items()]:
        lines.append(f"| {name} | {g['candidates']} | {g['kept']} | {pct(g['pass_rate'])} | "
                     + " | ".join(pct(g["filter_pass_rate"].get(f)) for f in names) + " |")
    attrs = list(dict.fromkeys(a for g in summary["per_edit"].values() for a in g["kept_drift"]))
    ms = lambda st: "–" if st is None else f"{st['mean']:+.3g} ± {st['std']:.2g}"  # noqa: E731
    lines += ["", "| kept edit | n | change of the named attribute | " + " | ".join(f"drift {a}" for a in attrs)
              + " | pixel change outside the blend region |", "|---|---|---|" + "---|" * (len(attrs) + 1)]
    for name, g in summary["per_edit"].items():
        if g["kept"]:
            lines.append(f"| {name} | {g['kept']} | {ms(g['kept_change'])} | "
                         + " | ".join(ms(g["kept_drift"].get(a)) for a in attrs) + f" | {ms(g['kept_outside_change'])} |")
    return "\n".join(lines)


def report_html(kept: list[dict], summary: dict, root: str | Path, per_type: int = 6) -> str:
    """reference | edited | caption diff | the changed word's attention over the edited digit | modification and
    measured change, per edit type; then the counts. Images are read from ``root`` (the run folder) and embedded."""
    import html

    from ..io.images import read_array
    from .text_edit import REPORT_STYLE, EditRow, edit_table_html

    root = Path(root)
    groups: dict[str, list[dict]] = {}
    for r in kept:
        groups.setdefault(f"{r['attribute']} {'+' if r['direction'] > 0 else '-'}", []).append(r)
    rows = ["<!doctype html><meta charset='utf-8'><title>Text counterfactual triplets</title>", REPORT_STYLE,
            "<h1>Text counterfactual triplets</h1>",
            f"<p>{summary['kept']} kept of {summary['candidates']} candidates (pass rate {summary['pass_rate']}).</p>"]
    for name in sorted(groups):
        edits = []
        for r in groups[name][:per_type]:
            cf = f"cf-{r['pairid']:08d}.png"
            edits.append(EditRow(reference=read_array(root / "images" / f"mm-{r['reference_index']:05d}.png", mode="L"),
                                 edited=read_array(root / "images" / cf, mode="L"),
                                 source=r["caption"], target=r["target_caption"],
                                 attention=read_array(root / "attention" / cf, mode="L"),
                                 note=f"{r['modification']}; measured {r['attribute']} {r['change']:+.3g}"))
        rows.append(f"<h2>{html.escape(name)}</h2>")
        rows.append(edit_table_html(edits, note_title="modification, measured change"))
    rows.append("<h2>Counts per edit</h2><table><tr><th>edit</th><th>candidates</th><th>kept</th></tr>")
    for k, v in sorted(summary["per_edit"].items()):
        rows.append(f"<tr><td>{html.escape(k)}</td><td>{v['candidates']}</td><td>{v['kept']}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows) + "\n"


def write_triplets(cfg: TripletConfig, pipe: TextEditPipeline | None = None, progress: bool = True,
                   shard: Shard | None = None) -> dict:
    """Run the loop of the module doc (``shard``: only this shard's batches) and return the summary."""
    check_shards(cfg, shard)  # a folder of shards started otherwise is refused before the model loads
    return TripletWriter(cfg, pipe, progress).run(shard)


__all__ = ["FILTERS", "TripletConfig", "TripletWriter", "check_shards", "complete_batches", "format_summary",
           "merge_triplets", "restore_intensity", "summarize_records", "write_outputs", "write_triplets"]
