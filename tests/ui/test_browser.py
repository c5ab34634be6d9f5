"""The web app in a real browser: headless Chromium driven by selenium through chromedriver.

Start the app on a free local port, upload an image, paint a mask stroke with the mouse, generate, download
the result through the app's file output and compare it with the input outside the painted mask. Skips,
saying why, only where Chromium, chromedriver or selenium is not installed (``.ci/run`` installs them).
"""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from counterfactory.ui import logic

from .browser import (
    browser_paths,
    downloads,
    free_port,
    open_page,
    page_text,
    start_driver,
    stroke,
    upload,
    wait_for,
)
from .conftest import surface

pytest.importorskip("gradio", reason="the web app needs gradio: pip install -e '.[ui]'")
pytest.importorskip("selenium", reason="the browser tests need selenium: pip install -e '.[ui]'")
_chrome, _driver = browser_paths()
pytestmark = pytest.mark.skipif(
    _chrome is None or _driver is None,
    reason="no Chromium/chromedriver on PATH (apt-get install chromium chromium-driver; .ci/run does this)")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_base, tiny_adapter, ui_ref_adapter):
    import tqdm
    import tqdm.auto

    from counterfactory.ui.app import launch

    before = os.environ.get("GRADIO_TEMP_DIR")
    auto_tqdm = tqdm.auto.tqdm
    out = tmp_path_factory.mktemp("ui_out")
    port = free_port()
    app = launch(out=out, port=port, base=str(tiny_base), adapter=str(tiny_adapter),
                 reference_adapter=str(ui_ref_adapter), block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/", out
    app.close()
    # gradio's progress tracking patches tqdm process-wide; the other tests get tqdm back as it was
    for name in ("__init__", "update", "close", "__exit__", "__iter__"):
        orig = f"__{name.strip('_')}__orig__"
        if hasattr(tqdm.tqdm, orig):
            setattr(tqdm.tqdm, name, getattr(tqdm.tqdm, orig))
    tqdm.auto.tqdm = auto_tqdm
    if before is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = before


@pytest.fixture(scope="module")
def driver():
    d = start_driver()
    yield d
    d.quit()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("ui_images")
    Image.fromarray(logic.to_u8(surface(96, 128))).save(d / "surface.png")
    Image.fromarray(logic.to_u8(surface(24, 24, seed=3) * 0.3)).save(d / "reference.png")
    return d


def _png(data: bytes, mode: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert(mode))


def test_paint_a_mask_generate_and_download(server, driver, images):
    url, out = server
    open_page(driver, url)
    upload(driver, "defect-editor", images / "surface.png")
    stroke(driver, "defect-editor", [(-60, 0), (-30, 5), (0, 8), (30, 8)])
    driver.find_element("id", "defect-generate").click()
    files = downloads(driver, "defect-files")
    assert sorted(files) == ["mask.png", "result_seed0.png", "settings.json"]

    src = np.asarray(Image.open(images / "surface.png").convert("RGB"))
    result = _png(files["result_seed0.png"], "RGB")
    mask = _png(files["mask.png"], "L") > 127
    assert result.shape == src.shape and mask.shape == src.shape[:2]
    # the mask is the stroke: a band left of and below the image centre (48, 64), nowhere else
    ys, xs = np.nonzero(mask)
    assert 150 < mask.sum() < 3000, mask.sum()
    assert 30 < ys.min() and ys.max() < 75 and 25 < xs.min() and xs.max() < 105, (ys.min(), ys.max(), xs.min(), xs.max())
    np.testing.assert_array_equal(result[~mask], src[~mask])  # outside the painted mask: the input, bit for bit
    assert np.abs(result[mask].astype(int) - src[mask]).mean() > 1  # inside: repainted
    settings = json.loads(files["settings.json"])
    assert settings["defect_type"] == "crack" and settings["seeds"] == [0] and settings["mask_pixels"] == int(mask.sum())
    # the page shows the three views
    for view in ("defect-input", "defect-result", "defect-diff"):
        assert driver.find_elements("css selector", f"#{view} img"), view
    assert "Done in" in driver.find_element("id", "defect-status").text


def test_no_mask_shows_the_message(server, driver, images):
    url, _ = server
    open_page(driver, url)
    upload(driver, "defect-editor", images / "surface.png")
    driver.find_element("id", "defect-generate").click()
    text = wait_for(lambda: "mask=empty" in page_text(driver) and page_text(driver), 60, "the error message")
    assert "a drawn region: paint over the image" in text
    assert "Traceback" not in text


def test_reference_box_insert_and_download(server, driver, images):
    from selenium.webdriver.common.by import By

    url, _ = server
    open_page(driver, url)
    driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Reference')]").click()
    wait_for(lambda: driver.find_element(By.ID, "reference-editor").is_displayed(), 30, "the reference tab")
    upload(driver, "reference-editor", images / "surface.png")
    upload(driver, "reference-crop", images / "reference.png")
    box = driver.find_element(By.CSS_SELECTOR, "#reference-box textarea, #reference-box input")
    box.send_keys("40,30,72,62")
    driver.find_element(By.ID, "reference-generate").click()
    files = downloads(driver, "reference-files")
    src = np.asarray(Image.open(images / "surface.png").convert("RGB"))
    result = _png(files["result_seed0.png"], "RGB")
    inside = np.zeros(src.shape[:2], bool)
    inside[30:62, 40:72] = True
    np.testing.assert_array_equal(result[~inside], src[~inside])
    assert not np.array_equal(result[inside], src[inside])
    assert json.loads(files["settings.json"])["box"] == [40, 30, 72, 62]


def test_text_tab_captions_the_digit_edits_and_downloads(server, driver, tmp_path):
    """Upload a thin stroke: the measured caption fills the source box, the suggested target swaps one word;
    Edit shows the attention map and downloads the edited digit and the settings (shipped text model)."""
    from selenium.webdriver.common.by import By

    from tests.editing.conftest import stroke_digits

    url, _ = server
    Image.fromarray(stroke_digits(1, seed=3)[0]).save(tmp_path / "digit.png")
    open_page(driver, url)
    driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Text')]").click()
    wait_for(lambda: driver.find_element(By.ID, "text-image").is_displayed(), 30, "the text tab")
    driver.find_element(By.CSS_SELECTOR, "#text-image input[type=file]").send_keys(str(tmp_path / "digit.png"))

    def box(elem_id):
        return driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input")

    source = wait_for(lambda: box("text-source").get_attribute("value"), 60, "the measured caption")
    expected = logic.source_caption(logic.text_digit(Image.open(tmp_path / "digit.png")))
    assert source == expected
    target = wait_for(lambda: box("text-target").get_attribute("value"), 30, "the suggested target")
    assert target == logic.suggest_target(source) and target != source
    driver.find_element(By.ID, "text-generate").click()
    files = downloads(driver, "text-files")
    assert {"edited.png", "attention_overlay.png", "attention.png", "report.html", "settings.json"} <= set(files)
    settings = json.loads(files["settings.json"])
    assert settings["source"] == source and settings["target"] == target and settings["local_blend"] is True
    assert _png(files["edited.png"], "L").shape == (28, 28)
    assert "<del>" in driver.find_element(By.ID, "text-diff").get_attribute("innerHTML")
    assert driver.find_element(By.CSS_SELECTOR, "#text-attention img").get_attribute("src")


def test_server_serves_only_what_it_made(server):
    url, out = server
    for path in ("/etc/passwd", str(out / "runs"), str(next(out.glob("runs/*/settings.json"), out))):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10)
        assert err.value.code in (403, 404), (path, err.value.code)
    made = {p.relative_to(out).parts[0] for p in out.rglob("*") if p.is_file()}
    assert made <= {"runs", "cache"}, made
