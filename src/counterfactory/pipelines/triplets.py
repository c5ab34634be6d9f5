"""Composed-image-retrieval triplets from text counterfactuals: caption → perturb → invert + P2P edit → filter → write.

For each real reference digit: the attribute captioner writes its caption, the rule perturber swaps one attribute
word (giving the modification text and the counterfactual caption), the text-edit pipeline edits the digit
towards the counterfactual caption, and the edit is kept only when, *measured* on the pixels,

- the named attribute moved the asked way by its margin (``captions.EDIT_MARGINS``),
- every other checked attribute stayed within its tolerance (``captions.EDIT_TOLERANCES``),
- the mean pixel change outside the local-blend region is at most ``outside_tolerance``.

Output folder (CIRR layout, readable by the CIR evaluation)::

    cap.rc2.<split>.json     kept triplets: pairid, reference, target_hard, target_soft, caption, img_set
    split.rc2.<split>.json   image name -> ./images/<name>.png (every reference, target and set member)
    images/<name>.png        real digits (mm-<index>) and edited ones (cf-<pairid>)
    manifest.jsonl           one record per candidate (kept or not, measured change, drift, reasons)
    settings.json            what identifies the run (a rerun with other settings is refused)
    summary.json             counts and pass rate

Work goes in fixed batches; batch k is a pure function of (seed, k), so a killed run resumes where it stopped and
the result is bit-identical to an uninterrupted one.
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
from ..io.manifest import Manifest, atomic_write_json, atomic_write_text
from .text_edit import TextEditPipeline

SET_SIZE = 6  # CIRR img_set size: reference, target and 4 distractors


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

    def __post_init__(self):
        for name in ("n", "batch_size", "num_inference_steps"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: an integer >= 1")
        if self.max_candidates is not None and self.max_candidates < 1:
            raise ConfigError(f"max_candidates={self.max_candidates}: an integer >= 1")
        if not self.outside_tolerance >= 0:
            raise ConfigError(f"outside_tolerance={self.outside_tolerance}: a number >= 0")


def _settings(cfg: TripletConfig) -> dict:
    d = asdict(cfg)
    for k in ("out", "n", "max_candidates"):
        d.pop(k)  # more or fewer triplets, or another folder, do not change what each batch is
    return d


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
        outside = 1.0 - out.blend_masks[:, 0].numpy()
        diff = np.abs(edited.astype(np.float64) - imgs_u8.astype(np.float64)) / 255.0
        outside_change = (diff * outside).sum(axis=(1, 2)) / np.maximum(outside.sum(axis=(1, 2)), 1.0)
        records = []
        for i in range(len(refs)):
            chk = check_edit(imgs_u8[i], edited[i], attrs[i], dirs[i])
            local_ok = bool(outside_change[i] <= cfg.outside_tolerance)
            kept = bool(chk["passed"]) and local_ok
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
                "outside_change": round(float(outside_change[i]), 5), "local_ok": local_ok, "kept": kept,
                "edit_type": out.edit_types[i], "set_members": others, "_edited": edited[i],
                "_attention": (out.attention_maps[i, 0].numpy() * 255.0).round().astype(np.uint8),
            })
        return records

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        cfg = self.cfg
        self._check_settings()
        manifest = Manifest(self.out / "manifest.jsonl")
        by_id = {r["id"]: r for r in manifest.read()}  # a batch cut by a kill is redone; its lines are not doubled
        counts: dict[int, int] = {}
        for r in by_id.values():
            counts[r["batch"]] = counts.get(r["batch"], 0) + 1
        done_batches = {b for b, c in counts.items() if c == cfg.batch_size}
        records = [r for r in by_id.values() if r["batch"] in done_batches]
        kept = sum(r["kept"] for r in records)
        max_cand = cfg.max_candidates or 10 * cfg.n
        k = 0
        t0 = time.time()
        img_dir = self.out / "images"
        img_dir.mkdir(parents=True, exist_ok=True)
        while kept < cfg.n and k * cfg.batch_size < max_cand:
            if k in done_batches:
                k += 1
                continue
            batch = self.process_batch(k)
            for r in batch:  # images first, then the manifest line: a killed run never lists a missing image
                if r["kept"]:
                    _write_digit(img_dir / f"cf-{r['pairid']:08d}.png", r["_edited"])
                    _write_digit(self.out / "attention" / f"cf-{r['pairid']:08d}.png", r["_attention"])
                    for j in [r["reference_index"], *r["set_members"]]:
                        _write_digit(img_dir / f"mm-{j:05d}.png", self.data.images[j])
            for r in batch:
                r = {k2: v for k2, v in r.items() if not k2.startswith("_")}
                if r["id"] not in by_id:
                    manifest.append(r)
                records.append(r)
                kept += r["kept"]
            if self.progress:
                print(f"batch {k}: kept {kept}/{cfg.n} of {len(records)} candidates "
                      f"({time.time() - t0:.0f} s)", flush=True)
            k += 1
        summary = self.write_outputs(records)
        summary["seconds_this_run"] = round(time.time() - t0, 1)
        return summary

    def write_outputs(self, records: list[dict]) -> dict:
        cfg = self.cfg
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
        atomic_write_text(self.out / f"cap.rc2.{cfg.cirr_split}.json", json.dumps(entries))
        atomic_write_text(self.out / f"split.rc2.{cfg.cirr_split}.json", json.dumps(dict(sorted(names.items()))))
        n = len(records)
        per_attr: dict[str, dict] = {}
        for r in records:
            a = per_attr.setdefault(f"{r['attribute']}{'+' if r['direction'] > 0 else '-'}", {"candidates": 0, "kept": 0})
            a["candidates"] += 1
            a["kept"] += int(r["kept"])
        summary = {"candidates": n, "kept": len(kept), "pass_rate": round(len(kept) / n, 4) if n else None,
                   "moved_rate": round(sum(r["moved"] for r in records) / n, 4) if n else None,
                   "others_ok_rate": round(sum(r["others_ok"] for r in records) / n, 4) if n else None,
                   "local_ok_rate": round(sum(r["local_ok"] for r in records) / n, 4) if n else None,
                   "mean_outside_change_kept": round(float(np.mean([r["outside_change"] for r in kept])), 5)
                   if kept else None,
                   "per_edit": per_attr}
        atomic_write_json(self.out / "summary.json", summary)
        atomic_write_text(self.out / "report.html", report_html(kept, summary, self.out))
        return summary


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


def write_triplets(cfg: TripletConfig, pipe: TextEditPipeline | None = None, progress: bool = True) -> dict:
    return TripletWriter(cfg, pipe, progress).run()


__all__ = ["TripletConfig", "TripletWriter", "write_triplets"]
