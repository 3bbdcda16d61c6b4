"""The upload page in headless Chromium (Debian's chromium + chromium-driver), against real uWSGI."""

from __future__ import annotations

import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from conftest import SAMPLES


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


def test_upload_of_a_non_image_shows_the_error(browser, uwsgi_server, tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not an image")
    upload(browser, uwsgi_server, str(bogus))
    WebDriverWait(browser, 20).until(ec.text_to_be_present_in_element((By.ID, "status"), "Error"))
    assert browser.find_element(By.ID, "status").text.startswith("Error 415:")
    assert browser.find_elements(By.CSS_SELECTOR, "#results li") == []
