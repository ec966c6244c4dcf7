"""The web page in headless Chromium on one local node: paste a 2-speaker script, submit, watch the
progress bar reach 100 %, find a playable audio element; a bad script shows its error."""
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import HAVE_CHROMIUM, chromium, submit_and_listen
from tests.harness import Node, cluster_cli, node_env, wait_for

pytestmark = pytest.mark.skipif(not HAVE_CHROMIUM, reason="chromium-driver is not installed")


@pytest.fixture
def browser(tmp_path):
    driver = chromium(tmp_path)
    yield driver
    driver.quit()


def test_submit_on_the_page_and_play_the_result(browser, shared, tmp_path, redis_url):
    assert cluster_cli(shared, "init", "tts-a").returncode == 0
    node = Node("tts-a", node_env("tts-a", redis_url, shared, tmp_path / "run", TTS_ENGINE_PACE=0.3),
                tmp_path / "logs").start()
    try:
        wait_for(lambda: node.ready()[0] == 200, 20, what="ready")
        duration, flac_duration = submit_and_listen(browser, node.url)
        assert duration > 2
        assert abs(flac_duration - duration) < 0.05, (flac_duration, duration)
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
