"""The operators' end of the Watchdog, the monitoring's dead-man's switch (docs/contracts.md: always firing).

Alertmanager on ctl posts the Watchdog here, on each TTS node, at every repeat interval. While they
arrive, GET /status answers 200; when none has come for `silent_after_s`, it answers 503 with a
sentence saying the monitoring is silent and what that means, and a warning goes to the journal
once per silence (and once more when it comes back). It lives on the pair because the thing it
watches is ctl: when ctl is lost, the pair keeps serving but nothing would fail it over
automatically. Production also points the Watchdog at an external dead-man's-switch service.

    tts-deadman --listen 192.0.2.11:9097 --silent-after 90     (token: TTS_ALERT_TOKEN)
"""
from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("tts.deadman")


class Deadman:
    def __init__(self, silent_after_s: float, clock: Callable[[], float] = time.time):
        self.silent_after_s = silent_after_s
        self.clock = clock
        self.started_at = clock()
        self.last_beat: float | None = None
        self._said_silent = False
        self._lock = threading.Lock()

    def beat(self) -> None:
        with self._lock:
            self.last_beat = self.clock()
            if self._said_silent:
                log.warning("the monitoring's Watchdog arrives again: automatic failover is watching again")
                self._said_silent = False

    def status(self) -> tuple[bool, dict]:
        with self._lock:
            now = self.clock()
            since = self.last_beat if self.last_beat is not None else self.started_at
            age = now - since
            if age < self.silent_after_s:
                what = "arriving" if self.last_beat is not None else "waiting for the first"
                return True, {"watchdog": what, "silent_for_s": round(age, 1),
                              "reason": f"the monitoring's Watchdog is {what} (last {age:.0f} s ago)"
                              if self.last_beat is not None else
                              f"no Watchdog yet, {age:.0f} s after start (alarm after {self.silent_after_s:.0f} s)"}
            reason = (f"no Watchdog from the monitoring for {age:.0f} s: ctl (Prometheus, Alertmanager or the "
                      "receiver's host) is down or cut off; the pair keeps serving, but nothing will fail it "
                      "over automatically: see the README, 'Failing over by hand'")
            if not self._said_silent:
                log.warning(reason)
                self._said_silent = True
            return False, {"watchdog": "silent", "silent_for_s": round(age, 1), "reason": reason}


def is_watchdog(body: object) -> bool:
    """An Alertmanager v4 notification that carries a firing Watchdog."""
    if not isinstance(body, dict) or str(body.get("version")) != "4" or not isinstance(body.get("alerts"), list):
        return False
    return any(isinstance(a, dict) and a.get("status") == "firing" and isinstance(a.get("labels"), dict)
               and a["labels"].get("alertname") == "Watchdog" for a in body["alerts"])


def make_handler(deadman: Deadman, token: bytes):
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode() + b"\n"
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            if self.path != "/watchdog":
                return self._answer(404, {"error": "POST /watchdog only"})
            header = self.headers.get("Authorization", "")
            given = header[7:].encode() if header.startswith("Bearer ") else b""
            if not token or not hmac.compare_digest(given, token):
                return self._answer(401, {"error": "missing or wrong bearer token"})
            length = int(self.headers.get("Content-Length") or 0)
            if length > 1 << 20:
                return self._answer(413, {"error": "the notification is too large"})
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except ValueError:
                body = None
            if not is_watchdog(body):
                return self._answer(400, {"error": "not an Alertmanager notification with a firing Watchdog"})
            deadman.beat()
            return self._answer(200, {"watchdog": "received"})

        def do_GET(self):
            if self.path != "/status":
                return self._answer(404, {"error": "GET /status only"})
            ok, body = deadman.status()
            return self._answer(200 if ok else 503, body)

        def log_message(self, *args):
            pass
    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="address:port")
    parser.add_argument("--silent-after", type=float, default=90.0,
                        help="seconds without a Watchdog before calling the monitoring silent")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    token = os.environ.get("TTS_ALERT_TOKEN", "").encode()
    if len(token) < 16:
        parser.error("TTS_ALERT_TOKEN must be set (16+ characters)")
    deadman = Deadman(args.silent_after)
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), make_handler(deadman, token))

    def watch() -> None:      # so that the journal says it even when nobody asks /status
        while True:
            deadman.status()
            time.sleep(5)
    threading.Thread(target=watch, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
