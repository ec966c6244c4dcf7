"""The web page in headless Chromium on one local node: paste a 2-speaker script, submit, watch the
progress bar reach 100 %, find a playable audio element; a bad script shows its error; listen while
the job is generated, through an outage of the node, and hear exactly the final file."""
import time

import numpy as np
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.browser import HAVE_CHROMIUM, chromium, heard, heard_and_final, submit_and_listen
from tests.harness import Node, cluster_cli, dialogue, node_env, wait_for

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


def test_the_editor_names_the_scripts_speakers_and_checks_as_you_type(browser, shared, tmp_path, redis_url):
    """The script's own names get a voice picker each; the length, the audio it will make and the
    first problem show while typing (no submit); an example fills the editor; a named script runs."""
    assert cluster_cli(shared, "init", "tts-a").returncode == 0
    node = Node("tts-a", node_env("tts-a", redis_url, shared, tmp_path / "run", TTS_ENGINE_PACE=0.1),
                tmp_path / "logs").start()
    try:
        wait_for(lambda: node.ready()[0] == 200, 20, what="ready")
        browser.get(node.url + "/")
        script = browser.find_element(By.ID, "script")
        script.clear()
        script.send_keys("Alice: Hello Bob, how are you?\nBob: Fine, thanks.\nCarol: And me?")

        def labels(d):
            return [e.text.split("\n")[0] for e in d.find_elements(By.CSS_SELECTOR, "#voices label")]
        WebDriverWait(browser, 10).until(lambda d: labels(d) == ["Voice for Alice", "Voice for Bob", "Voice for Carol"])
        info = browser.find_element(By.ID, "script-info").text
        assert "characters" in info and "of audio" in info and "3 speakers" in info, info
        script.send_keys("\nDave: Hi.\nErin: Too many.")
        error = browser.find_element(By.ID, "script-error")
        WebDriverWait(browser, 10).until(lambda d: "fifth speaker, Erin" in error.text)
        assert script.get_attribute("aria-invalid") == "true"
        Select(browser.find_element(By.ID, "examples")).select_by_visible_text("Three friends planning a trip")
        assert "Erin" in script.get_attribute("value")              # choosing alone replaces nothing
        browser.find_element(By.ID, "example-load").click()
        browser.switch_to.alert.accept()                             # "replace what you typed?"
        WebDriverWait(browser, 10).until(lambda d: labels(d) == ["Voice for Maya", "Voice for Tom", "Voice for Ines"])
        assert error.text == "" and script.get_attribute("aria-invalid") == "false"
        Select(browser.find_element(By.ID, "voice-3")).select_by_value("espeak-us-f4")
        browser.find_element(By.ID, "title").send_keys("Trip planning")
        browser.find_element(By.CSS_SELECTOR, "#voices .voice:nth-child(3) button.hear").click()   # Ines's voice
        wait_for(lambda: (shared / "voices" / "previews" / "espeak-espeak-us-f4.wav").exists(), 10,
                 what="the preview the page asked for")
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs li audio"))
        job = browser.find_element(By.CSS_SELECTOR, "#jobs li").get_attribute("data-id")
        finished = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/api/jobs/' + arguments[0]).then(r => r.json()).then(done);", job)
        assert finished["status"] == "done" and finished["segments_total"] == 4, finished
        assert browser.find_element(By.CSS_SELECTOR, "#jobs li .title").text == "Trip planning"
        # Run again: the editor holds what was asked; Delete (confirmed): gone from the history.
        script.clear()
        script.send_keys("Someone: else entirely.")
        browser.find_element(By.ID, "title").clear()
        browser.find_element(By.CSS_SELECTOR, "#jobs li button.again").click()
        WebDriverWait(browser, 10).until(lambda d: script.get_attribute("value").startswith("Maya: So, the mountains"))
        WebDriverWait(browser, 10).until(lambda d: Select(d.find_element(By.ID, "voice-3")).first_selected_option
                                         .get_attribute("value") == "espeak-us-f4")
        assert browser.find_element(By.ID, "title").get_attribute("value") == "Trip planning"
        browser.find_element(By.CSS_SELECTOR, "#jobs li button.delete").click()
        browser.switch_to.alert.accept()
        WebDriverWait(browser, 10).until(lambda d: not d.find_elements(By.CSS_SELECTOR, f'#jobs li[data-id="{job}"]'))
        assert not (shared / "jobs" / job).exists()
    finally:
        node.stop()


UNNAMED = """
// Every control a screen reader announces by its name: a <label>, aria-label or aria-labelledby (or, for a
// button, its text). Returns the ids/tags of those without one.
const named = (e) => (e.labels && e.labels.length > 0) || e.getAttribute("aria-label") ||
  e.getAttribute("aria-labelledby") || (e.tagName === "BUTTON" && e.textContent.trim());
return [...document.querySelectorAll("input, select, textarea, button, progress, audio")]
  .filter((e) => !named(e)).map((e) => e.id || e.tagName);
"""


def test_the_page_works_from_the_keyboard_and_names_every_control(browser, shared, tmp_path, redis_url):
    """Tab to the script, type it, tab on to Synthesise and press Enter: the job runs, with no mouse. Every
    control (the ones the jobs add too) has a name a screen reader reads out; the live regions say so."""
    from selenium.webdriver.common.keys import Keys
    assert cluster_cli(shared, "init", "tts-a").returncode == 0
    node = Node("tts-a", node_env("tts-a", redis_url, shared, tmp_path / "run", TTS_ENGINE_PACE=0.5),
                tmp_path / "logs").start()
    try:
        wait_for(lambda: node.ready()[0] == 200, 20, what="ready")
        browser.get(node.url + "/")
        WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#voices select"))
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)   # the examples, Load, then the script
        for _ in range(3):
            if browser.switch_to.active_element.get_attribute("id") == "script":
                break
            browser.switch_to.active_element.send_keys(Keys.TAB)
        assert browser.switch_to.active_element.get_attribute("id") == "script"
        editor = browser.switch_to.active_element
        editor.send_keys(Keys.CONTROL, "a")
        editor.send_keys(Keys.DELETE)
        editor.send_keys("Ann: One line from the keyboard.\nBen: And a second one, a little longer.")
        WebDriverWait(browser, 10).until(lambda d: "Voice for Ben" in d.find_element(By.ID, "voices").text)
        for _ in range(12):                                        # on through the pickers to the button
            browser.switch_to.active_element.send_keys(Keys.TAB)
            if browser.switch_to.active_element.get_attribute("id") == "submit":
                break
        assert browser.switch_to.active_element.get_attribute("id") == "submit"
        browser.switch_to.active_element.send_keys(Keys.ENTER)
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs li button.listen"))
        assert browser.execute_script(UNNAMED) == []               # the running job's controls too
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs li audio"))
        assert browser.execute_script(UNNAMED) == []               # and the finished job's player
        for region in ("message", "connection-text", "listen-state", "script-error", "script-info"):
            element = browser.find_element(By.ID, region)
            assert element.get_attribute("role") == "status" or element.get_attribute("aria-live"), region
        for counter in ("connection-time", "listen-progress"):     # ticking counts: not read out each second
            element = browser.find_element(By.ID, counter)
            assert not element.get_attribute("role") and not element.get_attribute("aria-live"), counter
    finally:
        node.stop()


def differences(played, final):
    if len(played) != len(final):
        return ""
    diff = np.abs(played.astype(np.int32) - final.astype(np.int32))
    where = np.flatnonzero(diff)
    return (f"; {len(where)} samples differ, by at most {diff.max()}; at {where[:8].tolist()}: heard "
            f"{played[where[:8]].tolist()}, file {final[where[:8]].tolist()}")


def test_listening_while_it_generates_goes_on_through_an_outage_and_hears_the_final_file(
        browser, shared, tmp_path, redis_url):
    """The page plays the committed chunks as one stream while the job runs. The node is killed
    mid-job: the page says it is reconnecting, and when the node is back (as a failover's new primary
    would be, at the same address) it carries on by itself, the job resumes from its last chunk, and the
    listener goes on from the sample where it stopped. What it played equals the final file, sample for
    sample; the longest pause is printed."""
    browser.set_script_timeout(60)
    assert cluster_cli(shared, "init", "tts-a").returncode == 0
    env = node_env("tts-a", redis_url, shared, tmp_path / "run", TTS_ENGINE_PACE=0.5, TTS_LEASE_SECONDS=2)
    node = Node("tts-a", env, tmp_path / "logs").start()
    try:
        wait_for(lambda: node.ready()[0] == 200, 20, what="ready")
        browser.get(node.url + "/?record")
        WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "voice-2"))
        script = browser.find_element(By.ID, "script")
        script.clear()
        script.send_keys(dialogue(10))
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs li button.listen"))
        job_id = browser.find_element(By.CSS_SELECTOR, "#jobs li").get_attribute("data-id")
        browser.find_element(By.CSS_SELECTOR, "#jobs li button.listen").click()
        WebDriverWait(browser, 30).until(lambda d: (heard(d) or {}).get("played", 0) > 0)

        node.stop()                                     # the node is gone mid-job
        banner = browser.find_element(By.ID, "connection")
        WebDriverWait(browser, 15).until(lambda d: banner.is_displayed() and "Reconnecting" in banner.text)
        typed = "Speaker 1: typed during the outage."
        script.clear()
        script.send_keys(typed)
        time.sleep(2)
        node.start()                                    # back at the same address
        WebDriverWait(browser, 30).until(lambda d: not banner.is_displayed())
        assert script.get_attribute("value") == typed   # nothing typed is lost: no reload

        WebDriverWait(browser, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#jobs li[data-id="{job_id}"] audio'))
        WebDriverWait(browser, 120, poll_frequency=1).until(
            lambda d: "finished" in d.find_element(By.ID, "listen-state").text)
        played, final, rate, pauses = heard_and_final(browser, job_id)
        longest = max(pauses, default=0.0)
        print(f"\nheard {len(played) / rate:.2f} s of a {len(final) / rate:.2f} s file at {rate} Hz; "
              f"{len(pauses)} pause(s), the longest {longest:.2f} s")
        assert len(played) == len(final) and np.array_equal(played, final), \
            f"heard {len(played)} samples, the file has {len(final)}; first difference at " \
            f"{int(np.argmax(played[:len(final)] != final[:len(played)]))}" + differences(played, final)
    finally:
        node.stop()
