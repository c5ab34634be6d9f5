"""Driving the app in headless Chromium with selenium (Debian's ``chromium`` + ``chromium-driver``)."""

from __future__ import annotations

import shutil
import socket
import time
import urllib.request
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def browser_paths() -> tuple[str | None, str | None]:
    chrome = next((shutil.which(n) for n in BROWSERS if shutil.which(n)), None)
    return chrome, shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_driver(width: int = 1400, height: int = 1600):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chrome, driver = browser_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={width},{height}",
              "--force-device-scale-factor=1"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


def wait_for(fn, timeout: float = 120, what: str = "condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = fn()
        if v:
            return v
        time.sleep(0.25)
    raise TimeoutError(f"waited {timeout} s for {what}")


def open_page(d, url: str):
    from selenium.webdriver.common.by import By

    d.get(url)
    wait_for(lambda: d.find_elements(By.ID, "defect-generate"), 60, "the page")


def upload(d, elem_id: str, path: str | Path):
    from selenium.webdriver.common.by import By

    root = d.find_element(By.ID, elem_id)
    root.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(path))
    wait_for(lambda: root.find_elements(By.TAG_NAME, "canvas"), 30, f"{elem_id} canvas")
    time.sleep(1.5)  # the editor fits the image to the canvas


def stroke(d, elem_id: str, points: list[tuple[int, int]]):
    """Press the mouse at the first point (CSS px from the canvas centre) and drag through the others."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = d.find_element(By.ID, elem_id).find_elements(By.TAG_NAME, "canvas")[-1]
    chain = ActionChains(d).move_to_element_with_offset(canvas, *points[0]).click_and_hold()
    prev = points[0]
    for p in points[1:]:
        chain = chain.move_by_offset(p[0] - prev[0], p[1] - prev[1])
        prev = p
    chain.release().perform()
    time.sleep(0.5)


def downloads(d, elem_id: str, timeout: float = 120) -> dict[str, bytes]:
    """Wait for the file output to list its links, then fetch each one over HTTP as the browser would."""
    from selenium.webdriver.common.by import By

    links = wait_for(lambda: d.find_elements(By.CSS_SELECTOR, f"#{elem_id} a[href]"), timeout, f"{elem_id} links")
    out = {}
    for a in links:
        href = a.get_attribute("href")
        with urllib.request.urlopen(href, timeout=30) as r:
            out[href.rsplit("/", 1)[-1]] = r.read()
    return out


def page_text(d) -> str:
    from selenium.webdriver.common.by import By

    return d.find_element(By.TAG_NAME, "body").text
