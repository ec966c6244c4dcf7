"""The canary: a multi-speaker job submitted through the VIP, watched until it ends.

The watcher polls the job and the VIP's /primary every `interval` seconds and writes what it saw to a
JSON file, first when the canary is in flight (`tts-drill run` waits for that before the fault), then at
the end. Times are Unix seconds (the drill's hosts share NTP time; the lab shares one clock).
Standard library only: it runs in the receiver's venv on ctl as well as on an operator's machine.
"""
from __future__ import annotations

import base64
import http.cookiejar
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..httpjson import read_object
from ..statuses import FINAL


def canary_script(turns: int, speakers: int = 3) -> str:
    return "\n".join(f"Speaker {i % speakers + 1}: Canary line {i + 1} of {turns}, spoken in a failover drill."
                     for i in range(turns))


@dataclass
class Observation:
    vip: str
    target: str
    job_id: str = ""
    submitted_at: float = 0.0
    in_flight_at: float | None = None      # the canary had segments_done >= in_flight_segments
    in_flight: bool = False
    vip_lost_at: float | None = None       # first failed /primary through the VIP after in flight
    vip_target_at: float | None = None     # first 200 from the target's /primary through the VIP
    job_on_target_at: float | None = None  # first time the job showed as running (or done) again, after the
                                           # fault: on the target, or (a pool) on any worker but `source`
    source: str = ""                       # the primary before the fault ("" : the job must reach the target)
    job_done_at: float | None = None
    job: dict = field(default_factory=dict)
    error: str = ""
    finished: bool = False


class Watcher:
    def __init__(self, vip: str, target: str, out: Path, turns: int = 12, in_flight_segments: int = 2,
                 interval: float = 0.2, timeout: float = 900.0, submit_timeout: float = 30.0, login: str = "",
                 source: str = ""):
        self.obs = Observation(vip=vip.rstrip("/"), target=target, source=source)
        # "user:password" where the VIP wants basic auth (tts_access: basic), as any user logs in.
        self.auth = {"Authorization": "Basic " + base64.b64encode(login.encode()).decode()} if login else {}
        self.out = Path(out)
        self.turns = turns
        self.in_flight_segments = in_flight_segments
        self.interval = interval
        self.timeout = timeout
        self.submit_timeout = submit_timeout   # a standby answers 503 while the VIP moves: retry this long
        self.http = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    # ---- HTTP ----

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float = 3.0) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.obs.vip + path, data=data, method=method,
                                     headers={**self.auth, **({"Content-Type": "application/json"} if data else {})})
        try:
            with self.http.open(req, timeout=timeout) as res:
                return res.status, read_object(res.read())
        except urllib.error.HTTPError as exc:
            return exc.code, read_object(exc.read())
        except (OSError, ValueError):
            return 0, {}

    # ---- the run ----

    def save(self) -> None:
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self.obs), indent=1))
        os.replace(tmp, self.out)

    def submit(self) -> None:
        deadline = time.monotonic() + self.submit_timeout
        while True:
            status, body = self._call("POST", "/api/jobs", {"script": canary_script(self.turns)}, timeout=10)
            if status == 202:
                self.obs.job_id, self.obs.submitted_at = body["id"], time.time()
                return
            if status not in (0, 502, 503, 504) or time.monotonic() > deadline:
                raise RuntimeError(f"the canary job was refused: HTTP {status} {body.get('error', '')}".strip())
            time.sleep(1)

    def step(self, now: float) -> None:
        o = self.obs
        status, job = self._call("GET", f"/api/jobs/{o.job_id}")
        if status == 200:
            o.job = job
            if not o.in_flight and job.get("segments_done", 0) >= self.in_flight_segments:
                o.in_flight, o.in_flight_at = True, now
                self.save()
            moved = job.get("node") not in ("", None, o.source) if o.source else job.get("node") == o.target
            if o.job_on_target_at is None and o.in_flight and moved and job.get("status") in ("running", "done"):
                o.job_on_target_at = now
            if job.get("status") in FINAL and o.job_done_at is None:
                o.job_done_at = now
        if o.in_flight and o.vip_target_at is None:
            status, body = self._call("GET", "/primary", timeout=1.0)
            if status == 200 and body.get("node") == o.target:
                o.vip_target_at = time.time()      # when the answer came (the RTO never flattered)
            elif status != 200 and o.vip_lost_at is None:
                o.vip_lost_at = now

    def run(self) -> Observation:
        try:
            self.submit()
            self.save()
            deadline = time.monotonic() + self.timeout
            while self.obs.job_done_at is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the canary did not finish within {self.timeout:.0f} s "
                                       f"(last seen: {self.obs.job})")
                if not self.obs.in_flight and self.obs.job.get("status") in FINAL:
                    raise RuntimeError(f"the canary ended before the fault: {self.obs.job}")
                self.step(time.time())
                time.sleep(self.interval)
            # The target may have answered /primary only after the job ended (a very short canary).
            wait_vip = time.monotonic() + 30
            while self.obs.in_flight and self.obs.vip_target_at is None and time.monotonic() < wait_vip:
                self.step(time.time())
                time.sleep(self.interval)
        except Exception as exc:
            self.obs.error = str(exc) or type(exc).__name__
        self.obs.finished = True
        self.save()
        return self.obs
