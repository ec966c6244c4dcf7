"""The web page in headless Chromium (Debian's chromium + chromium-driver): paste a 2-speaker script,
submit, watch the progress bar reach 100 %, find a playable audio element."""
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.harness import Node, cluster_cli, node_env, wait_for

pytestmark = pytest.mark.skipif(shutil.which("chromedriver") is None, reason="chromium-driver is not installed")


@pytest.fixture
def browser(tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.set_window_size(1300, 900)
    yield driver
    driver.quit()


def test_submit_on_the_page_and_play_the_result(browser, shared, tmp_path, redis_url):
    assert cluster_cli(shared, "init", "tts-a").returncode == 0
    node = Node("tts-a", node_env("tts-a", redis_url, shared, tmp_path / "run", TTS_ENGINE_PACE=0.3),
                tmp_path / "logs").start()
    try:
        wait_for(lambda: node.ready()[0] == 200, 20, what="ready")
        browser.get(node.url + "/")
        WebDriverWait(browser, 10).until(lambda d: len(Select(d.find_element(By.ID, "voice-2")).options) > 1)
        script = browser.find_element(By.ID, "script")
        script.clear()
        script.send_keys("Speaker 1: Good morning, and welcome.\nSpeaker 2: Thank you. Glad to be here.\n"
                         "Speaker 1: Let us begin.")
        Select(browser.find_element(By.ID, "voice-2")).select_by_value("espeak-us-f4")
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs li progress"))
        # While it runs (pacing on) the bar moves and a cancel button is offered.
        WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs li button.cancel"))
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs li audio"))
        bar = browser.find_element(By.CSS_SELECTOR, "#jobs li progress")
        assert bar.get_attribute("value") == bar.get_attribute("max") == "3"
        assert browser.find_element(By.CSS_SELECTOR, "#jobs li .status").text.lower() == "done"
        assert browser.find_element(By.CSS_SELECTOR, "#jobs li a.download").get_attribute("href").endswith(
            "/audio?download=1")
        # The audio element really loads and decodes the WAV.
        duration = WebDriverWait(browser, 15).until(lambda d: d.execute_script(
            "const a = document.querySelector('#jobs li audio');"
            "return a.readyState >= 1 && isFinite(a.duration) ? a.duration : null;"))
        assert duration > 2
        # The FLAC download: fetched and decoded by the browser, the same length as the WAV.
        flac = browser.find_element(By.CSS_SELECTOR, "#jobs li a.download-flac").get_attribute("href")
        assert flac.endswith("/audio?format=flac&download=1")
        flac_duration = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0]).then(r => r.arrayBuffer())"
            ".then(b => new OfflineAudioContext(1, 1, 44100).decodeAudioData(b))"
            ".then(a => done(a.duration), e => done('error: ' + e));", flac)
        assert isinstance(flac_duration, float) and abs(flac_duration - duration) < 0.05, flac_duration
        browser.save_screenshot(str(tmp_path / "page.png"))
    finally:
        node.stop()


def test_a_bad_script_shows_the_error_on_the_page(browser, shared, tmp_path, redis_url):
    assert cluster_cli(shared, "init", "tts-a").returncode == 0
    node = Node("tts-a", node_env("tts-a", redis_url, shared, tmp_path / "run"), tmp_path / "logs").start()
    try:
        browser.get(node.url + "/")
        script = browser.find_element(By.ID, "script")
        script.clear()
        script.send_keys("Speaker 7: who am I?")
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 10).until(lambda d: "names Speaker 7" in d.find_element(By.ID, "message").text)
        assert "error" in browser.find_element(By.ID, "message").get_attribute("class")
    finally:
        node.stop()
