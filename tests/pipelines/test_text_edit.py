import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from counterfactory.errors import InputError
from counterfactory.pipelines.text_edit import TextEditPipeline
from tests.editing.conftest import stroke_digits, tiny_model

SRC = "a thin, upright, dim seven"
TGT = "a thick, upright, dim seven"


def _digits(n=2):
    return torch.from_numpy(stroke_digits(n, seed=3)).float()[:, None] / 255.0


def test_edit_is_deterministic_and_local_blend_keeps_outside_pixels():
    pipe = TextEditPipeline(tiny_model())
    img = _digits()
    a = pipe(img, SRC, TGT, num_inference_steps=3, blend_threshold=0.95)
    b = pipe(img, SRC, TGT, num_inference_steps=3, blend_threshold=0.95)
    assert torch.equal(a.images, b.images) and torch.equal(a.attention_maps, b.attention_maps)
    outside = a.blend_masks == 0
    assert outside.any() and (a.blend_masks == 1).any()
    # direct inversion + blend: outside the changed word's region the edit is the input (up to float rounding)
    assert torch.allclose(a.images[outside], img[outside], atol=1e-5)
    assert torch.equal(a.source_images, img)
    assert a.changed_words[0] == (["thin"], ["thick"]) and a.edit_types == ["replace", "replace"]
    assert a.attention_maps.shape == (2, 1, 28, 28) and float(a.attention_maps.max()) == pytest.approx(1.0)
    assert a.unet_calls == 3 + 3 * 3  # inversion, then (target uncond, source cond, target cond) per step


def test_other_word_counts_fall_back_to_refine_or_error():
    pipe = TextEditPipeline(tiny_model())
    out = pipe(_digits(1), SRC, "a thick seven", num_inference_steps=2)
    assert out.edit_types == ["refine"]
    with pytest.raises(InputError, match="same number of words"):
        pipe(_digits(1), SRC, "a thick seven", num_inference_steps=2, on_mismatch="error")


@pytest.mark.parametrize("kwargs,match", [
    (dict(image=torch.zeros(1, 3, 28, 28)), r"image=\(1, 3, 28, 28\)"),
    (dict(image=torch.zeros(1, 1, 32, 32)), r"image=\(1, 1, 32, 32\)"),
    (dict(target="a fat seven"), r"target=a fat seven: .*unknown: fat"),
    (dict(target=SRC), r"target=.*differs from the source"),
    (dict(method="exact"), r"method=exact"),
])
def test_bad_input_is_named(kwargs, match):
    pipe = TextEditPipeline(tiny_model())
    args = dict(image=_digits(1), source=SRC, target=TGT)
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        pipe(args.pop("image"), args.pop("source"), args.pop("target"), num_inference_steps=2, **args)


def _cli(*args, cwd):
    src = Path(__file__).resolve().parents[2] / "src"
    return subprocess.run([sys.executable, "-m", "counterfactory.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"})


def test_cli_edit_writes_outputs_and_rejects_bad_input(tmp_path):
    model_dir = tiny_model().save(tmp_path / "model")
    Image.fromarray(stroke_digits(1)[0]).save(tmp_path / "d.png")
    Image.fromarray(stroke_digits(1)[0]).convert("RGB").save(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "big.png")
    ok = _cli("edit", "--image", "d.png", "--source", SRC, "--target", TGT, "--out", "out", "--model", str(model_dir),
              "--num-inference-steps", "2", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"edited.png", "attention.png", "blend_mask.png", "edit.json",
                                                                 "report.html"}
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<del>thin,</del> <ins>thick,</ins>" in page and page.count("data:image/png;base64,") == 3
    for args, needle in [(["--image", "rgb.png"], "--image=rgb.png (28x28, RGB, 3 channel(s))"),
                         (["--image", "d.png", "--target", "a fat seven"], "--target=a fat seven"),
]:
        full = ["edit", "--source", SRC, "--target", TGT, "--out", "bad", "--model", str(model_dir), *args]
        r = _cli(*full, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr
        assert not (tmp_path / "bad").exists()


def test_shipped_text2image_weights_load_and_edit():
    from counterfactory.models.text2image import DEFAULT_TEXT2IMAGE_DIR

    if not (DEFAULT_TEXT2IMAGE_DIR / "text2image.json").is_file():
        pytest.skip("weights/text2image not present")
    card = (DEFAULT_TEXT2IMAGE_DIR / "MODEL_CARD.md").read_text()
    assert "Command" in card and "Steps" in card and (DEFAULT_TEXT2IMAGE_DIR / "sample_grid.png").is_file()
    pipe = TextEditPipeline.from_pretrained()
    assert all(p.suffix != ".bin" for p in DEFAULT_TEXT2IMAGE_DIR.rglob("*"))
    img = _digits(1)
    out = pipe(img, SRC, TGT, num_inference_steps=2)
    assert out.images.shape == img.shape and torch.equal(out.source_images, img)
    assert out.changed_words[0] == (["thin"], ["thick"])
