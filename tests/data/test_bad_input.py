"""Bad input, one test each: readers raise one-line InputErrors, `data inspect` reports problems (exit 0),
`data split` / `synth` exit 2 with one line and no traceback, and nothing is half-written."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from counterfactory.cli.main import main
from counterfactory.data import open_dataset
from counterfactory.errors import InputError

from .helpers import make_magnetic_tile, make_mvtec


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str, *needles: str):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("counterfactory data: error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


# ---- dataset problems: each a function that breaks a fresh tiny MVTec category, returning (kind, file)


def _missing_mask(root):
    (root / "ground_truth" / "crack" / "001_mask.png").unlink()
    return "missing_mask", root / "test" / "crack" / "001.png"


def _mask_other_size(root):
    p = root / "ground_truth" / "crack" / "002_mask.png"
    Image.fromarray(np.full((16, 20), 255, np.uint8)).save(p)
    return "size_mismatch", p


def _empty_mask(root):
    p = root / "ground_truth" / "spot" / "000_mask.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(p)
    return "empty_mask", p


def _non_image_file(root):
    p = root / "test" / "crack" / "notes.txt"
    p.write_text("inspection notes")
    return "not_an_image", p


def _text_named_png(root):
    p = root / "test" / "good" / "000.png"
    p.write_text("this is not a png")
    return "unreadable", p


def _truncated_png(root):
    p = root / "test" / "spot" / "001.png"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return "unreadable", p


def _transparent_rgba(root):
    p = root / "test" / "good" / "001.png"
    rgba = np.full((32, 32, 4), 128, np.uint8)
    rgba[:4, :4, 3] = 0
    Image.fromarray(rgba).save(p)
    return "unreadable", p


def _orphan_mask(root):
    p = root / "ground_truth" / "crack" / "099_mask.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(p)
    return "orphan_mask", p


def _all_one_mask(root):
    p = root / "ground_truth" / "crack" / "003_mask.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(p)
    return "full_mask", p


def _noise_mask(root):
    p = root / "ground_truth" / "spot" / "002_mask.png"
    rng = np.random.default_rng(0)
    Image.fromarray(((rng.random((32, 32)) < 0.55) * 255).astype(np.uint8)).save(p)
    return "noise_mask", p


def _tiny_image(root):
    p = root / "train" / "good" / "002.png"
    Image.fromarray(np.full((1, 1, 3), 128, np.uint8)).save(p)
    return "too_small", p


PROBLEMS = [
    _missing_mask,
    _mask_other_size,
    _empty_mask,
    _non_image_file,
    _text_named_png,
    _truncated_png,
    _transparent_rgba,
    _orphan_mask,
    _all_one_mask,
    _noise_mask,
    _tiny_image,
]

# problems that leave a sample out (the others are stray files next to complete samples)
DROPS_A_SAMPLE = {"missing_mask", "size_mismatch", "empty_mask", "unreadable", "full_mask", "noise_mask", "too_small"}


@pytest.mark.parametrize("breaker", PROBLEMS, ids=lambda f: f.__name__.strip("_"))
def test_dataset_problem(tmp_path, capsys, breaker):
    root = make_mvtec(tmp_path / "cat")
    kind, bad = breaker(root)

    # a reader used for training raises one line naming the file
    with pytest.raises(InputError) as exc:
        open_dataset(root, verify=True)
    msg = str(exc.value)
    assert "\n" not in msg and str(bad) in msg

    # inspect reports it (and only it) and exits 0
    code, out, err = run_cli(capsys, "data", "inspect", str(root), "--json")
    assert code == 0 and err == ""
    report = json.loads(out)
    assert [(p["kind"], p["path"]) for p in report["problems"]] == [(kind, str(bad))]
    assert all("\n" not in p["message"] and str(bad) in p["message"] for p in report["problems"])
    code, out, _ = run_cli(capsys, "data", "inspect", str(root))
    assert code == 0 and f"[{kind}]" in out

    # split skips it: one warning naming the file, then a count; the split leaves the sample out
    split = tmp_path / "split.json"
    code, out, err = run_cli(capsys, "data", "split", str(root), "--out", str(split))
    assert code == 0 and split.exists(), err
    warnings = err.strip().splitlines()
    assert len(warnings) == 2 and str(bad) in warnings[0] and "Traceback" not in err
    assert warnings[1].startswith("warning: 1 file(s) with problems skipped")
    ids = [i for part in ("train", "held_out") for v in json.loads(split.read_text())[part].values() for i in v]
    full = open_dataset(make_mvtec(tmp_path / "clean"))
    assert len(ids) == len(full.samples) - (kind in DROPS_A_SAMPLE)


def test_split_fails_only_when_a_type_has_no_usable_sample(tmp_path, capsys):
    root = make_mvtec(tmp_path / "cat", n_per_type=4)
    for i in range(4):  # every spot mask empty; crack untouched
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "ground_truth" / "spot" / f"{i:03d}_mask.png")
    split = tmp_path / "split.json"
    code, _, err = run_cli(capsys, "data", "split", str(root), "--out", str(split))
    assert code == 2 and not split.exists()
    lines = err.strip().splitlines()
    assert sum(line.startswith("warning: skipped ") for line in lines) == 4
    assert lines[-1].startswith("counterfactory data: error: dataset=") and "'spot'" in lines[-1]
    assert "Traceback" not in err


def test_split_skips_a_few_broken_samples_among_many(tmp_path, capsys):
    """The real-data case in small: 4 empty masks and one unreadable file among 103 defects are skipped, counted."""
    root = make_mvtec(tmp_path / "cat", types=("crack",), n_per_type=103, size=16)
    for i in (5, 17, 40, 90):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    (root / "test" / "crack" / "060.png").write_text("not an image")
    split = tmp_path / "split.json"
    code, _, err = run_cli(capsys, "data", "split", str(root), "--out", str(split))
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 6 and "5 file(s) with problems skipped" in lines[-1] and "crack 98" in lines[-1]
    obj = json.loads(split.read_text())
    assert obj["counts"]["crack"]["train"] + obj["counts"]["crack"]["held_out"] == 98
    assert "test/crack/005" not in obj["train"]["crack"] + obj["held_out"]["crack"]


def test_truncated_png_fails_on_load_too(tmp_path):
    root = make_mvtec(tmp_path / "cat")
    _, bad = _truncated_png(root)
    ds = open_dataset(root, strict=True, verify=False)  # header-only check passes ...
    sample = next(s for s in ds.samples if s.image_path == bad)
    with pytest.raises(InputError, match="truncated"):  # ... and loading names the file
        sample.load_image()


def test_magnetic_tile_problems(tmp_path):
    root = make_magnetic_tile(tmp_path)
    (root / "MT_Crack" / "Imgs" / "exp1_num_7.png").unlink()  # defect image without mask
    noisy_empty = (
        np.random.default_rng(0).integers(0, 60, (24, 28)).astype(np.uint8)
    )  # noise only: empty after 0.5
    Image.fromarray(noisy_empty).save(root / "MT_Crack" / "Imgs" / "exp1_num_14.png")
    Image.fromarray(np.full((24, 28), 255, np.uint8)).save(root / "MT_Free" / "Imgs" / "exp1_num_7.png")
    ds = open_dataset(root, strict=False, verify=True)
    kinds = sorted(p.kind for p in ds.problems)
    assert kinds == ["empty_mask", "missing_mask", "nonempty_good_mask"]
    s = ds.summary()
    assert s["types"]["Crack"] == {"images": 3, "masks": 2}


def test_sixteen_bit_and_opaque_rgba_images_load_correctly(tmp_path, capsys):
    root = make_mvtec(tmp_path / "cat")
    g16 = (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
    Image.fromarray(g16).save(root / "test" / "good" / "000.png")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 1] = 200
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(root / "test" / "good" / "001.png")
    code, out, _ = run_cli(capsys, "data", "inspect", str(root), "--json")
    assert code == 0 and json.loads(out)["problems"] == []
    ds = open_dataset(root, verify=True)
    by = ds.by_id()
    img16 = by["test/good/000"].load_image()
    assert img16.shape == (3, 32, 32)
    assert np.allclose(img16[0].numpy(), g16 / 65535.0, atol=1e-6)  # scaled by 65535, not clipped to 8 bits
    img_rgba = by["test/good/001"].load_image()
    assert img_rgba.shape == (3, 32, 32) and abs(float(img_rgba[1].mean()) - 200 / 255) < 1e-6


def test_directory_that_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "nope"
    for argv in (
        ("data", "inspect", str(missing)),
        ("data", "split", str(missing), "--out", str(tmp_path / "s.json")),
    ):
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and out == ""
        _one_line_error(err, f"dataset={missing}", "an existing directory")
    with pytest.raises(InputError, match="an existing directory"):
        open_dataset(missing)
    assert not (tmp_path / "s.json").exists()


def test_unknown_layout(tmp_path, capsys):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "a.png").write_bytes(b"x")
    (tmp_path / "other").mkdir()
    code, out, err = run_cli(capsys, "data", "inspect", str(tmp_path), "--json")
    assert code == 2 and out == ""
    _one_line_error(err, f"dataset={tmp_path}", "MVTec-AD layout", "Magnetic Tile layout", "unknown layout")
    f = tmp_path / "file.txt"
    f.write_text("x")
    code, _, err = run_cli(capsys, "data", "inspect", str(f))
    assert code == 2
    _one_line_error(err, "a directory")


def test_unknown_defect_type_name(tmp_path, capsys):
    code, out, err = run_cli(capsys, "data", "synth", "--out", str(tmp_path / "o"), "--types", "crack,dent")
    assert code == 2
    _one_line_error(err, "types=", "dent", "crack, scratch, spot, chip")
    assert not (tmp_path / "o" / "surface").exists()
    ds = open_dataset(make_mvtec(tmp_path / "cat"))
    with pytest.raises(InputError, match="defect_type=dent: one of crack, spot, good"):
        ds.of_type("dent")


def test_bad_numbers_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse range: exit 2, one line naming the flag and the range
        main(["data", "synth", "--out", str(tmp_path), "--size", "4"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "counterfactory data synth: error: --size='4': an integer in [16, 8192]"
    root = make_mvtec(tmp_path / "cat", n_per_type=3)
    code, _, err = run_cli(
        capsys, "data", "split", str(root), "--out", str(tmp_path / "s.json"), "--shots", "3"
    )
    assert code == 2 and not (tmp_path / "s.json").exists()
    _one_line_error(err, "shots=3")
    with pytest.raises(SystemExit) as exc:  # argparse: not an int
        main(["data", "split", str(root), "--out", "x.json", "--shots", "many"])
    assert exc.value.code == 2


def test_real_entry_point_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "counterfactory.cli.main", "data", "inspect", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
