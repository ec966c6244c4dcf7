#!/usr/bin/env python3
"""Chaos soak of the lab pair: N rounds, each one fault from the matrix injected at a random moment of a
random job, with 2-3 jobs in flight and new submissions during the fault. The first rounds draw every
fault kind once (in a random order), the rest at random.

The faults include Redis wiped, the standby's NAS client killed (it must heal by itself), a slow NAS
(`tc tbf` at 2 Mbit/s: this kernel has no netem) and two faults in sequence (the standby's NAS
client, then the primary's app: after the first has healed, and before).

After each round it checks, on real state:
- 0 jobs lost: every accepted job ends `done` with audio as long as the sum of its segments (read
  with Python's wave module on the NAS), or `cancelled`, and the session still lists it;
- redundancy back (both nodes in their roles) within 60 s of the fault's end (of its injection for a
  fault nothing undoes) when the host stayed up; the longest time without a 200 at most 10 s (two
  faults at once included: the standby heals at once and the receiver fails over to it as soon as it
  is fit);
- never two unfenced primaries (both nodes' /ready sampled every 0.2 s);
- no failover when the primary was healthy (a fault that should not fail over, but did: "false");
- the pair back in role (by the receiver's rejoin, or the runbook's rejoin.yml if it escalated).
Prints a line per round, a table (faults, failovers, false failovers, segments recomputed, lost
jobs, longest unavailability seen by a client polling the VIP's /primary) and one per fault kind
(count, longest time without a 200, time until redundancy was back, jobs lost, two primaries). Exit
status 1 if any job was lost, two primaries were seen, a false failover happened, a gap passed 10 s or
redundancy took over 60 s. Not part of `make test` (too long).

    make soak RUNS=20        (the lab: make lab first)
    TTS_TEST_INVENTORY=molecule/default/inventory/hosts.yml python bench/soak.py --runs 3   (a molecule pair)
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
import wave
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TTS_TEST_INVENTORY", str(Path(__file__).resolve().parents[1] / "inventory" / "lab" / "hosts.yml"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "molecule" / "default" / "tests"))

import requests

from lab import (
    APP_BACK,
    APP_KILLED,
    COOLDOWN_S,
    NODES,
    PREFIX,
    REDIS_BACK,
    REDIS_KILLED,
    SHARED,
    SUBNET,
    VIP,
    RoleWatcher,
    cluster_state,
    cut,
    heal,
    on,
    operator_playbook,
    pair_in_role,
    podman,
    receiver_runs,
    redis_cli,
    script,
    wait,
)


@dataclass
class Fault:
    name: str
    fails_over: bool           # whether a failover is the right answer to it
    inject: object             # (primary, standby, jobs) -> heal callable
    hold_s: float = 20         # a fault that must not fail over is held this long
    host_stays_up: bool = True  # redundancy must be back within 60 s after it
    self_heals: bool = False    # nothing undoes it: redundancy is counted from the injection, not its end


def _app_killed(p, s, jobs):
    on(p, APP_KILLED)
    return lambda: on(p, APP_BACK)


def _host_lost(p, s, jobs):
    podman("kill", PREFIX + p, check=True)
    return lambda: podman("start", PREFIX + p, check=True)


def _paused(p, s, jobs):
    podman("pause", PREFIX + p, check=True)
    return lambda: podman("unpause", PREFIX + p, check=True)


def _monitor_cut(p, s, jobs):
    cut("ctl", p)
    return lambda: heal("ctl", p)


def _pair_cut(p, s, jobs):
    cut(p, s)
    return lambda: heal(p, s)


def _redis_down(p, s, jobs):
    on(p, REDIS_KILLED)
    return lambda: on(p, REDIS_BACK)


def _nas_lost_primary(p, s, jobs):
    cut(p, "nas")
    return lambda: heal(p, "nas")


def _nas_lost_standby(p, s, jobs):
    cut(s, "nas")
    return lambda: heal(s, "nas")


def _damaged_segment(p, s, jobs):
    job = jobs[0]
    folder = f"{SHARED}/jobs/{job}/segments"
    victim = on("nas", f"ls {folder} | grep '[.]wav$' | head -1").strip()
    if victim:
        on("nas", f"truncate -s 300 {folder}/{victim}")
    return lambda: None


def _receiver_killed(p, s, jobs):
    on("ctl", "systemctl kill --signal=SIGKILL tts-receiver")
    return lambda: None


def _redis_wiped(p, s, jobs):
    """Redis emptied on the primary (as one restarted without its files): the pair rebuilds it from
    shared storage; the round then checks the same session still lists every job."""
    redis_cli(p, "FLUSHALL")
    return lambda: None


def _nas_client_killed_standby(p, s, jobs):
    """The standby's sshfs dies (ENOTCONN): it must heal by itself (tts-nas-heal, the receiver's rejoin)."""
    on(s, "pkill -9 -f '^/sbin/mount.fuse.sshfs'")
    return lambda: None


def _slow_nas(p, s, jobs):
    """The NAS's outgoing traffic squeezed to 2 Mbit/s (tc tbf: this kernel has no netem) for the hold."""
    on("nas", "tc qdisc replace dev eth0 root tbf rate 2mbit burst 32kbit latency 400ms")
    return lambda: on("nas", "tc qdisc del dev eth0 root 2>/dev/null || true")


def _two_in_sequence(healed_first):
    """The standby's NAS client killed, then the primary's app: after the first has healed, or before."""
    def inject(p, s, jobs):
        _nas_client_killed_standby(p, s, jobs)
        if healed_first:
            wait(pair_in_role, 120, "the standby healed before the second fault", interval=1)
        else:
            time.sleep(2)
        on(p, APP_KILLED)
        return lambda: on(p, APP_BACK)
    return inject


FAULTS = [
    Fault("app killed", True, _app_killed),
    Fault("host lost", True, _host_lost),
    Fault("host paused", True, _paused),
    Fault("monitor<->primary cut", False, _monitor_cut),
    Fault("primary<->standby cut", False, _pair_cut),
    Fault("Redis down on the primary", True, _redis_down),
    Fault("NAS lost by the primary", True, _nas_lost_primary),
    Fault("NAS lost by the standby", False, _nas_lost_standby),
    Fault("damaged segment", False, _damaged_segment),
    Fault("receiver killed", False, _receiver_killed),
    Fault("Redis wiped on the primary", False, _redis_wiped),
    Fault("NAS client killed on the standby", False, _nas_client_killed_standby, hold_s=30),
    Fault("slow NAS (2 Mbit/s, 60 s)", False, _slow_nas, hold_s=60),
    Fault("standby NAS client, healed, then app killed", True, _two_in_sequence(True)),
    Fault("standby NAS client, then app killed at once", True, _two_in_sequence(False)),
]
for _f in FAULTS:
    if _f.name in ("host lost", "host paused"):
        _f.host_stays_up = False
    if _f.name in ("damaged segment", "receiver killed", "Redis wiped on the primary", "NAS client killed on the standby"):
        _f.self_heals = True


class Availability(threading.Thread):
    """A client polling the VIP's /primary every 0.25 s: the longest stretch without a 200."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.longest = 0.0
        self._down_since = None

    def run(self):
        while not self.stop.is_set():
            now = time.monotonic()
            try:
                ok = requests.get(f"{VIP}/primary", timeout=1).status_code == 200
            except requests.RequestException:
                ok = False
            if ok:
                self._down_since = None
            else:
                self._down_since = self._down_since or now
                self.longest = max(self.longest, now - self._down_since)
            self.stop.wait(0.25)


def submit(session: requests.Session, turns: int, timeout: float = 90) -> str:
    """A job accepted through the VIP, retried with one Idempotency-Key until it is (or time runs out)."""
    key = uuid.uuid4().hex
    body = {"script": script(turns)}
    return wait(lambda: (r := session.post(f"{VIP}/api/jobs", json=body, headers={"Idempotency-Key": key},
                                           timeout=5)).status_code in (200, 202) and r.json()["id"],
                timeout, "a job accepted", interval=1)


# Run on the NAS: argv[1] the shared folder, then job ids. A chunk is <index>.<epoch>[.<generation>].wav;
# the newest (epoch, generation) of each index counts.
FRAMES = """
import glob, json, os, re, sys, wave
out = {}
for job in sys.argv[2:]:
    best = {}
    for path in glob.glob(f"{sys.argv[1]}/jobs/{job}/segments/*.wav"):
        m = re.match(r"(\\d+)[.](\\d+)(?:[.](\\d+))?[.]wav$", os.path.basename(path))
        rank = m and (int(m[2]), int(m[3] or 0))
        if m and (int(m[1]) not in best or rank > best[int(m[1])][0]):
            best[int(m[1])] = (rank, path)
    frames = 0
    for _, path in best.values():
        with wave.open(path) as w:
            frames += w.getnframes()
    out[job] = {"segments": len(best), "frames": frames}
print(json.dumps(out))
"""


def check_jobs(session: requests.Session, jobs: dict[str, int]) -> tuple[int, list[str]]:
    """(segments recomputed, problems) for jobs that all ended."""
    problems = []
    stored = json.loads(on("nas", f"python3 -c '{FRAMES}' {SHARED} {' '.join(jobs)}"))
    primary = cluster_state()["primary"]
    recomputed = 0
    for job, turns in jobs.items():
        j = session.get(f"{VIP}/api/jobs/{job}", timeout=5).json()
        if j["status"] == "cancelled":
            continue
        if j["status"] != "done":
            problems.append(f"{job[:8]} ended {j['status']}: {j.get('error')}")
            continue
        audio = session.get(f"{VIP}/api/jobs/{job}/audio", timeout=30)
        with wave.open(io.BytesIO(audio.content)) as w:
            frames = w.getnframes()
        if stored[job]["segments"] != turns or frames != stored[job]["frames"]:
            problems.append(f"{job[:8]}: audio {frames} frames, segments {stored[job]}")
        attempts = redis_cli(primary, f"HGET tts:job:{job} attempts")
        recomputed += max(0, int(attempts or turns) - turns)
    return recomputed, problems


@dataclass
class Round:
    fault: str
    failovers: int = 0
    false_failover: bool = False
    recomputed: int = 0
    lost: int = 0
    unavailable_s: float = 0.0
    double_primary: bool = False
    recovered_by: str = "receiver"
    redundancy_s: float = 0.0            # from the fault's end until both nodes are in their roles
    host_stays_up: bool = True
    problems: list[str] = field(default_factory=list)


def settled(cooldown: bool) -> None:
    def idle():
        runs = receiver_runs()
        if any(r["result"] == "running" for r in runs):
            return False
        ended = [r["ended_at"] for r in runs if r["playbook"] == "failover.yml" and r["ended_at"]]
        return pair_in_role() and (not cooldown or not ended or time.time() - max(ended) > COOLDOWN_S + 5)
    wait(idle, 300, "a healthy, idle pair", interval=1)


ROOM_BYTES = 96 * 1024 * 1024   # the lab NAS is a small tmpfs: a soak fills it in about 20 rounds


def make_room() -> None:
    """Before a round: when the lab NAS runs low, the finished jobs of earlier rounds are dated back and
    removed by the primary's own retention (tts-retention.service), as a month would."""
    free = int(on("nas", f"df --output=avail -B1 {SHARED} | tail -1").strip() or 0)
    if free >= ROOM_BYTES:
        return
    long_ago = int(time.time()) - 60 * 86400
    on("nas", f"for m in {SHARED}/jobs/*/state/done {SHARED}/jobs/*/state/failed {SHARED}/jobs/*/state/cancelled; "
              f"do [ -e \"$m\" ] && touch -d @{long_ago} \"$m\"; done; true")
    on(cluster_state()["primary"], "systemctl start tts-retention.service", timeout=180)
    after = int(on("nas", f"df --output=avail -B1 {SHARED} | tail -1").strip() or 0)
    print(f"         (the lab NAS had {free >> 20} MiB free: retention made it {after >> 20} MiB)", flush=True)


def recover() -> str:
    """Both nodes in role again: by the receiver (rejoin), else as the runbook says (rejoin.yml, which
    also starts an app that stayed down)."""
    try:
        wait(lambda: all(requests.get(f"{u}/health", timeout=2).status_code == 200 for u in NODES.values()), 120,
             "both apps up", interval=1)
        wait(pair_in_role, 90, "the pair in role", interval=1)
        return "receiver"
    except AssertionError:
        operator_playbook("rejoin.yml", cluster_state()["standby"])
        wait(pair_in_role, 120, "the pair in role after rejoin.yml", interval=1)
        return "rejoin.yml by hand"


CURRENT: dict[str, str] = {}


def one_round(rng: random.Random, n: int, faults: list[Fault] = FAULTS, fault: Fault | None = None) -> Round:
    fault = fault or rng.choice(faults)
    CURRENT["fault"] = fault.name
    settled(cooldown=fault.fails_over)
    make_room()
    state = cluster_state()
    primary, standby = state["primary"], state["standby"]
    before = {r["id"] for r in receiver_runs()}
    r = Round(fault.name)
    session = requests.Session()
    session.get(f"{VIP}/api/jobs", timeout=5)           # the session first (it scopes Idempotency-Keys)
    watcher, avail = RoleWatcher(), Availability()
    watcher.start()
    avail.start()
    jobs = {}
    for _ in range(rng.choice((2, 3))):
        turns = rng.randint(6, 12)
        jobs[submit(session, turns)] = turns
    time.sleep(rng.uniform(3, 12))                   # a random moment of the first job
    injected_at = time.monotonic()
    heal_fault = fault.inject(primary, standby, list(jobs))
    try:
        turns = rng.randint(3, 6)
        jobs[submit(session, turns, timeout=150)] = turns   # submitted during the fault
        if fault.fails_over:
            run = wait(lambda: [x for x in receiver_runs() if x["id"] not in before and x["playbook"] == "failover.yml"
                                and x["result"] != "running"], 150, "the failover", interval=0.5)[0]
            if run["result"] != "succeeded":
                r.problems.append(f"failover.yml {run['result']}")
        else:
            time.sleep(fault.hold_s)                # held: no failover may follow
    finally:
        heal_fault()
    healed_at = injected_at if fault.self_heals else time.monotonic()
    r.host_stays_up = fault.host_stays_up
    r.recovered_by = recover()
    r.redundancy_s = round(time.monotonic() - healed_at, 1)
    if fault.host_stays_up and r.redundancy_s > 60:
        r.problems.append(f"redundancy back only {r.redundancy_s} s after the fault")
    wait(lambda: all(session.get(f"{VIP}/api/jobs/{j}", timeout=5).json()["status"] in ("done", "failed", "cancelled")
                     for j in jobs), 400, "every job ended", interval=1)
    watcher.stop.set()
    avail.stop.set()
    watcher.join(5)
    avail.join(5)
    r.double_primary = bool(watcher.double_primary)
    r.unavailable_s = round(avail.longest, 1)
    r.failovers = len([x for x in receiver_runs() if x["id"] not in before and x["playbook"] == "failover.yml"
                       and x["result"] == "succeeded"])
    r.false_failover = r.failovers > 0 and not fault.fails_over
    r.recomputed, problems = check_jobs(session, jobs)
    listed = {j["id"] for j in session.get(f"{VIP}/api/jobs", timeout=10).json().get("jobs", [])}
    problems += [f"job {j} not listed for its session any more" for j in jobs if j not in listed]
    r.problems += problems
    r.lost = len(problems)
    print(f"round {n:2d}: {fault.name:30s} primary {primary}: failovers {r.failovers}{' (FALSE)' if r.false_failover else ''}, "
          f"recomputed {r.recomputed}, lost {r.lost}, longest unavailable {r.unavailable_s} s, "
          f"two primaries {'YES' if r.double_primary else 'no'}, recovered by {r.recovered_by}"
          + (f"; problems: {r.problems}" if r.problems else ""), flush=True)
    return r


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--only", default="", help="draw only the faults whose names contain one of these "
                        "comma-separated words, e.g. --only 'cut,paused,two'")
    args = parser.parse_args()
    words = [w.strip() for w in args.only.split(",") if w.strip()]
    drawn = [f for f in FAULTS if not words or any(w in f.name for w in words)]
    if not drawn:
        print(f"no fault matches --only {args.only!r}: {[f.name for f in FAULTS]}", file=sys.stderr)
        return 2
    ours = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    if f" {SUBNET}.1/" not in ours:
        print(f"the lab network {SUBNET}.0/24 is not on this machine: run `make lab` first", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    started = time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())
    print(f"soak: {args.runs} rounds on {SUBNET}.0/24 ({len(drawn)} fault kinds), seed {seed}, started {started}")
    rounds = []
    started = time.time()
    every = rng.sample(drawn, len(drawn))          # every kind once first, then at random
    for n in range(1, args.runs + 1):
        try:
            rounds.append(one_round(rng, n, drawn, every[n - 1] if n <= len(every) else None))
        except AssertionError as exc:
            print(f"round {n:2d}: could not complete ({CURRENT.get('fault')}): {exc}", flush=True)
            rounds.append(Round("(round failed to complete)", problems=[str(exc)], lost=0))
    faults: dict[str, int] = {}
    for r in rounds:
        faults[r.fault] = faults.get(r.fault, 0) + 1
    print("\n| measure | value |\n|---|---|")
    print(f"| rounds | {len(rounds)} in {(time.time() - started) / 60:.0f} min (seed {seed}) |")
    print(f"| faults | {', '.join(f'{k} x{v}' for k, v in sorted(faults.items()))} |")
    print(f"| failovers | {sum(r.failovers for r in rounds)} |")
    print(f"| false failovers | {sum(r.false_failover for r in rounds)} |")
    print(f"| segments recomputed | {sum(r.recomputed for r in rounds)} |")
    print(f"| lost jobs | {sum(r.lost for r in rounds)} |")
    print(f"| two unfenced primaries | {sum(r.double_primary for r in rounds)} rounds |")
    print(f"| longest unavailability | {max((r.unavailable_s for r in rounds), default=0)} s |")
    print(f"| rounds not completed | {sum(1 for r in rounds if r.fault.startswith('('))} |")
    print("\n| fault | rounds | longest without a 200 (s) | redundancy back after (s, longest) | jobs lost | "
          "two primaries |\n|---|---|---|---|---|---|")
    for name in sorted(faults):
        mine = [r for r in rounds if r.fault == name]
        print(f"| {name} | {len(mine)} | {max(r.unavailable_s for r in mine)} | "
              f"{max(r.redundancy_s for r in mine)}{'' if all(r.host_stays_up for r in mine) else ' (host down)'} | "
              f"{sum(r.lost for r in mine)} | {sum(r.double_primary for r in mine)} |")
    bad = any(r.lost or r.double_primary or r.false_failover or r.fault.startswith("(") or r.unavailable_s > 10
              or (r.host_stays_up and r.redundancy_s > 60) for r in rounds)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
