"""The web demo in a real headless browser: the system's Chromium driven by Playwright."""

import io
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from camodet import Predictor

from ..conftest import real_samples_dir

CHROMIUM = os.environ.get("CAMODET_CHROMIUM", "/usr/bin/chromium")
# No network, no GPU, nothing in the background: the page talks to the local server only.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOT = os.environ.get("CAMODET_APP_SCREENSHOT", "/tmp/app_shot.png")  # outside the repository


def _missing() -> str | None:
    for module, extra in (("gradio", "camodet[app]"), ("playwright", "playwright")):
        try:
            __import__(module)
        except ImportError:
            return f"needs {module}: pip install '{extra}'"
    if not shutil.which(CHROMIUM):
        return f"needs Chromium at {CHROMIUM} (apt-get install chromium, or set CAMODET_CHROMIUM)"
    if real_samples_dir() is None:
        return "needs ../shared/data/real_camo_samples"
    return None


def test_app_errors_are_one_line(tmp_path, capsys):
    from camodet.cli import main

    assert main(["app", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth: no such checkpoint or export folder" in capsys.readouterr().err


def test_a_session_keeps_one_cutout_folder_and_removes_it(tiny_checkpoint, tmp_path):
    """Photo after photo, a visitor's cut-outs go to one folder (the app used to leave one temp
    folder per uploaded photo); clearing the photo or leaving removes it. The app reads the
    uploaded file as `camodet predict` does (an RGBA photo's transparent part is black)."""
    from camodet.serving.app import end_session, rethreshold, show_photo

    predictor = Predictor.load(str(tiny_checkpoint), device="cpu")
    rgba = np.random.default_rng(3).integers(0, 256, (30, 44, 4), dtype=np.uint8)
    rgba[:, :10, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "photo.png")
    root = tmp_path / "app"
    root.mkdir()
    state, mask, *_ = show_photo(predictor, str(root), str(tmp_path / "photo.png"), 0.5, None)
    np.testing.assert_array_equal(mask > 0, predictor.predict(str(tmp_path / "photo.png")) >= 0.5)
    for threshold in (0.3, 0.7):
        state, *_ = show_photo(predictor, str(root), str(tmp_path / "photo.png"), threshold, state)
        assert rethreshold(state, threshold)[3] == os.path.join(state[2], "cutout.png")
    assert os.listdir(root) == [os.path.basename(state[2])]
    assert show_photo(predictor, str(root), None, 0.5, state)[0] is None  # cleared: folder gone
    assert os.listdir(root) == []
    state = show_photo(predictor, str(root), str(tmp_path / "photo.png"), 0.5, None)[0]
    end_session(state)  # the visitor left
    assert os.listdir(root) == []


@pytest.mark.slow
@pytest.mark.skipif(_missing() is not None, reason=_missing() or "")
def test_upload_a_photo_and_get_mask_overlay_and_cutout(tiny_checkpoint, capsys):
    from playwright.sync_api import sync_playwright

    from camodet.serving.app import launch

    predictor = Predictor.load(str(tiny_checkpoint), device="cpu")
    demo, url = launch(predictor, "tiny-cod", port=_free_port(), block=False)
    assert f"at {url}" in capsys.readouterr().out and url.startswith("http://127.0.0.1:")
    photo = os.path.join(real_samples_dir(), "Image", "camourflage_00012.jpg")
    width, height = Image.open(photo).size
    start = time.time()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="domcontentloaded")
            page.locator("#photo input[type=file]").set_input_files(photo)
            outputs = {}
            for name in ("mask", "overlay", "cutout"):
                img = page.locator(f"#{name} img")
                img.wait_for(state="visible", timeout=30_000)
                outputs[name] = fetch(page, img.get_attribute("src"))
            assert {im.size for im in outputs.values()} == {(width, height)}
            assert outputs["cutout"].mode == "RGBA"
            prob = predictor.predict(photo)
            mask = np.asarray(outputs["mask"].convert("L")) > 127
            np.testing.assert_array_equal(mask, prob >= 0.5)  # what the model says, at 0.5
            link = page.locator("#download a").first
            link.wait_for(timeout=30_000)
            download = fetch(page, link.get_attribute("href"))
            assert download.mode == "RGBA" and download.size == (width, height)
            # the slider re-thresholds the same probabilities
            old = page.locator("#mask img").get_attribute("src")
            number = page.locator("#threshold input[type=number]")
            number.fill("0.3")
            number.press("Enter")
            page.wait_for_function(f"document.querySelector('#mask img').src !== {old!r}", timeout=30_000)
            lower = np.asarray(fetch(page, page.locator("#mask img").get_attribute("src")).convert("L")) > 127
            np.testing.assert_array_equal(lower, prob >= 0.3)
            page.screenshot(path=SHOT, full_page=True)
            browser.close()
    finally:
        demo.close()
    assert time.time() - start < 60


def fetch(page, src: str) -> Image.Image:
    """An image the page shows, fetched as the page would (same origin, same session)."""
    url = src if src.startswith("http") else page.url.rstrip("/") + "/" + src.lstrip("/")
    response = page.request.get(url)
    assert response.ok, src
    return Image.open(io.BytesIO(response.body()))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
