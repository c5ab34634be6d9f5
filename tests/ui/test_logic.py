"""The app's work without the browser: editor values → mask, runs, files, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from counterfactory.errors import InputError
from counterfactory.ui import logic

from .conftest import surface


def _editor(image: np.ndarray, strokes: list[tuple[slice, slice, int]] = ()):
    """An ImageEditor value as gradio hands it over (type="pil", RGBA): background + one drawn layer."""
    h, w = image.shape[:2]
    layer = np.zeros((h, w, 4), dtype=np.uint8)
    for ys, xs, alpha in strokes:
        layer[ys, xs] = (255, 48, 48, alpha)
    bg = Image.fromarray(logic.to_u8(image)).convert("RGBA")
    return {"background": bg, "layers": [Image.fromarray(layer, "RGBA")], "composite": bg}


def test_editor_mask_is_the_drawn_pixels_at_half_opacity_or_more():
    img = surface(40, 50)
    value = _editor(img, [(slice(5, 10), slice(8, 20), 255), (slice(30, 32), slice(0, 50), 100)])
    mask = logic.editor_mask(value, img.shape[:2])
    expected = np.zeros((40, 50), np.float32)
    expected[5:10, 8:20] = 1  # the faint (alpha 100) edge row is not part of the mask
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(logic.editor_image(value), img)


def test_editor_errors_name_the_input():
    with pytest.raises(InputError, match=r"^image=none: an uploaded image"):
        logic.editor_image({"background": None, "layers": [], "composite": None})
    img = surface(40, 50)
    with pytest.raises(InputError, match=r"^mask layer 0 size=20x10: the image size 50x40"):
        logic.editor_mask({"layers": [np.zeros((10, 20, 4), np.uint8)]}, img.shape[:2])
    with pytest.raises(InputError, match=r"^mask=empty: a drawn region"):
        logic.check_mask(logic.editor_mask(_editor(img), img.shape[:2]))


def test_boxes_typed_or_drawn():
    drawn = np.zeros((40, 50), np.float32)
    drawn[10:20, 5:15] = 1
    assert logic.resolve_box("", drawn, (40, 50)) == (5, 10, 15, 20)
    assert logic.resolve_box(" 1, 2, 30,40 ", drawn, (40, 50)) == (1, 2, 30, 40)
    with pytest.raises(InputError, match=r"^box=1,2,3: four integers x0,y0,x1,y1"):
        logic.resolve_box("1,2,3", drawn, (40, 50))
    with pytest.raises(InputError, match=r"^box=none: a box"):
        logic.resolve_box(None, np.zeros((40, 50), np.float32), (40, 50))
    with pytest.raises(InputError, match=r"^box"):
        logic.resolve_box("0,0,80,10", drawn, (40, 50))  # outside the image


def test_run_defect_writes_views_and_files_and_keeps_outside_pixels(tmp_path, tiny_base, tiny_adapter):
    models = logic.Models(tiny_base)
    img = surface()
    mask = np.zeros(img.shape[:2], np.float32)
    mask[30:50, 40:90] = 1
    seen = []
    r = logic.run_defect(models, tmp_path, img, mask, str(tiny_adapter), "crack", 3, 2.0, seed=5, n=2,
                         progress=lambda f, t: seen.append(f))
    assert [p.name for p in r.files] == ["result_seed5.png", "result_seed6.png", "mask.png", "settings.json"]
    assert all(p.is_file() and p.parent == r.folder for p in r.files)
    assert r.folder.parent == tmp_path / "runs" and not list((tmp_path / "runs").glob(".*"))  # no temp folder left
    src = logic.to_u8(img)
    for f in r.files[:2]:
        out = np.asarray(Image.open(f).convert("RGB"))
        np.testing.assert_array_equal(out[mask == 0], src[mask == 0])
        assert np.abs(out[mask == 1].astype(int) - src[mask == 1]).mean() > 1  # the region was repainted
    assert not np.array_equal(r.results[0], r.results[1])  # two seeds, two variations
    np.testing.assert_array_equal(np.asarray(Image.open(r.folder / "mask.png")) > 127, mask == 1)
    settings = json.loads((r.folder / "settings.json").read_text())
    assert settings["seeds"] == [5, 6] and settings["defect_type"] == "crack" and settings["num_inference_steps"] == 3
    assert settings["adapter"] == str(tiny_adapter.resolve()) and settings["mask_pixels"] == 1000
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    assert (r.differences[0][mask == 0] == 0).all() and r.differences[0].max() > 0
    again = logic.run_defect(models, tmp_path, img, mask, str(tiny_adapter), "crack", 3, 2.0, seed=6, n=1)
    np.testing.assert_array_equal(again.results[0], r.results[1])  # same seed, same bits


def test_bare_base_fills_without_a_damage_type(tmp_path, tiny_base):
    models = logic.Models(tiny_base)
    assert logic.damage_types(models, logic.BARE_BASE) == [logic.NO_TYPE]
    img = surface(64, 64)
    mask = np.zeros((64, 64), np.float32)
    mask[20:40, 20:40] = 1
    r = logic.run_defect(models, tmp_path, img, mask, logic.BARE_BASE, logic.NO_TYPE, 2, 2.0, seed=0)
    assert r.settings["adapter"] is None and r.settings["defect_type"] is None
    np.testing.assert_array_equal(r.results[0][mask == 0], logic.to_u8(img)[mask == 0])


def test_bad_defect_inputs_raise_the_one_line_message_and_write_nothing(tmp_path, tiny_base, tiny_adapter):
    models = logic.Models(tiny_base)
    img = surface(64, 64)
    mask = np.zeros((64, 64), np.float32)
    mask[20:40, 20:40] = 1
    cases = [
        (dict(mask=np.zeros_like(mask)), r"^mask=empty"),
        (dict(defect_type="dent"), r"^defect_type=dent: one of \['crack', 'spot'\]"),
        (dict(defect_type=logic.NO_TYPE), r"^damage type="),
        (dict(steps=0), r"^num_inference_steps=0: an integer in \[1, 1000\]"),
        (dict(seed=-1), r"^seed=-1: an integer >= 0"),
        (dict(n=17), r"^variations=17: an integer in \[1, 16\]"),
        (dict(guidance=-1.0), r"^guidance_scale=-1.0"),
        (dict(adapter=str(tmp_path / "nope")), r"^adapter=.*nope.*: an existing adapter folder"),
    ]
    for change, message in cases:
        kw = dict(mask=mask, adapter=str(tiny_adapter), defect_type="crack", steps=2, guidance=2.0, seed=0, n=1)
        kw.update(change)
        with pytest.raises(InputError, match=message):
            logic.run_defect(models, tmp_path, img, kw["mask"], kw["adapter"], kw["defect_type"], kw["steps"],
                             kw["guidance"], kw["seed"], kw["n"])
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_run_reference_fills_the_box_only(tmp_path, tiny_base, ui_ref_adapter):
    models = logic.Models(tiny_base)
    img = surface(64, 80)
    ref = surface(24, 24, seed=3) * 0.3
    r = logic.run_reference(models, tmp_path, img, ref, (20, 10, 44, 34), str(ui_ref_adapter), 2, 2.0, seed=1, n=1)
    box = np.zeros((64, 80), bool)
    box[10:34, 20:44] = True
    out = np.asarray(Image.open(r.files[0]).convert("RGB"))
    np.testing.assert_array_equal(out[~box], logic.to_u8(img)[~box])
    assert not np.array_equal(out[box], logic.to_u8(img)[box])
    np.testing.assert_array_equal(np.asarray(Image.open(r.folder / "mask.png")) > 127, box)
    assert json.loads((r.folder / "settings.json").read_text())["box"] == [20, 10, 44, 34]
    with pytest.raises(InputError, match=r"^reference adapter=none"):
        logic.run_reference(models, tmp_path, img, ref, (20, 10, 44, 34), "", 2, 2.0, seed=1)


def test_run_reference_harmonise_keeps_the_pasted_reference_inside_the_band(tmp_path, tiny_base, ui_ref_adapter):
    """harmonise: the reference Poisson-pasted, only the band along the box's edge denoised (pipeline refine_band)."""
    from counterfactory.io.masks import border_band
    from counterfactory.pipelines.reference_inpaint import band_width

    models = logic.Models(tiny_base)
    img, ref, box = surface(64, 80), surface(24, 24, seed=3) * 0.3, (20, 10, 44, 34)
    r = logic.run_reference(models, tmp_path, img, ref, box, str(ui_ref_adapter), 2, 1.0, seed=1, n=1, harmonise=True)
    settings = json.loads((r.folder / "settings.json").read_text())
    assert (settings["refine_band"], settings["paste_mode"]) == (0.25, "poisson")
    pipe = models.reference(str(ui_ref_adapter))
    x, rf = (torch.from_numpy(a).permute(2, 0, 1).float() for a in (img, ref))
    pasted = pipe(x, rf, box=box, strength=0.0, paste_mode="poisson", output_type="np").images[0]
    inside = np.zeros((64, 80), bool)
    inside[10:34, 20:44] = True
    band = border_band(torch.from_numpy(inside).float(), band_width(box, 0.25)).numpy() > 0.5
    out = np.asarray(Image.open(r.files[0]).convert("RGB"))
    np.testing.assert_array_equal(out[inside & ~band], pasted[inside & ~band])
    np.testing.assert_array_equal(out[~inside], logic.to_u8(img)[~inside])
    assert not np.array_equal(out[band], pasted[band])
    plain = logic.run_reference(models, tmp_path, img, ref, box, str(ui_ref_adapter), 2, 1.0, seed=1, n=1)
    assert json.loads((plain.folder / "settings.json").read_text())["refine_band"] is None


def test_train_small_adapter_on_procedural_surfaces(tmp_path, tiny_base):
    path = logic.train_small_adapter(tmp_path, "", steps=2, seed=0, base=str(tiny_base))
    assert path.parent == (tmp_path / "adapters").resolve()
    cfg = json.loads((path / "adapter_config.json").read_text())
    assert cfg["steps"] == 2 and cfg["types"] == ["chip", "crack", "scratch", "spot"]
    assert str(path) in logic.find_adapters(tmp_path)
    assert logic.damage_types(logic.Models(tiny_base), str(path)) == cfg["types"]
    with pytest.raises(InputError, match=r"^training data=.*missing"):
        logic.train_small_adapter(tmp_path, str(tmp_path / "missing"), steps=2, base=str(tiny_base))


def test_step_progress_uses_callback_on_step_end_when_the_pipeline_has_it():
    class WithCallback:
        def __call__(self, image, callback_on_step_end=None):
            return None

    class Without:
        def __call__(self, image):
            return None

    seen = []
    kw = logic._step_hook(WithCallback(), lambda f, t: seen.append((f, t)), 0.5, 0.5, "seed 1", 4)
    for k in range(4):
        assert kw["callback_on_step_end"](None, k, 999 - k, {"latents": k}) == {"latents": k}
    assert seen[0] == (0.625, "seed 1: step 1/4") and seen[-1] == (1.0, "seed 1: step 4/4")
    assert logic._step_hook(Without(), lambda f, t: None, 0, 1, "x", 4) == {}  # progress then comes from tqdm
