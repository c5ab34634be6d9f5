"""HtmlReport: one offline file, images embedded, stable API the demo relies on."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
import torch
from PIL import Image

from counterfactory.errors import InputError
from counterfactory.evaluation.report import HtmlReport


def _report():
    r = HtmlReport(title="T <&>")
    r.heading("Samples", level=2)
    r.paragraph("hello <b>\n\nsecond")
    img = torch.rand(3, 16, 20)
    mask = (torch.rand(1, 16, 20) > 0.5).float()
    pil = Image.new("RGB", (10, 10), (255, 0, 0))
    arr = np.zeros((12, 12), np.uint8)
    r.grid([[img, mask, pil, arr], [img[None], mask[0], None, np.ones((5, 5, 3), np.float32)]],
           col_titles=["a", "b", "c", "d"], row_titles=["r0", "r1"], cell_px=64)
    r.table([{"metric": "FD_compact", "value": 1.23456789, "n": 3}, {"metric": "x", "extra": None}])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    r.figure(fig, caption="cap")
    return r


def test_save_single_offline_file(tmp_path):
    path = _report().save(tmp_path / "sub" / "report.html")
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert "T &lt;&amp;&gt;" in text and "hello &lt;b&gt;" in text
    # no external resources: every src is a data URI, no <script>, no <link>
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) == 7 + 1
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in text and "<link" not in text and "http" not in text.replace("http-equiv", "")
    assert "1.235" in text and "–" in text  # floatfmt .4g, missing key
    # images decode and are upscaled to the cell size (longer side = 64)
    first = base64.b64decode(srcs[0].split(",", 1)[1])
    import io

    im = Image.open(io.BytesIO(first))
    assert max(im.size) == 64
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_nearest_upscale_keeps_pixels():
    r = HtmlReport()
    m = torch.zeros(1, 4, 4)
    m[0, 1, 2] = 1.0
    r.grid([[m]], col_titles=["mask"], cell_px=32)
    src = re.findall(r'base64,([^"]*)"', r.to_html())[0]
    import io

    arr = np.asarray(Image.open(io.BytesIO(base64.b64decode(src))))
    assert arr.shape == (32, 32)
    assert set(np.unique(arr)) == {0, 255}
    assert arr[8:16, 16:24].min() == 255 and arr[0:8].max() == 0


def test_bad_input_one_line_errors():
    r = HtmlReport()
    with pytest.raises(InputError):
        r.grid([[torch.rand(3, 4, 4)]], col_titles=["a", "b"])
    with pytest.raises(InputError):
        r.grid([[torch.rand(5, 4, 4)]], col_titles=["a"])
    with pytest.raises(InputError):
        r.grid([[torch.full((3, 4, 4), float("nan"))]], col_titles=["a"])
    with pytest.raises(InputError):
        r.table([{"a": 1.0}], floatfmt="zz")
    with pytest.raises(InputError):
        r.save("report.txt")
    with pytest.raises(InputError):
        r.heading("x", level=9)
