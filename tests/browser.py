"""The page in headless Chromium (Debian's chromium + chromium-driver), for the local browser tests
and the Molecule one through the VIP: start a browser (trusting the lab CA when asked), and the page's
main flow (paste a 2-speaker script, submit, watch the bar reach the end, play the WAV, fetch the FLAC)."""
import base64
import io
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np
import soundfile as sf
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

HAVE_CHROMIUM = shutil.which("chromedriver") is not None

SCRIPT = ("Speaker 1: Good morning, and welcome.\nSpeaker 2: Thank you. Glad to be here.\n"
          "Speaker 1: Let us begin.")


def chromium(profile: Path, trust_ca: Path | None = None,
             login: tuple[str, str, str] | None = None) -> webdriver.Chrome:
    """A headless Chromium with its own profile; trust_ca: a CA certificate it trusts (put into an NSS
    database under a HOME of its own, where Chromium on Linux reads its trusted roots); login: (user,
    password, base URL) of a VIP with tts_access: basic: the browser logs in there as a user does, once
    (the credentials answer the first 401 and Chromium keeps them for the realm), so that every request
    of the origin carries them: page, API calls, audio and the AudioWorklet's module alike. (An
    Authorization header set through DevTools missed the worklet's fetch, which then waited for a login
    prompt headless Chromium never shows.)"""
    env = None
    if trust_ca is not None:
        nssdb = profile / "home" / ".pki" / "nssdb"
        nssdb.mkdir(parents=True)
        subprocess.run(["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True)
        subprocess.run(["certutil", "-A", "-d", f"sql:{nssdb}", "-n", "tts-pair-ca", "-t", "C,,",
                        "-i", str(trust_ca)], check=True)
        env = {**os.environ, "HOME": str(profile / "home")}
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={profile / 'chrome'}",
                 "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver", env=env), options=opts)
    driver.set_window_size(1300, 900)
    if login is not None:
        user, password, base = login
        parts = urlsplit(base)
        driver.get(f"{parts.scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}/")
    return driver


def submit_and_listen(browser: webdriver.Chrome, base_url: str, turns: int = 3) -> tuple[float, float]:
    """Submit SCRIPT on the page at base_url and wait for it: the bar at the end, "done", a playable
    WAV and the FLAC download decoded by the browser. Returns (WAV duration, FLAC duration) in s."""
    browser.get(base_url + "/")
    WebDriverWait(browser, 10).until(lambda d: len(Select(d.find_element(By.ID, "voice-2")).options) > 1)
    script = browser.find_element(By.ID, "script")
    script.clear()
    script.send_keys(SCRIPT)
    # The pickers follow the script (one per speaker it names): wait for them to show its speakers.
    WebDriverWait(browser, 10).until(lambda d: "Voice for Speaker 2" in d.find_element(By.ID, "voices").text)
    Select(browser.find_element(By.ID, "voice-2")).select_by_value("espeak-us-f4")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs li progress"))
    # While it runs (pacing on) the bar moves and a cancel button is offered.
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs li button.cancel"))
    WebDriverWait(browser, 90).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs li audio"))
    bar = browser.find_element(By.CSS_SELECTOR, "#jobs li progress")
    assert bar.get_attribute("value") == bar.get_attribute("max") == str(turns)
    assert browser.find_element(By.CSS_SELECTOR, "#jobs li .status").text.lower() == "done"
    assert browser.find_element(By.CSS_SELECTOR, "#jobs li a.download").get_attribute("href").endswith(
        "/audio?download=1")
    # The audio element really loads and decodes the WAV.
    duration = WebDriverWait(browser, 15).until(lambda d: d.execute_script(
        "const a = document.querySelector('#jobs li audio');"
        "return a.readyState >= 1 && isFinite(a.duration) ? a.duration : null;"))
    # The FLAC download: fetched and decoded by the browser.
    flac = browser.find_element(By.CSS_SELECTOR, "#jobs li a.download-flac").get_attribute("href")
    assert flac.endswith("/audio?format=flac&download=1")
    flac_duration = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(r => r.arrayBuffer())"
        ".then(b => new OfflineAudioContext(1, 1, 44100).decodeAudioData(b))"
        ".then(a => done(a.duration), e => done('error: ' + e));", flac)
    assert isinstance(flac_duration, float), flac_duration
    return duration, flac_duration


# What the page's listener played (listen-worklet.js keeps it when the page was opened with ?record):
# its samples back as 16-bit PCM (they came from 16-bit chunks, so this is exact), the pauses.
HEARD = """
const done = arguments[arguments.length - 1];
if (!window.ttsListener) { done(null); return; }
window.ttsListener.report().then((r) => {
  if (!r) { done(null); return; }
  const blocks = r.heard || [];   // (kept only when the page was opened with ?record)
  const n = blocks.reduce((a, b) => a + b.length, 0), pcm = new Int16Array(n);
  let at = 0;
  // Chromium decodes 16-bit PCM as x / 32767 above zero and x / 32768 below: this undoes it exactly.
  for (const block of blocks) { for (const x of block) pcm[at++] = Math.round(x > 0 ? x * 32767 : x * 32768); }
  let text = ""; const bytes = new Uint8Array(pcm.buffer);
  for (let i = 0; i < bytes.length; i += 32768) text += String.fromCharCode(...bytes.subarray(i, i + 32768));
  done({ pcm: btoa(text), silences: r.silences, played: r.played, queued: r.queued, rate: window.ttsListener.rate });
});
"""
FINAL = """
const done = arguments[arguments.length - 1];
fetch(arguments[0], { credentials: "same-origin" }).then((r) => r.arrayBuffer()).then((b) => {
  let text = ""; const bytes = new Uint8Array(b);
  for (let i = 0; i < bytes.length; i += 32768) text += String.fromCharCode(...bytes.subarray(i, i + 32768));
  done(btoa(text));
});
"""


def heard(browser):
    """The listener's report (played, queued, pauses), or None before it has its first chunk."""
    return browser.execute_async_script(HEARD)


def heard_and_final(browser, job_id):
    """(what the page played, the job's final file, its rate, the pauses in s): int16 arrays."""
    got = heard(browser)
    wav = base64.b64decode(browser.execute_async_script(FINAL, f"/api/jobs/{job_id}/audio"))
    final, rate = sf.read(io.BytesIO(wav), dtype="int16")
    assert got["rate"] == rate, (got["rate"], rate)
    played = np.frombuffer(base64.b64decode(got["pcm"]), dtype=np.int16)
    return played, final, rate, [seconds for _, seconds in got["silences"]]


