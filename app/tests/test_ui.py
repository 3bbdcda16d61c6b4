"""The upload page in headless Chromium (Debian's chromium + chromium-driver), against real uWSGI."""

from __future__ import annotations

import io
import shutil

import pytest
import requests
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from helpers import SAMPLES


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("apt-get install chromium chromium-driver (make setup does)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    # The driver path is given, so Selenium Manager never tries to download one.
    drv = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()


def upload(browser, base: str, path: str) -> None:
    browser.get(base + "/")
    WebDriverWait(browser, 20).until(ec.text_to_be_present_in_element((By.ID, "model"), "Model digits"))
    browser.find_element(By.ID, "image").send_keys(path)
    browser.find_element(By.ID, "submit").click()


def test_upload_shows_top_k_bars(browser, uwsgi_server, tmp_path):
    upload(browser, uwsgi_server, str(SAMPLES / "7.png"))
    WebDriverWait(browser, 20).until(ec.text_to_be_present_in_element((By.ID, "status"), "Best prediction"))
    assert browser.find_element(By.ID, "status").text == "Best prediction: 7"
    assert browser.find_element(By.ID, "model").text == "Model digits, version 1"
    rows = browser.find_elements(By.CSS_SELECTOR, "#results li")
    assert len(rows) == 3
    assert rows[0].find_element(By.CLASS_NAME, "label").text == "7"
    widths = [
        float(r.find_element(By.CSS_SELECTOR, ".bar span").get_attribute("style").split(":")[1].strip(" %;"))
        for r in rows
    ]
    assert widths == sorted(widths, reverse=True)
    assert widths[0] > 50
    browser.save_screenshot(str(tmp_path / "ui.png"))
    assert browser.find_element(By.ID, "answer-model").text == "digits version 1"
    # Straight to uWSGI here, so no nginx names a host.
    assert browser.find_element(By.ID, "answer-host").text == "this server"
    assert browser.find_element(By.ID, "answer-latency").text.endswith(" ms")


def test_screenshot_shows_what_the_api_answers(browser, uwsgi_server, tmp_path):
    """The page, as rendered: each bar's blue fill, measured in the screenshot's pixels, is the
    API's probability for the same image, and the labels and percentages are the API's."""
    image = SAMPLES / "3.png"
    api = requests.post(f"{uwsgi_server}/predict", files={"image": image.read_bytes()}, timeout=30).json()
    upload(browser, uwsgi_server, str(image))
    WebDriverWait(browser, 20).until(ec.text_to_be_present_in_element((By.ID, "status"), "Best prediction"))
    assert browser.find_element(By.ID, "preview").is_displayed()
    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    (tmp_path / "screenshot.png").write_bytes(browser.get_screenshot_as_png())
    scale = shot.width / browser.execute_script("return window.innerWidth")
    rows = browser.find_elements(By.CSS_SELECTOR, "#results li")
    assert [r.find_element(By.CLASS_NAME, "label").text for r in rows] == [p["label"] for p in api["predictions"]]
    for row, expected in zip(rows, api["predictions"], strict=True):
        assert row.find_element(By.CLASS_NAME, "prob").text == f"{expected['probability'] * 100:.1f}%"
        bar = row.find_element(By.CLASS_NAME, "bar").rect
        y = int((bar["y"] + bar["height"] / 2) * scale)
        x0, x1 = int(bar["x"] * scale), int((bar["x"] + bar["width"]) * scale)
        blue = sum(1 for x in range(x0, x1) if shot.getpixel((x, y)) == (0x2F, 0x6F, 0xDB))
        assert blue / (x1 - x0) == pytest.approx(expected["probability"], abs=0.03)


def test_pick_the_tabular_model_and_send_features(browser, uwsgi_server):
    browser.get(uwsgi_server + "/")
    WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "model-select").is_enabled())
    assert [o.text for o in Select(browser.find_element(By.ID, "model-select")).options] == ["digits", "iris"]
    Select(browser.find_element(By.ID, "model-select")).select_by_visible_text("iris")
    assert browser.find_element(By.ID, "model").text == "Model iris, version 2"
    assert not browser.find_element(By.ID, "image").is_displayed()
    for field, value in zip(
        browser.find_elements(By.CSS_SELECTOR, "#features input"), [6.3, 3.3, 6.0, 2.5], strict=True
    ):
        field.send_keys(str(value))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 20).until(ec.text_to_be_present_in_element((By.ID, "status"), "Best prediction"))
    assert browser.find_element(By.ID, "status").text == "Best prediction: virginica"
    assert browser.find_element(By.ID, "answer-model").text == "iris version 2"


def test_upload_of_a_non_image_shows_the_error(browser, uwsgi_server, tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not an image")
    upload(browser, uwsgi_server, str(bogus))
    WebDriverWait(browser, 20).until(ec.text_to_be_present_in_element((By.ID, "status"), "Error"))
    assert browser.find_element(By.ID, "status").text.startswith("Error 415:")
    assert browser.find_elements(By.CSS_SELECTOR, "#results li") == []


def test_a_text_model_gets_a_text_box_and_its_tags(browser, kinds_server):
    browser.get(kinds_server + "/")
    WebDriverWait(browser, 20).until(ec.text_to_be_present_in_element((By.ID, "model"), "Model tagger"))
    assert browser.find_element(By.ID, "image-field").is_displayed() is False
    browser.find_element(By.ID, "text").send_keys("Bob works for Acme in Rome")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 20).until(ec.text_to_be_present_in_element((By.ID, "status"), "Tags"))
    assert browser.find_element(By.ID, "status").text == "Tags: PER O O ORG O LOC"
    rows = [r.text.split() for r in browser.find_elements(By.CSS_SELECTOR, "#results li")]
    assert [r[:2] for r in rows] == [
        ["bob", "PER"],
        ["works", "O"],
        ["for", "O"],
        ["acme", "ORG"],
        ["in", "O"],
        ["rome", "LOC"],
    ]


def test_a_regression_model_shows_its_named_outputs(browser, kinds_server):
    browser.get(kinds_server + "/")
    WebDriverWait(browser, 20).until(ec.text_to_be_present_in_element((By.ID, "model"), "Model tagger"))
    Select(browser.find_element(By.ID, "model-select")).select_by_value("diabetes")
    values = {
        "age": 59,
        "sex": 2,
        "bmi": 32.1,
        "bp": 101,
        "s1": 157,
        "s2": 93.2,
        "s3": 38,
        "s4": 4,
        "s5": 4.86,
        "s6": 87,
    }
    for name, value in values.items():
        browser.find_element(By.CSS_SELECTOR, f'#features input[name="{name}"]').send_keys(str(value))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 20).until(ec.text_to_be_present_in_element((By.ID, "status"), "Outputs"))
    names = [r.text.split()[0] for r in browser.find_elements(By.CSS_SELECTOR, "#results li")]
    assert names == ["progression", "high_risk"]
