#!/usr/bin/env python3
"""The lab's `operators` receiver: logs every Alertmanager notification, one JSON line each.
In production point monitoring_operators_url at a real pager/chat integration instead."""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = sys.argv[3] if len(sys.argv) > 3 else "/var/log/tts-operators.log"


class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        length = min(int(self.headers.get("Content-Length", 0) or 0), 1 << 20)
        body = self.rfile.read(length)
        try:
            data = json.loads(body)
            line = {"received_at": time.time(), "status": data.get("status"),
                    "alerts": [{"name": a.get("labels", {}).get("alertname"), "node": a.get("labels", {}).get("node"),
                                "status": a.get("status"), "annotations": a.get("annotations", {})}
                               for a in data.get("alerts", [])]}
        except (ValueError, AttributeError):
            line = {"received_at": time.time(), "malformed": body[:200].decode(errors="replace")}
        with open(LOG, "a") as fh:
            fh.write(json.dumps(line) + "\n")
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Sink).serve_forever()
