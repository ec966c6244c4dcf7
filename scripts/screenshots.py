#!/usr/bin/env python3
"""The screenshots in docs/usage.md, of the real page: one local node (gunicorn + tts-worker, a real
redis-server, espeak paced to real time) in headless Chromium, as the browser tests drive it.
`make screenshots` writes docs/img/*.png; run it again after the page changes."""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from tests.browser import chromium, heard  # noqa: E402
from tests.harness import Node, RedisServer, cluster_cli, node_env, wait_for  # noqa: E402

OUT = ROOT / "docs" / "img"
SCRIPT = ("Host: Welcome back to the show. Today we talk about keeping services alive when the hardware "
          "under them does not.\nGuest: Thanks for having me. It is mostly about rehearsing failure, "
          "on purpose and often.\nHost: Rehearsing it how, exactly?\nGuest: Every week, with a stopwatch, "
          "and a job running while we pull the plug.\nHost: And the listeners hear nothing of it?\n"
          "Guest: A short pause at most. The audio is the same as if nothing had happened.")


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        redis = RedisServer(tmp / "redis")
        shared = tmp / "shared"
        shared.mkdir()
        assert cluster_cli(shared, "init", "tts-a").returncode == 0
        node = Node("tts-a", node_env("tts-a", redis.url, shared, tmp / "run", TTS_ENGINE_PACE=1.0), tmp / "logs")
        browser = chromium(tmp / "profile")
        browser.set_window_size(1300, 1250)
        try:
            node.start()
            wait_for(lambda: node.ready()[0] == 200, 30, what="ready")
            browser.get(node.url + "/")
            script = browser.find_element(By.ID, "script")
            script.clear()
            script.send_keys(SCRIPT)
            WebDriverWait(browser, 10).until(lambda d: "Voice for Guest" in d.find_element(By.ID, "voices").text)
            Select(browser.find_element(By.ID, "voice-2")).select_by_value("espeak-us-f4")
            browser.find_element(By.ID, "title").send_keys("Rehearsing failure, episode 12")
            browser.save_screenshot(str(OUT / "editor.png"))
            browser.find_element(By.ID, "submit").click()
            time.sleep(0.5)
            browser.find_element(By.ID, "submit").click()               # a second job waits in the queue
            WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs li button.listen"))
            browser.find_elements(By.CSS_SELECTOR, "#jobs li button.listen")[-1].click()
            WebDriverWait(browser, 30).until(lambda d: (heard(d) or {}).get("played", 0) > 22050 * 2)
            WebDriverWait(browser, 30).until(lambda d: "in the queue" in d.find_element(By.ID, "jobs").text)
            browser.save_screenshot(str(OUT / "listening.png"))
            node.stop()                                                 # as a failover looks from the page
            WebDriverWait(browser, 15).until(lambda d: d.find_element(By.ID, "connection").is_displayed())
            time.sleep(2.5)
            browser.save_screenshot(str(OUT / "reconnecting.png"))
        finally:
            browser.quit()
            node.stop()
            redis.stop()
    print("\n".join(str(p.relative_to(ROOT)) for p in sorted(OUT.glob("*.png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
