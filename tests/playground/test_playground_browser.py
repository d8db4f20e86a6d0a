"""The playground in a real headless Chromium against the real server: upload, submit through the
queue, progress, the comparison at the output's size, costs, snippets, errors next to their
field, and keys. With ``UPDATE_SCREENSHOTS=1`` the finished page is saved as docs/playground.png.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import ROOT, data_uri, encode, photo_crop
from tests.playground.conftest import KEY

WAIT_S = 60


def wait_for(browser, condition, timeout: float = WAIT_S, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(condition, message)


def element(browser, element_id: str):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id)


def text_of(browser, element_id: str) -> str:
    return browser.execute_script(f"return document.getElementById({element_id!r}).textContent")


def open_page(browser, url: str) -> None:
    browser.get(url)
    wait_for(browser, lambda b: "engine" in text_of(b, "deployment"), 30, "/info was not read")


def choose_image(browser, path: Path, size: tuple[int, int]) -> None:
    element(browser, "image").send_keys(str(path))
    wait_for(
        browser, lambda b: f"{size[0]}×{size[1]}" in text_of(b, "image-info"), 10, "no preview"
    )


def wait_result(browser) -> None:
    def done(b) -> bool:
        assert not text_of(b, "err-general"), text_of(b, "err-general")
        return b.execute_script(
            "const s = document.getElementById('result-section');"
            "return !s.hidden && document.getElementById('after').naturalWidth > 0"
        )

    wait_for(browser, done, WAIT_S, "no result")


def natural_size(browser, element_id: str) -> list[int]:
    return browser.execute_script(
        f"const i = document.getElementById({element_id!r});"
        "return [i.naturalWidth, i.naturalHeight]"
    )


def facts(browser) -> dict[str, str]:
    return browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#facts dd')]"
        ".map(d => [d.dataset.fact, d.textContent]))"
    )


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    photo_crop(200, 150).save(path)
    return path


def test_upscale_through_the_queue(browser, playground_server, photo, tmp_path) -> None:
    open_page(browser, f"{playground_server.url}/")  # a browser's Accept gets the page at /
    assert browser.title == "chrono-upscaler playground"
    assert element(browser, "loras").get_attribute("hidden") is not None  # no catalog in /info
    assert not element(browser, "key-section").is_displayed()  # no keys on this server
    choose_image(browser, photo, (200, 150))
    element(browser, "seed").send_keys("18446744073709551615")  # 2^64 - 1, exact
    element(browser, "output_format").send_keys("png")
    element(browser, "submit").click()
    wait_result(browser)

    assert natural_size(browser, "after") == [400, 300]  # input × factor 2
    assert natural_size(browser, "before") == [200, 150]
    # both shown in one box: the browser scales the input to the output's size
    boxes = browser.execute_script(
        "return ['after', 'before'].map(id => {"
        "const r = document.getElementById(id).getBoundingClientRect();"
        "return [r.width, r.height]})"
    )
    assert boxes[0] == boxes[1] == [400, 300]
    logs = text_of(browser, "logs")
    assert "queued" in logs and "completed" in logs
    assert re.search(r"tile \d+/\d+", logs), logs
    assert text_of(browser, "status") == "Completed."
    assert not element(browser, "cancel").is_displayed()
    assert element(browser, "submit").is_enabled()
    shown = facts(browser)
    assert shown["output"].startswith("400×300 px, image/png")
    assert shown["input"] == "200×150 px"
    assert shown["seed"] == "18446744073709551615"
    assert re.match(r"\d+\.\d\d s on the engine", shown["time"]), shown
    assert "of device time at $2.4/h" in shown["cost"]
    assert shown["fal-list-price"].startswith("$0.02 ")  # 400×300 ≤ 854×480
    download = element(browser, "download")
    assert download.get_attribute("href").startswith("data:image/png;base64,")
    assert download.get_attribute("download").endswith(".png")
    png = base64.b64decode(download.get_attribute("href").split(",", 1)[1])
    (tmp_path / "out.png").write_bytes(png)
    assert Image.open(tmp_path / "out.png").size == (400, 300)

    # the slider moves the split, from the keyboard too
    slider = element(browser, "compare-range")
    slider.click()
    from selenium.webdriver.common.keys import Keys

    slider.send_keys(Keys.HOME)
    position = "return document.getElementById('compare').style.getPropertyValue('--pos')"
    assert browser.execute_script(position) == "0%"
    for _ in range(5):
        slider.send_keys(Keys.PAGE_UP)  # back to 50%, for the screenshot
    assert browser.execute_script(position) == "50%"

    element(browser, "copy-curl").click()
    curl = text_of(browser, "snippet")
    sync_route = f"{playground_server.url}/fal-ai/chrono-edit-lora-gallery/upscaler"
    assert f"curl -s -X POST '{sync_route}'" in curl
    assert '"image_url": "IMAGE_URL"' in curl and "base64 -w0 'astronaut.png'" in curl
    assert '"seed": 18446744073709551615' in curl and "Authorization" not in curl
    assert len(curl) < 2000  # the data: URI is left out
    element(browser, "copy-python").click()
    python = text_of(browser, "snippet")
    assert '"image_url": fal_client.encode_file("astronaut.png")' in python
    assert '"seed": 18446744073709551615,' in python and '"sync_mode": True,' in python
    host = playground_server.url.removeprefix("http://")
    assert f'os.environ["FAL_QUEUE_RUN_HOST"] = "{host}/queue"' in python
    compile(python, "snippet.py", "exec")  # it is valid Python

    save_screenshot(browser, tmp_path)


def save_screenshot(browser, tmp_path: Path) -> None:
    """The whole finished page (docs/playground.png with UPDATE_SCREENSHOTS=1)."""
    browser.execute_script("window.scrollTo(0, 0); document.activeElement.blur()")
    size = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    data = base64.b64decode(shot["data"])
    path = tmp_path / "playground.png"
    path.write_bytes(data)
    assert Image.open(path).size[0] >= 800
    if os.environ.get("UPDATE_SCREENSHOTS"):  # 256 colours keep the committed file small
        Image.open(path).convert("RGB").quantize(256).save(
            ROOT / "docs" / "playground.png", optimize=True
        )


def test_errors_show_next_to_their_field(browser, playground_server, photo) -> None:
    open_page(browser, f"{playground_server.url}/playground")
    element(browser, "submit").click()  # no image yet: the page says so, sends nothing
    assert "Choose, drop or paste an image" in text_of(browser, "err-image_url")
    choose_image(browser, photo, (200, 150))
    # past the inputs' min/max, as a script or an old browser could send them
    browser.execute_script(
        "document.getElementById('num_inference_steps').value = '99';"
        "document.getElementById('upscale_factor').value = '9';"
    )
    element(browser, "submit").click()
    wait_for(browser, lambda b: text_of(b, "err-num_inference_steps"), 30, "no 422 shown")
    assert text_of(browser, "err-num_inference_steps") == "Input should be less than or equal to 50"
    assert text_of(browser, "err-upscale_factor") == "Input should be less than or equal to 4"
    for field in ("num_inference_steps", "upscale_factor"):
        assert element(browser, field).get_attribute("aria-invalid") == "true"
    assert element(browser, "guidance_scale").get_attribute("aria-invalid") is None
    assert not text_of(browser, "err-general")
    assert not element(browser, "result-section").is_displayed()
    # a seed that is not an integer: the server's message, next to the seed
    browser.execute_script(
        "document.getElementById('num_inference_steps').value = '30';"
        "document.getElementById('upscale_factor').value = '2';"
    )
    element(browser, "seed").send_keys("12.5")
    element(browser, "submit").click()
    wait_for(browser, lambda b: text_of(b, "err-seed"), 30, "no seed error")
    assert "integer" in text_of(browser, "err-seed")
    assert not text_of(browser, "err-num_inference_steps")


def test_keys_are_asked_for_and_used(browser, keyed_server, photo) -> None:
    open_page(browser, f"{keyed_server.url}/playground")
    wait_for(browser, lambda b: element(b, "key-section").is_displayed(), 10, "no key field")
    choose_image(browser, photo, (200, 150))
    browser.execute_script("document.getElementById('upscale_factor').value = '1.5'")
    element(browser, "submit").click()  # no key: asked for one, nothing sent
    assert "needs a key" in text_of(browser, "err-api_key")
    assert browser.switch_to.active_element == element(browser, "api-key")

    element(browser, "api-key").send_keys("wrong-key")
    element(browser, "submit").click()
    wait_for(browser, lambda b: "refused" in text_of(b, "err-api_key"), 30, "no 401 shown")

    element(browser, "api-key").clear()
    element(browser, "api-key").send_keys(KEY)
    element(browser, "remember-key").click()
    element(browser, "submit").click()
    wait_result(browser)
    assert natural_size(browser, "after") == [300, 225]  # 200×150 × 1.5
    assert not text_of(browser, "err-api_key")
    assert "cost" not in facts(browser)  # no hourly price on this server: time only
    # kept in this tab's sessionStorage only, and offered again on reload
    assert browser.execute_script("return sessionStorage.getItem('chrono-upscaler.api-key')") == KEY
    assert browser.execute_script("return localStorage.length") == 0
    element(browser, "copy-curl").click()
    curl = text_of(browser, "snippet")
    assert '-H "Authorization: Key $FAL_KEY"' in curl and KEY not in curl
    browser.refresh()
    wait_for(browser, lambda b: element(b, "key-section").is_displayed(), 10, "no key field")
    assert element(browser, "api-key").get_attribute("value") == KEY


def test_busy_queue_position_cancel_and_progress(browser, busy_server, photo) -> None:
    """429 with its Retry-After, the queue position while waiting, the page's Cancel button,
    then live tile progress once the worker is free."""
    submit_url = f"{busy_server.url}/queue/fal-ai/chrono-edit-lora-gallery/upscaler"
    # seconds of work even on the bf16 path: the page's own request must find no room
    slow = {"image_url": data_uri(encode(photo_crop(1280, 1280))), "sync_mode": True}
    before = busy_server.admitted_count()
    running = httpx.post(submit_url, json=slow, timeout=30).json()
    busy_server.wait_admitted(before + 1)  # it holds the only worker now
    waiting = httpx.post(submit_url, json=slow, timeout=30).json()
    assert waiting["queue_position"] == 0
    try:
        open_page(browser, f"{busy_server.url}/playground")
        browser.execute_script(
            "window.statuses = [];"
            "new MutationObserver(() => statuses.push(document.getElementById('status')"
            ".textContent)).observe(document.getElementById('status'),"
            "{childList: true, characterData: true, subtree: true})"
        )
        choose_image(browser, photo, (200, 150))
        element(browser, "submit").click()  # one runs, one waits: no room
        wait_for(browser, lambda b: text_of(b, "err-general"), 30, "no 429 shown")
        assert re.fullmatch(
            r"The server is busy: .* Try again in about \d+ s\.", text_of(browser, "err-general")
        ), text_of(browser, "err-general")

        assert httpx.put(waiting["cancel_url"], timeout=10).status_code == 202
        element(browser, "submit").click()
        wait_for(browser, lambda b: "next to run" in text_of(b, "status"), 30, "not queued")
        assert text_of(browser, "status") == "In the queue: next to run."
        assert element(browser, "cancel").is_displayed()
        element(browser, "cancel").click()
        wait_for(browser, lambda b: text_of(b, "err-general"), 30, "no cancellation shown")
        assert "cancelled" in text_of(browser, "err-general")
        assert text_of(browser, "status").startswith("Failed: The request was cancelled")
        assert not element(browser, "cancel").is_displayed()

        element(browser, "submit").click()
        wait_for(browser, lambda b: "next to run" in text_of(b, "status"), 30, "not queued")
    finally:
        httpx.put(running["cancel_url"], timeout=10)  # frees the worker for the page's job
    wait_result(browser)
    assert natural_size(browser, "after") == [400, 300]
    statuses = browser.execute_script("return statuses")
    running_lines = [s for s in statuses if s.startswith("Running: tile ")]
    assert running_lines, statuses
    done, total = map(int, running_lines[-1].removeprefix("Running: tile ").split("/"))
    assert 0 < done <= total and total > 1
    assert browser.execute_script("return document.getElementById('progress').value") == 1
