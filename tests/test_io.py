"""io/: images (decode rules, round trips, bad files), masks (binarize, boxes, windows, paste-back), manifest."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from counterfactory.errors import InputError
from counterfactory.io.images import (
    as_batch,
    from_model_space,
    load_image,
    quantize,
    read_array,
    save_image,
    to_model_space,
    to_pil,
    to_tensor,
    to_uint8,
)
from counterfactory.io.manifest import Manifest, atomic_path, atomic_write_json
from counterfactory.io.masks import (
    bbox,
    binarize,
    components,
    crop,
    dilate,
    group_windows,
    paste_back,
    read_mask,
    window_around,
)

# ------------------------------------------------------------------------------------------------ images


def test_8bit_png_round_trip_is_exact(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    t = load_image(tmp_path / "a.png")
    assert t.shape == (3, 17, 23) and t.dtype == torch.float32
    assert np.array_equal(to_uint8(t), arr)
    save_image(t, tmp_path / "b.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), arr)
    gray = load_image(tmp_path / "a.png", mode="L")
    assert gray.shape == (1, 17, 23)


def test_uint8_arrays_and_tensors_are_saved_unchanged(tmp_path):
    # regression: to_uint8 used to treat uint8 0..255 as [0,1] and saturate everything above 1
    arr = (np.arange(8 * 8 * 3) % 256).astype(np.uint8).reshape(8, 8, 3)
    assert np.array_equal(to_uint8(arr), arr)
    assert np.array_equal(to_uint8(torch.from_numpy(arr.transpose(2, 0, 1).copy())), arr)
    save_image(arr, tmp_path / "u8.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "u8.png")), arr)
    save_image(arr[..., 0], tmp_path / "u8g.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "u8g.png")), arr[..., 0])


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    g16 = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    expected = g16 / 65535.0
    assert np.allclose(read_array(tmp_path / "g16.png", mode="L"), expected, atol=1e-6)
    rgb = read_array(tmp_path / "g16.png")
    assert rgb.shape == (30, 40, 3) and np.allclose(rgb[..., 1], expected, atol=1e-6)
    dark = np.full((4, 4), 200, np.uint16)  # a dark 16-bit image stays dark
    Image.fromarray(dark).save(tmp_path / "dark.png")
    assert np.allclose(read_array(tmp_path / "dark.png", "L"), 200 / 65535)
    # regression: PIL images in memory follow the same rule (used to be clipped to 8 bits)
    with Image.open(tmp_path / "g16.png") as im:
        im.load()
        assert np.allclose(to_tensor(im)[0].numpy(), expected, atol=1e-6)
        assert np.allclose(as_batch(im, mode="L")[0, 0].numpy(), expected, atol=1e-6)


def test_rgba_opaque_loads_transparent_raises(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    assert np.allclose(read_array(tmp_path / "opaque.png")[..., 0], 200 / 255)
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    with pytest.raises(InputError, match=r"image=.*clear.png: an image without transparency"):
        read_array(tmp_path / "clear.png")
    assert read_array(tmp_path / "clear.png", alpha="drop").shape == (8, 8, 3)
    la = np.zeros((8, 8, 2), np.uint8)
    la[..., 1] = 255
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert read_array(tmp_path / "la.png", "L").shape == (8, 8)


def test_bad_files_raise_one_line_naming_the_file(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    cases = {
        "trunc.png": "truncated or corrupt",
        "text.png": "not a readable image",
        "missing.png": "an existing image file",
    }
    for name, why in cases.items():
        with pytest.raises(InputError) as exc:
            read_array(tmp_path / name)
        msg = str(exc.value)
        assert msg.startswith(f"image={tmp_path / name}: ") and why in msg and "\n" not in msg
    with pytest.raises(InputError, match="mode=CMYK"):
        read_array(tmp_path / "ok.png", mode="CMYK")


def test_exif_orientation_is_applied(tmp_path):
    im = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert read_array(tmp_path / "rot.jpg").shape == (20, 10, 3)


def test_save_image_is_atomic_and_readable_by_others(tmp_path):
    p = save_image(torch.rand(3, 8, 8), tmp_path / "sub" / "x.png")
    assert p.is_file() and [q.name for q in p.parent.iterdir()] == ["x.png"]
    # regression: files written through a mkstemp temp file were left 0600
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
    with pytest.raises(InputError, match="path="):
        save_image(torch.rand(3, 8, 8), tmp_path / "x.unknown")
    assert not (tmp_path / "x.unknown").exists()


def test_tensor_helpers():
    x = torch.rand(2, 3, 4, 4)
    assert torch.allclose(from_model_space(to_model_space(x)), x, atol=1e-6)
    q = quantize(x)
    assert torch.equal(q, torch.round(q * 255) / 255)
    assert to_pil(torch.rand(1, 4, 4)).mode == "L" and to_pil(torch.rand(3, 4, 4)).mode == "RGB"
    assert as_batch([torch.rand(3, 4, 4), torch.rand(3, 4, 4)]).shape == (2, 3, 4, 4)
    with pytest.raises(InputError, match=r"image range"):
        as_batch(torch.rand(3, 4, 4) * 2 - 1)
    with pytest.raises(InputError, match="one size"):
        as_batch([torch.rand(3, 4, 4), torch.rand(3, 5, 5)])
    with pytest.raises(InputError, match="non-empty list"):
        as_batch([])
    nan = torch.rand(3, 4, 4)
    nan[0, 0, 0] = float("nan")
    with pytest.raises(InputError):
        as_batch(nan)


# ------------------------------------------------------------------------------------------------- masks


def test_binarize_rules():
    noisy = np.array([[0, 30, 127, 128, 200, 255]], np.uint8)  # Magnetic Tile style 0..255 noise
    assert binarize(noisy).tolist() == [[0, 0, 0, 1, 1, 1]]
    assert binarize(torch.from_numpy(noisy)).tolist() == [[0, 0, 0, 1, 1, 1]]
    # regression: uint8 {0,1} masks were emptied by the numpy path (and kept by the torch path)
    u01 = np.array([[0, 1, 1]], np.uint8)
    assert binarize(u01).tolist() == [[0, 1, 1]] and binarize(torch.from_numpy(u01)).tolist() == [[0, 1, 1]]
    assert binarize(np.array([[0.2, 0.7]], np.float32)).tolist() == [[0, 1]]
    assert binarize(np.array([[False, True]])).tolist() == [[0, 1]]
    assert binarize(torch.zeros(0)).numel() == 0
    for bad in (0.0, 1.5, -1):
        with pytest.raises(InputError, match="threshold="):
            binarize(noisy, bad)


def test_read_mask_binarizes_noisy_and_colour_masks(tmp_path):
    m = np.random.default_rng(0).integers(0, 60, (10, 12)).astype(np.uint8)
    m[2:5, 3:7] = 250
    Image.fromarray(m).save(tmp_path / "m.png")
    r = read_mask(tmp_path / "m.png")
    assert r.dtype == np.float32 and r.sum() == 12 and r[2:5, 3:7].all()
    Image.fromarray(np.stack([m] * 3, axis=2)).save(tmp_path / "rgb.png")
    assert np.array_equal(read_mask(tmp_path / "rgb.png"), r)


def test_bbox_dilate_components():
    m = np.zeros((10, 10), np.float32)
    m[2:4, 3:6] = 1
    m[8, 8] = 1
    assert bbox(m) == (3, 2, 9, 9)
    assert bbox(np.zeros((4, 4))) is None
    assert bbox(torch.from_numpy(m)[None]) == (3, 2, 9, 9)
    comps = components(m)
    assert [c.sum() for c in comps] == [6, 1]
    d = dilate(torch.from_numpy(m)[None], 1)
    assert d.shape == (1, 10, 10) and d.sum() > m.sum() and torch.all(d >= torch.from_numpy(m))
    assert torch.equal(dilate(torch.from_numpy(m), 0), torch.from_numpy(m))


def test_windows_stay_inside_the_image():
    for box, hw in [((0, 0, 4, 4), (64, 64)), ((60, 50, 64, 64), (64, 64)), ((10, 10, 20, 30), (40, 100))]:
        win = window_around(box, hw, margin=0.5, min_size=32)
        x0, y0, x1, y1 = win.box
        assert 0 <= x0 < x1 <= hw[1] and 0 <= y0 < y1 <= hw[0]
        assert x0 <= box[0] and y0 <= box[1] and x1 >= box[2] and y1 >= box[3]
    m = np.zeros((64, 64), np.float32)
    m[5:8, 5:8] = 1
    m[9:12, 9:12] = 1  # near each other: one window
    m[50:55, 50:55] = 1  # far: its own window
    assert len(group_windows(m, (64, 64), margin=0.5, min_size=16)) == 2


def test_paste_back_is_bit_identical_outside_the_mask():
    orig = torch.rand(3, 16, 16)
    patch = torch.rand(3, 8, 8)
    mask = torch.zeros(1, 8, 8)
    mask[:, 2:5, 2:5] = 1
    out = paste_back(orig, patch, mask, box=(4, 4, 12, 12))
    changed = torch.zeros(16, 16, dtype=torch.bool)
    changed[6:9, 6:9] = True
    assert torch.equal(out[:, ~changed], orig[:, ~changed])
    assert torch.equal(out[:, 6:9, 6:9], patch[:, 2:5, 2:5])
    assert crop(out, (4, 4, 12, 12)).shape == (3, 8, 8)
    assert torch.equal(crop(out, (4, 4, 12, 12))[:, 2:5, 2:5], patch[:, 2:5, 2:5])


# ---------------------------------------------------------------------------------------------- manifest


def test_atomic_path_removes_the_temp_file_on_error(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_manifest_append_resume_and_torn_line(tmp_path):
    man = Manifest(tmp_path / "m" / "manifest.jsonl")
    assert man.read() == [] and man.done() == set()
    man.append({"id": "a", "v": 1})
    man.append({"id": 2, "v": 2})
    assert man.done() == {"a", "2"}
    with man.path.open("a") as f:  # a writer killed mid-line
        f.write('{"id": "c", "v"')
    assert [r["id"] for r in man.read()] == ["a", 2]
    man.append({"id": "d"})
    assert [r["id"] for r in man.read()] == ["a", 2, "d"]
    assert man.path.read_text().count("\n") == 3
    with pytest.raises(KeyError):
        man.append({"v": 3})


def test_to_rgb_and_to_gray_round_trip_and_refuse_other_channel_counts():
    from counterfactory.io.images import to_gray, to_rgb

    gray = torch.rand(2, 1, 4, 5, generator=torch.Generator().manual_seed(0))
    rgb = to_rgb(gray)
    assert rgb.shape == (2, 3, 4, 5) and all(torch.equal(rgb[:, c], gray[:, 0]) for c in range(3))
    assert to_rgb(gray[0]).shape == (3, 4, 5)
    torch.testing.assert_close(to_gray(rgb), gray)
    colour = torch.rand(3, 4, 5)
    assert torch.equal(to_rgb(colour), colour)
    torch.testing.assert_close(to_gray(colour), colour.mean(0, keepdim=True))
    with pytest.raises(InputError, match="images="):
        to_rgb(torch.rand(2, 4, 5, 6))


def test_border_band_is_the_edge_band_and_the_image_border_is_no_edge():
    from counterfactory.io.masks import border_band

    m = torch.zeros(2, 1, 20, 20)
    m[0, :, 5:15, 4:16] = 1  # inside the image: a ring of width 2
    m[1, :, 0:10, 0:10] = 1  # touching the top-left image corner: band only along the right and bottom edges
    band = border_band(m, 2)
    assert band.dtype == m.dtype and band.shape == m.shape
    assert band[0].sum() == 10 * 12 - 6 * 8 and torch.equal(band[0, 0, 7:13, 6:14], torch.zeros(6, 8))
    assert band[1].sum() == 10 * 10 - 8 * 8 and band[1, 0, 0, 0] == 0 and band[1, 0, 9, 9] == 1
    assert torch.equal(border_band(m, 50), m) and border_band(m, 0).sum() == 0
