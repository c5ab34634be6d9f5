"""Batch generation: anomalib Folder layout, manifest, binary masks, locality, and bit-exact resume after a kill."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from counterfactory.data import open_dataset
from counterfactory.data.splits import few_shot_split, load_split
from counterfactory.data.surfaces import synth_dataset
from counterfactory.errors import InputError
from counterfactory.io.images import load_image, save_image
from counterfactory.pipelines.defect_inpaint import DefectInpaintPipeline
from counterfactory.pipelines.generate import GenerateConfig, folder_masks, generate, held_out_masks

N = 3
TYPES = ["crack", "spot"]


@pytest.fixture(scope="module")
def setup(tiny_base, tiny_adapter, tiny_data):
    """(pipeline, backgrounds, held-out masks by type)."""
    pipe = DefectInpaintPipeline.from_compact(tiny_base, tiny_adapter)
    ds = open_dataset(tiny_data)
    split = load_split(Path(tiny_adapter) / "split.json")
    return pipe, ds.good(), held_out_masks(ds, split, TYPES)


def _run(setup, out: Path, batch_size: int = 2, **kw) -> dict:
    pipe, backgrounds, masks = setup
    cfg = GenerateConfig(out=str(out), n_per_type=N, num_inference_steps=2, batch_size=batch_size, **kw)
    return generate(pipe, backgrounds, masks, cfg, provenance={"base_sha256": "x"}, progress=False)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory) -> Path:
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("gen") / "ref"
    summary = _run(setup, out)
    assert summary == {"generated": N * len(TYPES), "skipped": 0, "out": str(out), "batch_size": 2}
    return out


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_folder_layout_and_manifest(reference):
    recs = _records(reference)
    ids = [f"{t}_{i:05d}" for t in TYPES for i in range(N)]
    assert [r["id"] for r in recs] == ids
    for r in recs:
        assert r["image"] == f"{r['type']}/{r['id']}.png"
        assert r["mask"] == f"ground_truth/{r['type']}/{r['id']}_mask.png"
        assert (reference / r["image"]).is_file() and (reference / r["mask"]).is_file()
        assert r["steps"] == 2 and r["base_sha256"] == "x" and r["mask_source"] and r["batch"] == 2
    files = {str(p.relative_to(reference)) for p in reference.rglob("*") if p.is_file()}
    assert files == {r["image"] for r in recs} | {r["mask"] for r in recs} | {"manifest.jsonl"}
    # anomalib's Folder reader expects exactly this: <type>/<id>.png and ground_truth/<type>/<id>_mask.png
    assert sorted(p.name for p in (reference / "ground_truth").iterdir()) == TYPES


def test_masks_are_binary_png_of_the_image_size(reference):
    for r in _records(reference):
        m = Image.open(reference / r["mask"])
        im = Image.open(reference / r["image"])
        assert m.format == "PNG" and m.mode == "L" and m.size == im.size
        values = set(np.unique(np.asarray(m)).tolist())
        assert values == {0, 255}


def test_outside_mask_pixels_are_the_source_pixels(reference):
    for r in _records(reference):
        src = np.asarray(Image.open(r["source_image"]).convert("RGB"))
        gen = np.asarray(Image.open(reference / r["image"]).convert("RGB"))
        m = np.asarray(Image.open(reference / r["mask"])) > 127
        assert np.array_equal(gen[~m], src[~m]), r["id"]
        assert not np.array_equal(gen[m], src[m]), r["id"]


def test_rerun_of_a_finished_folder_does_nothing(setup, reference, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    before = {p: p.stat().st_ino for p in out.rglob("*.png")}
    assert _run(setup, out) == {"generated": 0, "skipped": N * len(TYPES), "out": str(out), "batch_size": 2}
    assert {p: p.stat().st_ino for p in out.rglob("*.png")} == before


def _kill_last_records(out: Path, k: int) -> list[dict]:
    """As if killed after finishing all but the last ``k`` records (their files may or may not exist)."""
    lines = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    lost = [json.loads(line) for line in lines[-k:]]
    (out / "manifest.jsonl").write_text("".join(lines[:-k]))
    return lost


@pytest.mark.parametrize("kill", ["files and record gone", "record gone, files left", "torn manifest line"])
@pytest.mark.parametrize("batch_size", [2, 4])
def test_resume_after_a_kill_is_bit_identical(setup, reference, tmp_path, kill, batch_size):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    lost = _kill_last_records(out, 3)  # a group boundary in the middle: the rerun redoes a partly finished group
    if kill == "files and record gone":
        for r in lost:
            (out / r["image"]).unlink()
            (out / r["mask"]).unlink()
    elif kill == "record gone, files left":
        save_image(torch.zeros(3, 64, 64), out / lost[0]["image"])  # a stale image that must be redone
    else:
        (out / lost[1]["image"]).unlink()
        with (out / "manifest.jsonl").open("a") as f:
            f.write(json.dumps(lost[0], sort_keys=True, default=str)[:40])  # killed mid-append
    finished = {p: p.stat().st_ino for p in out.rglob("*.png")
                if not any(r["id"] in p.name for r in lost)}
    summary = _run(setup, out, batch_size=batch_size)  # a resumed run keeps the folder's batch size (groups)
    assert summary["generated"] == 3 and summary["skipped"] == N * len(TYPES) - 3 and summary["batch_size"] == 2
    assert {p: p.stat().st_ino for p in finished} == finished  # finished ids were not redone
    assert _digests(out) == _digests(reference)


def test_same_seed_same_files_other_seed_other_files(setup, reference, tmp_path):
    _run(setup, tmp_path / "b")
    assert _digests(tmp_path / "b") == _digests(reference)
    _run(setup, tmp_path / "b4", batch_size=4)  # other batches: the same noise and masks, kernel rounding only
    for r in _records(reference):
        assert (tmp_path / "b4" / r["mask"]).read_bytes() == (reference / r["mask"]).read_bytes()
        a, b = (np.asarray(Image.open(root / r["image"])).astype(int) for root in (reference, tmp_path / "b4"))
        assert np.abs(a - b).max() <= 1, r["id"]
    _run(setup, tmp_path / "c", seed=1)
    images = [k for k in _digests(reference) if not k.startswith("ground_truth") and k.endswith(".png")]
    assert any(_digests(tmp_path / "c")[k] != _digests(reference)[k] for k in images)


def test_bad_requests(setup, tmp_path):
    pipe, backgrounds, masks = setup
    with pytest.raises(InputError, match="types"):
        generate(pipe, backgrounds, masks, GenerateConfig(out=str(tmp_path), types=("dent",)), progress=False)
    with pytest.raises(InputError, match="types"):
        generate(pipe, backgrounds, masks, GenerateConfig(out=str(tmp_path), types=("good",)), progress=False)
    with pytest.raises(InputError, match="masks"):
        generate(pipe, backgrounds, {"crack": masks["crack"]}, GenerateConfig(out=str(tmp_path)), progress=False)
    with pytest.raises(InputError, match="backgrounds"):
        generate(pipe, [], masks, GenerateConfig(out=str(tmp_path)), progress=False)
    with pytest.raises(InputError, match="n_per_type"):
        GenerateConfig(out=str(tmp_path), n_per_type=0)
    assert not (tmp_path / "manifest.jsonl").exists()


def _write_mask(path: Path, size: tuple[int, int], box) -> None:
    m = np.zeros(size, np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 255
    save_image(m, path)


def test_folder_masks_per_type_or_shared(tmp_path):
    _write_mask(tmp_path / "per" / "crack" / "a.png", (64, 64), (10, 10, 20, 14))
    _write_mask(tmp_path / "per" / "crack" / "empty.png", (64, 64), (0, 0, 0, 0))
    _write_mask(tmp_path / "per" / "spot" / "b.png", (64, 64), (30, 30, 36, 36))
    per = folder_masks(tmp_path / "per", TYPES)
    assert [len(per[t]) for t in TYPES] == [1, 1]  # empty masks are skipped
    assert per["crack"][0][1].shape == (1, 64, 64) and set(per["crack"][0][1].unique().tolist()) == {0.0, 1.0}
    _write_mask(tmp_path / "shared" / "c.png", (64, 64), (5, 5, 9, 30))
    shared = folder_masks(tmp_path / "shared", TYPES)
    assert shared["crack"][0][0] == shared["spot"][0][0]
    with pytest.raises(InputError, match="--masks"):
        folder_masks(tmp_path / "missing", TYPES)
    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match="--masks"):
        folder_masks(tmp_path / "none", TYPES)


def test_masks_of_another_size_are_placed_on_the_image(setup, tmp_path):
    pipe, backgrounds, _ = setup
    _write_mask(tmp_path / "m" / "x.png", (40, 56), (3, 4, 15, 9))
    masks = folder_masks(tmp_path / "m", TYPES)
    cfg = GenerateConfig(out=str(tmp_path / "out"), n_per_type=1, num_inference_steps=1, types=("spot",))
    generate(pipe, backgrounds, masks, cfg, progress=False)
    (r,) = _records(tmp_path / "out")
    m = np.asarray(Image.open(tmp_path / "out" / r["mask"]))
    assert m.shape == (64, 64) and set(np.unique(m).tolist()) == {0, 255}
    src = load_image(r["source_image"])
    gen = load_image(tmp_path / "out" / r["image"])
    keep = torch.from_numpy(m == 0)[None].expand_as(src)
    assert torch.equal(gen[keep], src[keep])


def test_held_out_masks_of_a_split_from_another_dataset(tiny_data, tmp_path):
    other = synth_dataset(tmp_path, seed=1, size=32, n_train_good=2, n_test_good=0, n_per_type=2, types=("spot",))
    split = few_shot_split(open_dataset(tiny_data))
    with pytest.raises(InputError, match="split"):  # not a KeyError traceback
        held_out_masks(open_dataset(other), split, ["spot"])
    with pytest.raises(InputError, match="masks"):
        held_out_masks(open_dataset(tiny_data), split, ["chip"])


@pytest.mark.parametrize("change", [dict(seed=1), dict(num_inference_steps=3), dict(guidance_scale=1.0)])
def test_resuming_with_other_settings_is_refused(setup, reference, tmp_path, change):
    pipe, backgrounds, masks = setup
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    _kill_last_records(out, 2)
    before = _digests(out)
    cfg = GenerateConfig(out=str(out), n_per_type=N, **{"num_inference_steps": 2, "batch_size": 2, **change})
    with pytest.raises(InputError, match="out="):
        generate(pipe, backgrounds, masks, cfg, provenance={"base_sha256": "x"}, progress=False)
    assert _digests(out) == before  # nothing was written


def test_more_pairs_per_type_extends_a_finished_folder(setup, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    pipe, backgrounds, masks = setup
    cfg = GenerateConfig(out=str(out), n_per_type=N + 1, num_inference_steps=2, batch_size=2)
    summary = generate(pipe, backgrounds, masks, cfg, provenance={"base_sha256": "x"}, progress=False)
    assert summary["generated"] == len(TYPES) and summary["skipped"] == N * len(TYPES)
    ref = _digests(reference)
    assert {k: v for k, v in _digests(out).items() if k in ref and k != "manifest.jsonl"} == {
        k: v for k, v in ref.items() if k != "manifest.jsonl"}


def test_grain_transfer_is_recorded_and_a_resume_with_another_value_is_refused(setup, tmp_path):
    out = tmp_path / "grain"
    _run(setup, out, grain_transfer=1.0)
    assert {r["grain_transfer"] for r in _records(out)} == {1.0}
    with pytest.raises(InputError, match="grain_transfer"):
        _run(setup, out)
    with pytest.raises(InputError, match="grain_transfer"):
        GenerateConfig(out=str(tmp_path / "x"), grain_transfer=2.5)


@pytest.mark.parametrize("change", [dict(crop_margin=0.25), dict(foreground_overlap=0.5)])
def test_every_sampling_setting_is_compared_on_resume(setup, reference, tmp_path, change):
    pipe, backgrounds, masks = setup
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    _kill_last_records(out, 2)
    before = _digests(out)
    cfg = GenerateConfig(out=str(out), n_per_type=N, num_inference_steps=2, batch_size=2, **change)
    with pytest.raises(InputError, match=next(iter(change))):
        generate(pipe, backgrounds, masks, cfg, provenance={"base_sha256": "x"}, progress=False)
    assert _digests(out) == before


@pytest.mark.parametrize("field", ["adapter_sha256", "data", "split_sha256", "masks", "base_sha256"])
def test_resuming_with_other_provenance_is_refused_with_the_field_named(setup, reference, tmp_path, field):
    pipe, backgrounds, masks = setup
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    _kill_last_records(out, 2)
    recs = [{**r, field: r.get(field, "one")} for r in _records(out)]  # the folder's run recorded this field
    (out / "manifest.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in recs))
    before = _digests(out)
    prov = {"base_sha256": "x", field: "another"} if field != "base_sha256" else {"base_sha256": "y"}
    cfg = GenerateConfig(out=str(out), n_per_type=N, num_inference_steps=2, batch_size=2)
    with pytest.raises(InputError) as exc:
        generate(pipe, backgrounds, masks, cfg, provenance=prov, progress=False)
    assert f"{field}: " in str(exc.value)
    if field == "base_sha256":
        assert "base_sha256: x there, y now" in str(exc.value)
    assert _digests(out) == before


def _cli_generate(capsys, adapter, base, data, out, *extra):
    from counterfactory.cli.main import main

    try:
        code = main(["generate", "--adapter", str(adapter), "--base", str(base), "--data", str(data), "--out", str(out),
                     "--n", "1", "--num-inference-steps", "2", "--quiet", *extra])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_cli_rerun_with_another_dataset_or_adapter_is_refused(capsys, tiny_base, tiny_adapter, tiny_data, tmp_path):
    out = tmp_path / "g"
    code, err = _cli_generate(capsys, tiny_adapter, tiny_base, tiny_data, out)
    assert code == 0, err
    before = _digests(out)
    # the same dataset spelled differently (trailing slash) resumes: nothing to do
    code, err = _cli_generate(capsys, tiny_adapter, tiny_base, str(tiny_data) + "/", out)
    assert code == 0 and _digests(out) == before, err

    other = tmp_path / "other"  # another dataset, same shape and split
    shutil.copytree(tiny_data, other)
    code, err = _cli_generate(capsys, tiny_adapter, tiny_base, other, out, "--n", "2")
    assert code == 2 and "data:" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _digests(out) == before

    adapter = tmp_path / "adapter"  # the same adapter with other weights
    shutil.copytree(tiny_adapter, adapter)
    from safetensors.torch import load_file, save_file

    f = adapter / "pytorch_lora_weights.safetensors"
    tensors = {k: v + 0.01 for k, v in load_file(str(f)).items()}
    save_file(tensors, str(f))
    code, err = _cli_generate(capsys, adapter, tiny_base, tiny_data, out, "--n", "2")
    assert code == 2 and "adapter_sha256" in err and len(err.strip().splitlines()) == 1
    assert _digests(out) == before


def test_cli_skips_broken_samples_of_the_dataset(capsys, tiny_base, tiny_adapter, tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    split = load_split(Path(tiny_adapter) / "split.json")
    good_train = set(split.train["good"])
    unused = [s for s in open_dataset(data).good() if s.source_id not in good_train]
    broken = (unused or open_dataset(data).good())[-1].image_path
    broken.write_text("not an image")
    code, err = _cli_generate(capsys, tiny_adapter, tiny_base, data, tmp_path / "g")
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"warning: skipped [unreadable] image={broken}: a readable image file"), lines[0]
    assert lines[1].startswith("warning: 1 file(s) with problems skipped")
    if unused:
        assert code == 0, err
