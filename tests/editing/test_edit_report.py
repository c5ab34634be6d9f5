"""The edit report: attention map upsampled and drawn over the digit, caption diff, triplets' report per edit type."""

import base64
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from counterfactory.editing.attention import attention_overlay
from counterfactory.errors import InputError
from counterfactory.pipelines.text_edit import EditRow, caption_diff_html, edit_report_html, edit_table_html


def _blob(side=7, at=(1, 1)):
    a = np.zeros((side, side), np.float32)
    a[at] = 1.0
    return a


def _images(html):
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in
            re.findall(r"src='data:image/png;base64,([^']+)'", html)]


def test_overlay_is_the_digit_where_the_word_does_not_attend_and_coloured_where_it_does():
    digit = np.zeros((28, 28), np.float32)
    digit[10:18, 12:16] = 1.0
    out = attention_overlay(digit, _blob(), size=56)
    assert out.shape == (56, 56, 3) and out.dtype == np.uint8
    grey = np.repeat(np.kron(digit, np.ones((2, 2)))[..., None] * 255, 3, axis=-1).round()
    far = out[40:, 40:].astype(int)  # far from the attended cell (top left)
    assert np.array_equal(far, grey[40:, 40:].astype(int))
    hot = out[12, 12].astype(int)  # centre of the attended cell (rows/cols 8..16 at 56 px)
    assert hot[0] != hot[2]  # coloured, not grey
    # the 7x7 map is upsampled smoothly: more distinct opacities than the map has values
    mask = (out != grey.astype(np.uint8)).any(-1)
    assert mask[6:18, 6:18].all() and not mask[30:].any() and not mask[:, 30:].any()
    assert len(np.unique(out[mask][:, 0])) > 4


def test_overlay_bad_input_is_named():
    with pytest.raises(InputError, match=r"attention=\(2, 3, 3\)"):
        attention_overlay(np.zeros((28, 28)), np.zeros((2, 3, 3)))
    with pytest.raises(InputError, match=r"alpha=2"):
        attention_overlay(np.zeros((28, 28)), np.zeros((3, 3)), alpha=2)


def test_edit_table_shows_reference_edited_diff_and_where_the_changed_word_attends():
    g = torch.Generator().manual_seed(0)
    ref, edited = torch.rand(1, 28, 28, generator=g), torch.rand(1, 28, 28, generator=g)
    row = EditRow(ref, edited, "a thin, upright, dim seven", "a thick, upright, dim seven", _blob(at=(5, 5)),
                  note="thickness +1.2")
    html = edit_table_html([row], cell_px=28, note_title="measured")
    assert "a <del>thin,</del> <ins>thick,</ins> upright, dim seven" in html and "thickness +1.2" in html
    ref_img, edited_img, overlay = _images(html)
    assert np.array_equal(ref_img, (ref[0].numpy() * 255).round().astype(np.uint8))
    assert np.array_equal(edited_img, (edited[0].numpy() * 255).round().astype(np.uint8))
    coloured = np.abs(overlay.astype(int) - edited_img[..., None].astype(int)).max(-1) > 0
    ys, xs = np.nonzero(coloured)
    assert ys.min() >= 14 and xs.min() >= 14  # the map's cell (5,5) of 7 lies in the lower right
    page = edit_report_html([row, row], title="t <1>", intro="x & y")
    assert page.startswith("<!doctype html>") and "t &lt;1&gt;" in page and "x &amp; y" in page
    assert len(_images(page)) == 6


def test_caption_diff_escapes_words():
    assert caption_diff_html("a <b> seven", "a <i> seven") == "a <del>&lt;b&gt;</del> <ins>&lt;i&gt;</ins> seven"


def test_triplets_report_embeds_the_attention_overlay_per_edit_type(tmp_path):
    from counterfactory.pipelines.triplets import report_html

    (tmp_path / "images").mkdir()
    (tmp_path / "attention").mkdir()
    digit = np.zeros((28, 28), np.uint8)
    digit[8:20, 12:16] = 255
    Image.fromarray(digit).save(tmp_path / "images" / "mm-00003.png")
    Image.fromarray(digit).save(tmp_path / "images" / "cf-00000007.png")
    att = np.zeros((28, 28), np.uint8)
    att[:6, :6] = 255
    Image.fromarray(att).save(tmp_path / "attention" / "cf-00000007.png")
    kept = [{"pairid": 7, "reference_index": 3, "attribute": "thickness", "direction": 1, "change": 0.8,
             "caption": "a thin seven", "target_caption": "a thick seven", "modification": "make it thicker"}]
    summary = {"kept": 1, "candidates": 4, "pass_rate": 0.25, "per_edit": {"thickness+": {"candidates": 4, "kept": 1}}}
    html = report_html(kept, summary, tmp_path)
    assert "<h2>thickness +</h2>" in html and "<del>thin</del>" in html and "make it thicker" in html
    ref_img, edited_img, overlay = _images(html)
    coloured = np.abs(overlay.astype(int) - np.kron(edited_img, np.ones((4, 4), np.uint8))[..., None]).max(-1) > 0
    ys, xs = np.nonzero(coloured)
    assert ys.max() < 40 and xs.max() < 40  # only the attended top-left corner (6 of 28 px → 24 of 112, smoothed)
    json.dumps(summary)


def test_demo_text_section_writes_measured_edits_and_is_deterministic(tmp_path):
    from counterfactory.cli.demo import text_edit_section
    from counterfactory.models.text2image import DEFAULT_TEXT2IMAGE_DIR

    if not (DEFAULT_TEXT2IMAGE_DIR / "text2image.json").is_file():
        pytest.skip("weights/text2image not present")
    a = text_edit_section(tmp_path / "a", n=2, seed=0, steps=2)
    b = text_edit_section(tmp_path / "b", n=2, seed=0, steps=2)
    assert [r.edited.tolist() for r in a["rows"]] == [r.edited.tolist() for r in b["rows"]]
    saved = json.loads((tmp_path / "a" / "edits.json").read_text())
    assert saved["edits"] == a["edits"] == b["edits"] and saved["n"] == 2
    for e in saved["edits"]:
        assert len(e["source"].split()) == len(e["target"].split()) and e["source"] != e["target"]
        assert e["attribute"] in ("thickness", "slant", "intensity") and e["direction"] in (-1, 1)
    page = (tmp_path / "a" / "report.html").read_text()
    assert page.count("<del>") == 2 and len(_images(page)) == 6


def test_overlay_stretches_a_nearly_flat_map_to_show_where_the_word_attends_most():
    flat = np.full((7, 7), 0.8, np.float32)
    flat[3, 3] = 0.9
    out = attention_overlay(np.zeros((28, 28)), flat, size=28)
    assert np.array_equal(out[0, 0], [0, 0, 0])  # the weakest point: the (black) digit itself
    assert out[14, 14].sum() > 100  # the strongest: coloured
    same = attention_overlay(np.zeros((28, 28)), np.full((7, 7), 0.5, np.float32), size=28)
    assert not same.any()  # a flat map says nothing: no colour
