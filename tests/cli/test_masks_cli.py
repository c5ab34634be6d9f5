import hashlib
import json

import numpy as np
from PIL import Image

from counterfactory.cli.main import main


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*_mask.png"))}


def test_masks_sample_writes_placed_masks_deterministically_and_resumes(tmp_path, tiny_data, capsys):
    split = tmp_path / "split.json"
    assert main(["data", "split", str(tiny_data), "--out", str(split)]) == 0
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["masks", "sample", "--data", str(tiny_data), "--split", str(split), "--out", str(out),
                     "--n", "3", "--quiet"]) == 0
        outs.append(out)
    assert _digest(outs[0]) == _digest(outs[1]) and len(_digest(outs[0])) == 6
    records = [json.loads(line) for line in (outs[0] / "manifest.jsonl").read_text().splitlines()]
    for r in records:
        m = np.array(Image.open(outs[0] / r["mask"]))
        bg = Image.open(r["source_image"])
        assert m.shape == (bg.height, bg.width) and m.max() == 255
        assert r["placement"] == "learned"
    # a rerun finds everything done and writes nothing new
    (outs[0] / "ground_truth" / "crack" / "crack_00000_mask.png").unlink()
    assert main(["masks", "sample", "--data", str(tiny_data), "--split", str(split), "--out", str(outs[0]),
                 "--n", "3", "--quiet"]) == 0
    assert not (outs[0] / "ground_truth" / "crack" / "crack_00000_mask.png").exists()


def test_masks_sample_bad_type_is_one_line(tmp_path, tiny_data, capsys):
    split = tmp_path / "split.json"
    main(["data", "split", str(tiny_data), "--out", str(split)])
    capsys.readouterr()
    rc = main(["masks", "sample", "--data", str(tiny_data), "--split", str(split), "--out", str(tmp_path / "o"),
               "--types", "dent"])
    err = capsys.readouterr().err
    assert rc == 2 and "--types" in err and "dent" in err and len(err.strip().splitlines()) == 1


def test_masks_sample_draws_the_masks_generate_places(tmp_path, tiny_base, tiny_adapter, tiny_data):
    split = str(tiny_adapter / "split.json")
    assert main(["masks", "sample", "--data", str(tiny_data), "--split", split, "--out", str(tmp_path / "m"),
                 "--n", "2", "--quiet"]) == 0
    assert main(["generate", "--adapter", str(tiny_adapter), "--base", str(tiny_base), "--data", str(tiny_data),
                 "--out", str(tmp_path / "g"), "--n", "2", "--num-inference-steps", "1", "--quiet"]) == 0
    sampled, generated = _digest(tmp_path / "m"), _digest(tmp_path / "g")
    assert sampled == generated and len(sampled) == 4
