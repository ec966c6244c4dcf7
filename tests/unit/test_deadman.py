"""The Watchdog's receiving end on the pair (tts-deadman): a real HTTP server on a free port."""
import json
import threading
import time
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer

import pytest
from tts_service.deadman import Deadman, is_watchdog, make_handler

TOKEN = "deadman-test-token-0123456789"
WATCHDOG = {"version": "4", "status": "firing",
            "alerts": [{"status": "firing", "labels": {"alertname": "Watchdog", "node": "ctl"}}]}


@pytest.fixture
def server():
    deadman = Deadman(silent_after_s=0.6)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(deadman, TOKEN.encode()))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def call(url, body=None, token=TOKEN):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_status_is_ok_while_watchdogs_arrive_and_says_why_when_they_stop(server):
    assert call(f"{server}/status")[0] == 200                       # just started: not yet an alarm
    for _ in range(3):
        assert call(f"{server}/watchdog", WATCHDOG) == (200, {"watchdog": "received"})
        time.sleep(0.3)
        code, body = call(f"{server}/status")
        assert code == 200 and body["watchdog"] == "arriving"
    time.sleep(0.8)
    code, body = call(f"{server}/status")
    assert code == 503 and body["watchdog"] == "silent" and "Failing over by hand" in body["reason"]
    call(f"{server}/watchdog", WATCHDOG)
    assert call(f"{server}/status")[0] == 200


def test_never_a_watchdog_after_start_is_also_silence(server):
    time.sleep(0.8)
    assert call(f"{server}/status")[0] == 503


def test_only_an_authenticated_firing_watchdog_counts(server):
    assert call(f"{server}/watchdog", WATCHDOG, token=None)[0] == 401
    assert call(f"{server}/watchdog", WATCHDOG, token="wrong-token-wrong-token")[0] == 401
    assert call(f"{server}/watchdog", b"{not json")[0] == 400
    other = {**WATCHDOG, "alerts": [{"status": "firing", "labels": {"alertname": "TTSNodeDown", "node": "tts-a"}}]}
    assert call(f"{server}/watchdog", other)[0] == 400
    time.sleep(0.8)
    assert call(f"{server}/status")[0] == 503                       # none of those was a heartbeat


def test_is_watchdog_wants_a_firing_watchdog_in_a_version_4_notification():
    assert is_watchdog(WATCHDOG)
    assert not is_watchdog({**WATCHDOG, "version": "3"})
    assert not is_watchdog({**WATCHDOG, "alerts": [{"status": "resolved", "labels": {"alertname": "Watchdog"}}]})
    assert not is_watchdog([])


def test_silence_is_measured_on_the_clock_given():
    now = [1000.0]
    d = Deadman(silent_after_s=90, clock=lambda: now[0])
    d.beat()
    now[0] += 89
    assert d.status()[0] is True
    now[0] += 2
    ok, body = d.status()
    assert ok is False and body["silent_for_s"] == 91.0
