"""The web app's text tab without the browser: digit in, captions, edit, attention map, files, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from counterfactory.errors import InputError
from counterfactory.pipelines.text_edit import TextEditPipeline
from counterfactory.ui import logic
from tests.editing.conftest import stroke_digits, tiny_model

SRC = "a thin, upright, dim seven"
TGT = "a thick, upright, dim seven"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tiny_model().save(tmp_path_factory.mktemp("text_model") / "model")
    return logic.Models(text_model=folder)


def _digit() -> np.ndarray:
    return stroke_digits(1, seed=3)[0].astype(np.float32) / 255.0


def test_text_digit_reads_grey_or_rgb_and_resizes_to_the_model():
    d = _digit()
    u8 = logic.to_u8(d)
    np.testing.assert_array_equal(logic.text_digit(Image.fromarray(u8)), d)
    np.testing.assert_array_equal(logic.text_digit(np.repeat(u8[..., None], 3, axis=-1)), d)
    big = logic.text_digit(Image.fromarray(u8).resize((56, 56), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(big, d)  # 2x2 blocks averaged back
    with pytest.raises(InputError, match=r"^digit=none: an uploaded digit image"):
        logic.text_digit(None)


def test_source_caption_measures_the_digit_and_the_target_swaps_one_word():
    thin = np.zeros((28, 28), np.float32)
    thin[6:22, 13] = 1.0  # one-pixel vertical stroke, full brightness
    cap = logic.source_caption(thin, "7")
    assert cap.startswith("a thin, upright") and cap.endswith("seven")
    assert logic.source_caption(thin, logic.NO_CLASS).endswith("digit")
    tgt = logic.suggest_target(cap)
    assert tgt == cap.replace("thin", "thick", 1)
    with pytest.raises(InputError, match=r"^digit class=12: 0..9"):
        logic.source_caption(thin, 12)


def test_text_edit_writes_the_run_and_matches_the_pipeline(models, tmp_path):
    d = _digit()
    res = logic.run_text_edit(models, tmp_path, d, SRC, TGT, num_inference_steps=3, cross_replace_steps=0.6,
                              self_replace_steps=0.3)
    assert res.folder.is_dir() and res.folder.parent == tmp_path / "runs" and res.folder.name.startswith("text-")
    assert [f.name for f in res.files] == ["edited.png", "attention_overlay.png", "attention.png", "report.html",
                                           "settings.json"]
    settings = json.loads((res.folder / "settings.json").read_text())
    assert settings["removed_words"] == ["thin"] and settings["added_words"] == ["thick"]
    assert settings["cross_replace_steps"] == 0.6 and settings["method"] == "direct"
    direct = TextEditPipeline(models.text().model)(torch.from_numpy(d)[None, None], SRC, TGT, num_inference_steps=3,
                                                   cross_replace_steps=0.6, self_replace_steps=0.3)
    saved = np.asarray(Image.open(res.folder / "edited.png"))
    np.testing.assert_array_equal(saved, logic.to_u8(direct.images[0, 0].numpy()))
    assert res.edited.shape == res.attention.shape == (logic.TEXT_VIEW_PX, logic.TEXT_VIEW_PX, 3)
    assert "<del>thin,</del> <ins>thick,</ins>" in res.caption_diff
    again = logic.run_text_edit(models, tmp_path, d, SRC, TGT, num_inference_steps=3, cross_replace_steps=0.6,
                                self_replace_steps=0.3)
    assert again.folder != res.folder
    assert (again.folder / "edited.png").read_bytes() == (res.folder / "edited.png").read_bytes()
    assert np.array_equal(again.attention, res.attention)
    # local blend off changes the result; fixed-point inversion runs from the same tab
    free = logic.run_text_edit(models, tmp_path, d, SRC, TGT, num_inference_steps=3, local_blend=False,
                               method="fixed-point")
    assert free.settings["local_blend"] is False and not np.array_equal(free.edited, res.edited)


@pytest.mark.parametrize("kwargs,match", [
    (dict(cross_replace_steps=1.5), r"^cross_replace_steps=1.5: a fraction in \[0, 1\]"),
    (dict(self_replace_steps=-0.1), r"^self_replace_steps=-0.1: a fraction"),
    (dict(method="exact"), r"^method=exact: one of direct, fixed-point"),
    (dict(guidance_scale=0.5), r"^guidance_scale=0.5: a number >= 1"),
    (dict(num_inference_steps=0), r"^num_inference_steps=0: an integer in \[1, 1000\]"),
    (dict(target="a fat seven"), r"target=a fat seven: .*unknown: fat"),
    (dict(target=SRC), r"target=.*differs from the source"),
    (dict(source="  "), r"^source caption=\s*: a caption"),
])
def test_text_edit_mistakes_are_named_and_write_nothing(models, tmp_path, kwargs, match):
    args = dict(source=SRC, target=TGT, num_inference_steps=2)
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        logic.run_text_edit(models, tmp_path, _digit(), **args)
    assert not any((tmp_path / "runs").glob("text-*")) if (tmp_path / "runs").exists() else True
    assert not any((tmp_path / "runs").glob(".text-*")) if (tmp_path / "runs").exists() else True


def test_draw_digit_is_seeded(models):
    a = logic.draw_digit(models, SRC, 4, steps=2)
    b = logic.draw_digit(models, SRC, 4, steps=2)
    c = logic.draw_digit(models, SRC, 5, steps=2)
    assert a.shape == (28, 28) and np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(InputError, match=r"caption=a fat seven"):
        logic.draw_digit(models, "a fat seven", 0)
