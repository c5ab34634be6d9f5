"""The defect-synthesis commands in-process: help, one-line errors with exit 2, a tiny generate run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from counterfactory.cli.main import main

from .helpers import fails_one_line

_fails = fails_one_line


@pytest.mark.parametrize("command", ["train-base", "train-adapter", "generate", "demo"])
def test_help_exits_zero(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and command in out


def test_train_adapter_missing_data_folder(capsys, tmp_path):
    _fails(capsys, ["train-adapter", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "a")], "--data")


def test_train_base_missing_data_folder(capsys, tmp_path):
    _fails(capsys, ["train-base", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "b")], "--data")


@pytest.mark.parametrize("command", ["train-base", "train-adapter"])
def test_steps_zero(capsys, tmp_path, command):
    _fails(capsys, [command, "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--steps", "0"], "--steps")


def test_generate_with_a_folder_that_is_not_an_adapter(capsys, tmp_path, tiny_data):
    _fails(capsys, ["generate", "--adapter", str(tmp_path), "--data", str(tiny_data), "--out", str(tmp_path / "g")],
           "--adapter", "adapter_config.json")


def test_generate_unknown_types(capsys, tmp_path, tiny_adapter, tiny_base, tiny_data):
    _fails(capsys, ["generate", "--adapter", str(tiny_adapter), "--base", str(tiny_base), "--data", str(tiny_data),
                    "--out", str(tmp_path / "g"), "--types", "dent"], "dent", "crack")
    assert not (tmp_path / "g").exists()


def test_train_adapter_unknown_types(capsys, tmp_path, tiny_base, tiny_data):
    _fails(capsys, ["train-adapter", "--data", str(tiny_data), "--base", str(tiny_base), "--out", str(tmp_path / "a"),
                    "--types", "dent", "--quiet"], "types", "dent")


def test_train_adapter_on_an_empty_base_folder_says_where_to_put_the_weights(capsys, tmp_path, tiny_data):
    (tmp_path / "empty").mkdir()
    line = _fails(capsys, ["train-adapter", "--data", str(tiny_data), "--base", str(tmp_path / "empty"),
                           "--out", str(tmp_path / "a")], "compact_inpaint.safetensors", str(tmp_path / "empty"))
    assert "train-base" in line


def test_generate_end_to_end(capsys, tmp_path, tiny_adapter, tiny_base, tiny_data):
    out = tmp_path / "g"
    argv = ["generate", "--adapter", str(tiny_adapter), "--base", str(tiny_base), "--data", str(tiny_data),
            "--out", str(out), "--n", "1", "--num-inference-steps", "1", "--quiet"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["generated"] == 2 and summary["skipped"] == 0
    recs = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["type"] for r in recs) == ["crack", "spot"]
    assert all(len(r["adapter_sha256"]) == 64 and len(r["base_sha256"]) == 64 for r in recs)
    assert all((out / r["image"]).is_file() and (out / r["mask"]).is_file() for r in recs)
    assert main(argv) == 0  # a rerun resumes: nothing left to do
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == 2


def test_generate_with_the_controlnet_method(capsys, tmp_path, tiny_controlnet, tiny_base, tiny_data):
    """Same folder layout and manifest as inpainting; pixels beyond the paste-back band are the background's."""
    import torch

    from counterfactory.io.images import load_image
    from counterfactory.io.masks import dilate, read_mask

    out = tmp_path / "g"
    argv = ["generate", "--method", "controlnet", "--adapter", str(tiny_controlnet), "--base", str(tiny_base),
            "--data", str(tiny_data), "--out", str(out), "--n", "1", "--num-inference-steps", "2",
            "--paste-back-dilation", "3", "--quiet"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["generated"] == 2
    recs = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["type"] for r in recs) == ["crack", "spot"]
    assert all(r["method"] == "controlnet" and r["paste_back_dilation"] == 3 for r in recs)
    changed_inside = 0.0
    for r in recs:
        img, src = load_image(out / r["image"]), load_image(r["source_image"])
        m = torch.from_numpy(read_mask(out / r["mask"]))[None, None]
        keep = (dilate(m, 3)[0] < 0.5).expand_as(img)
        assert torch.equal((img * 255).round()[keep], (src * 255).round()[keep])
        changed_inside += float((img - src).abs()[(m[0] > 0.5).expand_as(img)].mean())
    assert changed_inside > 0.01  # the masks were painted
    _fails(capsys, argv[:-1] + ["--no-paste-back", "--quiet"], "out=", "paste_back_dilation")  # another setting


def test_generate_controlnet_method_refuses_what_it_cannot_use(capsys, tmp_path, tiny_controlnet, tiny_adapter,
                                                               tiny_base, tiny_data):
    common = ["--base", str(tiny_base), "--data", str(tiny_data), "--out", str(tmp_path / "g")]
    _fails(capsys, ["generate", "--method", "controlnet", "--adapter", str(tiny_adapter), *common],
           "--adapter", "controlnet_config.json", "--method inpaint")
    _fails(capsys, ["generate", "--adapter", str(tiny_controlnet), *common], "--adapter", "adapter_config.json",
           "--method controlnet")
    _fails(capsys, ["generate", "--method", "controlnet", "--adapter", str(tiny_controlnet), *common,
                    "--max-window-scale", "2"], "--max-window-scale")
    _fails(capsys, ["generate", "--method", "controlnet", "--adapter", str(tiny_controlnet), *common,
                    "--types", "dent"], "dent", "crack")
    assert not (tmp_path / "g").exists()


def test_train_base_tiny_run(capsys, tmp_path):
    out = tmp_path / "base"
    argv = ["train-base", "--out", str(out), "--steps", "1", "--pool-size", "2", "--resolution", "32",
            "--channels", "16", "32", "--batch-size", "1", "--quiet"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["steps"] == 1
    assert "rendering surfaces" not in captured.err and "training" not in captured.err  # --quiet: no bars
    assert (Path(out) / "compact_inpaint.safetensors").is_file()


def test_demo_end_to_end_on_a_tiny_base(tiny_base, tmp_path, capsys):
    """The README's main job, shrunk: report + metrics with locality 0 and the appearance numbers per type."""
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--base", str(tiny_base), "--shots", "1", "--adapter-steps", "2",
            "--n-per-type", "1", "--steps", "2", "--show", "1", "--quiet"]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["outside_mask_max_abs_change"] == 0.0 and m["generated"] == len(m["per_type"]) >= 4
    for t, v in m["per_type"].items():
        assert v["outside_mask_max_abs_change"] == 0.0, t
        assert {"contrast_generated_mean", "grain_ratio_generated_median", "grain_ratio_real_heldout_median"} <= set(v)
    assert "grain_ratio" in (out / "report.html").read_text()


def test_train_adapter_skips_broken_samples_with_a_warning_and_a_count(capsys, tmp_path, tiny_base, tiny_data):
    import shutil

    import numpy as np
    from PIL import Image

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    empty = data / "ground_truth" / "crack" / "000_mask.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(empty)
    out = tmp_path / "a"
    code = main(["train-adapter", "--data", str(data), "--base", str(tiny_base), "--out", str(out), "--steps", "1",
                 "--rank", "2", "--batch-size", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert lines[0].startswith(f"warning: skipped [empty_mask] mask={empty}: ")
    assert lines[1].startswith("warning: 1 file(s) with problems skipped") and "crack 2" in lines[1]
    split = json.loads((out / "split.json").read_text())
    assert "test/crack/000" not in split["train"]["crack"] + split["held_out"]["crack"]


def test_train_adapter_refuses_a_type_left_with_no_usable_sample(capsys, tmp_path, tiny_base, tiny_data):
    import shutil

    import numpy as np
    from PIL import Image

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    for m in (data / "ground_truth" / "spot").iterdir():
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(m)
    out = tmp_path / "a"
    try:
        code = main(["train-adapter", "--data", str(data), "--base", str(tiny_base), "--out", str(out), "--steps", "1"])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("counterfactory train-adapter: error: dataset=") and "'spot'" in err
    assert not out.exists()
