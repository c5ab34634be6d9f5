"""The text tab's screenshot for docs/ui.md and its timing, in headless Chromium on the shipped text model.

    python -m tests.ui.make_text_screenshot --data ../shared/data/morphomnist --out RUN_DIR [--index 0]

Uploads a held-out Morpho-MNIST digit (test split, ``--index``), sets its class, keeps the measured source caption
and the suggested target, clicks *Edit*, and writes docs/img/ui_text.png plus RUN_DIR/text_timings.json.
Not a test: it starts the app and a browser.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from PIL import Image

from .browser import downloads, free_port, open_page, start_driver, wait_for
from .make_screenshots import shot


def main():
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from counterfactory.data.morphomnist import load_morphomnist, split_indices
    from counterfactory.ui.app import launch

    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="Morpho-MNIST folder")
    p.add_argument("--out", required=True)
    p.add_argument("--index", type=int, default=0, help="position in the test split")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_morphomnist(args.data)
    i = int(split_indices(len(data), "test")[args.index])
    Image.fromarray(data.images[i]).save(out / "digit.png")
    label = int(data.labels[i])
    port = free_port()
    t0 = time.time()
    app = launch(out=out / "app", port=port, block=False, quiet=True)
    timings = {"start_seconds": round(time.time() - t0, 1), "digit_index": i, "label": label}
    d = start_driver(1400, 1300)
    try:
        open_page(d, f"http://127.0.0.1:{port}/")
        d.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Text')]").click()
        wait_for(lambda: d.find_element(By.ID, "text-image").is_displayed(), 30, "the text tab")
        d.find_element(By.CSS_SELECTOR, "#text-image input[type=file]").send_keys(str((out / "digit.png").resolve()))
        box = d.find_element(By.CSS_SELECTOR, "#text-class input")
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(label))
        time.sleep(0.5)
        box.send_keys(Keys.ENTER)

        def value(elem_id):
            return d.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input").get_attribute("value")

        wait_for(lambda: value("text-source").endswith(("zero", "one", "two", "three", "four", "five", "six",
                                                          "seven", "eight", "nine")), 60, "the caption with the class")
        time.sleep(1)
        t0 = time.time()
        d.find_element(By.ID, "text-generate").click()
        files = downloads(d, "text-files", timeout=600)
        timings["edit_click_to_result_seconds"] = round(time.time() - t0, 1)
        timings["settings"] = json.loads(files["settings.json"])
        time.sleep(1)
        shot(d, "ui_text.png")
    finally:
        d.quit()
        app.close()
    (out / "text_timings.json").write_text(json.dumps(timings, indent=1))
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
