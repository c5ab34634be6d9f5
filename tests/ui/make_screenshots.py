"""Screenshots for docs/ui.md and the timings quoted there, taken in headless Chromium on the shipped base.

    python -m tests.ui.make_screenshots --data DATASET_DIR --out RUN_DIR [--reference-adapter DIR] [--train-steps 60]

Trains a small adapter from the app (the "train a small adapter" panel), paints a crack with the brush,
inserts a reference crop into a typed box, and writes docs/img/ui_*.png plus RUN_DIR/timings.json.
Not a test: it takes minutes on CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .browser import downloads, free_port, open_page, start_driver, stroke, upload, wait_for

DOCS = Path(__file__).resolve().parents[2] / "docs" / "img"


def shot(d, name: str, height: int | None = None):
    h = height or d.execute_script("return document.body.scrollHeight")
    d.set_window_size(1400, min(int(h) + 40, 2400))
    time.sleep(1)
    DOCS.mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(DOCS / name))


def main():
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from counterfactory.io.masks import bbox
    from counterfactory.ui.app import launch

    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="procedural category folder (counterfactory data synth)")
    p.add_argument("--out", required=True)
    p.add_argument("--reference-adapter", default=None)
    p.add_argument("--train-steps", type=int, default=60)
    args = p.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    port = free_port()
    t0 = time.time()
    app = launch(out=out / "app", port=port, reference_adapter=args.reference_adapter, block=False, quiet=True)
    timings["start_seconds"] = round(time.time() - t0, 1)
    d = start_driver(1400, 1500)
    try:
        open_page(d, f"http://127.0.0.1:{port}/")
        # ---- train a small adapter from the app
        header = [e for e in d.find_elements(By.XPATH, "//*[@id='train-accordion']//*[contains(text(), 'train a small adapter')]")
                  if e.is_displayed()]
        d.execute_script("arguments[0].click()", header[0])
        time.sleep(1)
        steps = d.find_element(By.ID, "train-accordion").find_elements(By.CSS_SELECTOR, "input[type=number]")[0]
        steps.send_keys(Keys.CONTROL, "a")
        steps.send_keys(str(args.train_steps), Keys.TAB)
        t0 = time.time()
        d.find_element(By.ID, "train-button").click()
        time.sleep(25)
        shot(d, "ui_train.png")
        wait_for(lambda: "Trained:" in d.find_element(By.ID, "train-accordion").text, 1500, "training")
        timings["train_seconds"] = round(time.time() - t0, 1)
        timings["train_steps"] = args.train_steps
        # ---- paint a crack
        good = sorted((data / "train" / "good").glob("*.png"))[0]
        upload(d, "defect-editor", good)
        stroke(d, "defect-editor", [(-70, -40), (-30, -15), (0, 5), (40, 30), (80, 45)])
        box = d.find_element(By.CSS_SELECTOR, "#defect-type input")
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys("crack")
        time.sleep(0.5)
        box.send_keys(Keys.ENTER)
        time.sleep(1)
        t0 = time.time()
        d.find_element(By.ID, "defect-generate").click()
        files = downloads(d, "defect-files", 300)
        timings["defect_seconds_click_to_result"] = round(time.time() - t0, 1)
        timings["defect_settings"] = json.loads(files["settings.json"])
        time.sleep(2)
        shot(d, "ui_defect.png")
        # ---- reference tab
        if args.reference_adapter:
            d.execute_script("window.scrollTo(0, 0)")
            d.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Reference')]").click()
            time.sleep(1)
            src = sorted((data / "test" / "crack").glob("*.png"))[0]
            m = np.asarray(Image.open(data / "ground_truth" / "crack" / f"{src.stem}_mask.png").convert("L")) > 127
            x0, y0, x1, y1 = bbox(m)
            ref = out / "reference_crop.png"
            Image.open(src).convert("RGB").crop((max(0, x0 - 4), max(0, y0 - 4), x1 + 4, y1 + 4)).save(ref)
            upload(d, "reference-editor", good)
            upload(d, "reference-crop", ref)
            w, h = x1 - x0 + 8, y1 - y0 + 8
            d.find_element(By.CSS_SELECTOR, "#reference-box textarea, #reference-box input").send_keys(
                f"60,60,{60 + min(w, 60)},{60 + min(h, 60)}")
            t0 = time.time()
            d.find_element(By.ID, "reference-generate").click()
            downloads(d, "reference-files", 300)
            timings["reference_seconds_click_to_result"] = round(time.time() - t0, 1)
            time.sleep(2)
            shot(d, "ui_reference.png")
    finally:
        (out / "timings.json").write_text(json.dumps(timings, indent=1))
        print(json.dumps(timings, indent=1))
        d.quit()
        app.close()


if __name__ == "__main__":
    main()
