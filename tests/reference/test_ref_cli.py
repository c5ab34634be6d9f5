"""`counterfactory insert` (one image and benchmark) and `train-reference`: outputs, and bad input = one line,
exit 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from counterfactory.cli.main import main
from counterfactory.io.images import load_image, save_image


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("insert_cli")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((48, 64)) * 255).astype(np.uint8), "L").save(d / "gray.png")
    Image.fromarray((rng.random((16, 12)) * 255).astype(np.uint8), "L").save(d / "ref_gray.png")
    Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8), "RGB").save(d / "rgb.png")
    Image.fromarray((rng.random((16, 12, 3)) * 255).astype(np.uint8), "RGB").save(d / "ref_rgb.png")
    Image.fromarray((rng.random((6, 20)) * 255).astype(np.uint8), "L").save(d / "ref_tiny.png")
    Image.fromarray((rng.random((16, 16, 4)) * 255).astype(np.uint8), "RGBA").save(d / "ref_rgba.png")
    Image.fromarray((rng.random((600, 600)) * 255).astype(np.uint8), "L").save(d / "big.png")
    return d


def _run(capsys, *argv):
    try:
        code = main(["insert", *map(str, argv)])
    except SystemExit as exc:  # argparse's bounded flag types exit 2 with one line
        code = exc.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("method", ["copy_paste", "poisson"])
def test_single_image_baselines_keep_gray_and_outside(files, tmp_path, capsys, method):
    out = tmp_path / "o.png"
    code, stdout, _ = _run(capsys, "--image", files / "gray.png", "--box", "10,5,30,25", "--reference",
                           files / "ref_gray.png", "--out", out, "--method", method)
    assert code == 0 and json.loads(stdout)["box"] == [10, 5, 30, 25]
    assert Image.open(out).mode == "L"
    a, b = load_image(files / "gray.png", mode="L"), load_image(out, mode="L")
    m = torch.zeros(48, 64, dtype=torch.bool)
    m[5:25, 10:30] = True
    assert torch.equal(a[:, ~m], b[:, ~m]) and not torch.equal(a[:, m], b[:, m])


def test_single_image_model(files, tmp_path, capsys, tiny_base, ref_adapter):
    out = tmp_path / "o.png"
    code, _, err = _run(capsys, "--image", files / "rgb.png", "--box", "10,5,30,25", "--reference", files / "ref_rgb.png",
                        "--out", out, "--adapter", ref_adapter, "--base", tiny_base, "--num-inference-steps", "2")
    assert code == 0, err
    a, b = load_image(files / "rgb.png"), load_image(out)
    m = torch.zeros(48, 64, dtype=torch.bool)
    m[5:25, 10:30] = True
    assert torch.equal(a[:, ~m], b[:, ~m]) and (a[:, m] - b[:, m]).abs().mean() > 0


@pytest.mark.parametrize("image,box,ref,match", [
    ("gray.png", "60,5,70,25", "ref_gray.png", "inside the image"),
    ("gray.png", "10,5,10,25", "ref_gray.png", "degenerate"),
    ("gray.png", "30,5,10,25", "ref_gray.png", "degenerate"),
    ("gray.png", "1,2,3", "ref_gray.png", "four integers"),
    ("gray.png", "a,b,c,d", "ref_gray.png", "four integers"),
    ("gray.png", "0,0,60,45", "ref_gray.png", "upscaling a reference more than 4x"),
    ("gray.png", "10,5,30,25", "ref_tiny.png", "at least 8 px"),
    ("gray.png", "10,5,30,25", "ref_rgba.png", "alpha"),
    ("big.png", "0,0,300,40", "ref_gray.png", "at most 256 px"),
    ("missing.png", "10,5,30,25", "ref_gray.png", "existing image file"),
])
def test_bad_input_one_line_exit_2_nothing_written(files, tmp_path, capsys, image, box, ref, match):
    out = tmp_path / "o.png"
    code, stdout, err = _run(capsys, "--image", files / image, "--box", box, "--reference", files / ref, "--out", out,
                             "--method", "copy_paste")
    assert code == 2 and match in err, err
    assert err.count("\n") == 1 and "Traceback" not in err and stdout == ""
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag,value,match", [
    ("--strength", "1.5", "--strength"), ("--strength", "-0.1", "--strength"), ("--strength", "nan", "--strength"),
    ("--strength", "0.01", "strength x --num-inference-steps >= 1"),
    ("--guidance-scale", "-1", "--guidance-scale"), ("--guidance-scale", "51", "--guidance-scale"),
    ("--refine-band", "0", "--refine-band"), ("--refine-band", "0.7", "--refine-band"),
    ("--refine-band", "nan", "--refine-band"),
])
def test_strength_and_reference_guidance_out_of_range(files, tmp_path, capsys, flag, value, match):
    out = tmp_path / "o.png"
    code, stdout, err = _run(capsys, "--image", files / "rgb.png", "--box", "10,5,30,25", "--reference",
                             files / "ref_rgb.png", "--out", out, "--method", "copy_paste", flag, value)
    assert code == 2 and match in err and err.count("\n") == 1 and stdout == "", err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("image,ref", [("gray.png", "ref_rgb.png"), ("rgb.png", "ref_gray.png")])
def test_reference_of_another_channel_count_is_converted_with_a_note(files, tmp_path, capsys, image, ref):
    out = tmp_path / "o.png"
    code, stdout, err = _run(capsys, "--image", files / image, "--box", "10,5,30,25", "--reference", files / ref,
                             "--out", out, "--method", "copy_paste")
    assert code == 0 and "note:" in err and "converted" in err, err
    mode = "L" if image == "gray.png" else "RGB"
    assert Image.open(out).mode == mode
    a, b = load_image(files / image, mode=mode), load_image(out, mode=mode)
    r = load_image(files / ref, mode=mode)
    inside = b[:, 5:25, 10:30]
    assert inside.shape[0] == r.shape[0] and not torch.equal(inside, a[:, 5:25, 10:30])


def test_model_without_adapter_is_an_error(files, tmp_path, capsys):
    code, _, err = _run(capsys, "--image", files / "rgb.png", "--box", "10,5,30,25", "--reference", files / "ref_rgb.png",
                        "--out", tmp_path / "o.png", "--adapter", tmp_path / "none")
    assert code == 2 and "reference adapter not found" in err and not (tmp_path / "o.png").exists()


def test_benchmark_mode_with_baselines(boxes_data, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = _run(capsys, "--data", boxes_data, "--out", out, "--methods", "copy_paste,poisson",
                             "--tasks", "reinsertion,insertion", "--n", "3", "--extractor-steps", "2", "--quiet")
    assert code == 0, err
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert {(r["task"], r["method"]) for r in rows} == {(t, m) for t in ("reinsertion", "insertion")
                                                        for m in ("copy_paste", "poisson")}
    assert (out / "report.html").is_file() and (out / "compact_extractor" / "model.safetensors").is_file()
    code, _, err = _run(capsys, "--data", boxes_data, "--out", out, "--tasks", "teleport")
    assert code == 2 and "--tasks" in err


def test_train_reference_command(tiny_data, tiny_base, tmp_path, capsys):
    out = tmp_path / "ad"
    code = main(["train-reference", "--data", str(tiny_data), "--out", str(out), "--base", str(tiny_base),
                 "--steps", "1", "--batch-size", "1", "--rank", "2", "--reference-size", "16", "--quiet"])
    assert code == 0 and (out / "reference_adapter.json").is_file()
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 1


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "insert" in text and "train-reference" in text


def test_gray_reference_from_save_image_roundtrip(tmp_path):
    save_image(torch.rand(1, 12, 12), tmp_path / "r.png")
    assert Image.open(tmp_path / "r.png").mode == "L"


def test_benchmark_refusal_leaves_nothing_behind(boxes_data, tmp_path, capsys):
    """A folder of another run is refused before the feature extractor is trained into it."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"cases": [], "methods": ["poisson"], "seed": 7}))
    code, _, err = _run(capsys, "--data", boxes_data, "--out", out, "--methods", "copy_paste", "--tasks",
                        "insertion", "--n", "2", "--extractor-steps", "2", "--quiet")
    assert code == 2 and "--out=" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]


def test_out_that_is_an_input_file_is_refused(files, tmp_path, capsys):
    target = tmp_path / "t.png"
    target.write_bytes((files / "rgb.png").read_bytes())
    code, _, err = _run(capsys, "--image", target, "--box", "10,10,20,20", "--reference", files / "ref_rgb.png",
                        "--out", target, "--method", "copy_paste")
    assert code == 2 and "other than --image" in err
    assert target.read_bytes() == (files / "rgb.png").read_bytes()


def test_one_pixel_image_is_refused(files, tmp_path, capsys):
    Image.fromarray(np.full((1, 1, 3), 9, np.uint8)).save(tmp_path / "dot.png")
    code, _, err = _run(capsys, "--image", tmp_path / "dot.png", "--box", "0,0,1,1", "--reference",
                        files / "ref_rgb.png", "--out", tmp_path / "o.png", "--method", "copy_paste")
    assert code == 2 and "1x1 px" in err and "at least 16 px" in err and not (tmp_path / "o.png").exists()

