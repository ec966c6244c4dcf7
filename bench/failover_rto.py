#!/usr/bin/env python3
"""Benchmark: recovery time of the lab pair, measured by real drills (playbooks/drill.yml).

Runs N drills of each mode on the running lab (`make lab` first), each exactly as the ctl timer
does (`tts-drill-run MODE` inside the ctl container; host-lost drills ask this machine to
`podman kill` the primary's container, served by lab/host_requests.py), reads each report from shared storage, and
prints, per mode, the median and p95 of the RTO and of every timeline stage, and the segments
recomputed, beside the source design's figure: the standby took over 22 s after a simulated
out-of-memory crash of the primary, and the job in flight lost all its progress.
Between drills it waits for the pair to be healthy and the receiver's cooldown to pass.
Prints numbers; asserts nothing.

    python bench/failover_rto.py [--runs 5] [--modes switchover,kill,host-lost,redis-down] [--inventory inventory/lab/hosts.yml]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "service"))
sys.path.insert(0, str(ROOT / "lab"))
from host_requests import serve_while  # noqa: E402
from tts_service.drill.report import REFERENCE_RTO_S, STAGES  # noqa: E402

from inventory import LAB_INVENTORY, Lab  # noqa: E402


def podman(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


def report_ids(lab: Lab) -> set[str]:
    out = podman("exec", lab.container("nas"), "ls", f"{lab.shared_on_nas}/drills", timeout=30)
    return {n[:-5] for n in out.stdout.split() if n.endswith(".json")}


def read_report(lab: Lab, drill_id: str) -> dict:
    path = f"{lab.shared_on_nas}/drills/{drill_id}.json"
    return json.loads(podman("exec", lab.container("nas"), "cat", path, timeout=30).stdout)


def wait_calm(lab: Lab, cooldown: float, timeout: float = 300) -> None:
    """Both nodes fit for their roles and no failover in the receiver's cooldown."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ready = [requests.get(f"{lab.node_url(n)}/ready", timeout=2).status_code for n in lab.nodes]
            token = podman("exec", lab.container("ctl"), "cat", "/etc/prometheus/alert-token", timeout=30).stdout.strip()
            runs = requests.get(f"http://{lab.ctl}:{lab.port('receiver')}/runs", headers={"Authorization": f"Bearer {token}"},
                                timeout=5).json()["runs"]
            busy = any(r["result"] == "running" for r in runs)
            recent = [r["ended_at"] for r in runs if r["playbook"] == "failover.yml" and r["ended_at"]]
            if ready == [200, 200] and not busy and (not recent or time.time() - max(recent) > cooldown):
                return
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(2)
    raise SystemExit("the lab did not settle (both nodes ready, receiver idle); is `make lab` up?")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, math.ceil(q * len(values)) - 1)]


def fmt(values: list[float]) -> str:
    if not values:
        return f"{'—':>8} {'—':>8}"
    return f"{statistics.median(values):8.2f} {pct(values, 0.95):8.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--modes", default="switchover,kill,host-lost,redis-down")
    parser.add_argument("--inventory", default=str(LAB_INVENTORY), help="the pair's hosts.yml (the lab's by default)")
    parser.add_argument("--cooldown", type=float, help="seconds after a failover before the next drill (default: "
                        "the drill's own cooldown, failover_drill_cooldown_s, plus 5)")
    args = parser.parse_args()
    lab = Lab.load(args.inventory)
    if args.cooldown is None:
        args.cooldown = float(lab.var("failover_drill_cooldown_s")) + 5

    results: dict[str, list[dict]] = {}
    for mode in args.modes.split(","):
        results[mode] = []
        for i in range(args.runs):
            wait_calm(lab, args.cooldown)
            before = report_ids(lab)
            started = time.time()
            with serve_while(lab.prefix):
                run = podman("exec", lab.container("ctl"), "/usr/local/bin/tts-drill-run", mode)
            new = sorted(report_ids(lab) - before)
            if not new:
                print(f"{mode} #{i + 1}: no report (exit {run.returncode}):\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
                continue
            rep = read_report(lab, new[-1])
            results[mode].append(rep)
            print(f"{mode} #{i + 1}: {rep['result']}, RTO {rep['rto_s']} s, unserved {rep.get('unserved_s')} s, "
                  f"{(rep.get('canary') or {}).get('segments_recomputed')} recomputed, "
                  f"drill took {time.time() - started:.0f} s  ({new[-1]})", flush=True)

    print(f"\nFailover RTO on the lab ({args.runs} drills per mode; seconds after the fault; median / p95)")
    print(f"Reference (source design): standby took over after {REFERENCE_RTO_S:.0f} s, the job in flight lost.")
    for mode, reports in results.items():
        good = [r for r in reports if r["result"] == "succeeded"]
        print(f"\n  mode {mode}: {len(good)}/{len(reports)} drills succeeded")
        print(f"  {'stage':48s} {'median':>8} {'p95':>8}")
        for key, label in STAGES[1:]:
            values = [r["timeline_s"][key] for r in good if r["timeline_s"].get(key) is not None]
            print(f"  {label:48s} {fmt(values)}")
        rto = [r["rto_s"] for r in good if r.get("rto_s") is not None]
        print(f"  {'RTO (first 200 from the new primary, VIP)':48s} {fmt(rto)}   reference {REFERENCE_RTO_S:.0f}")
        unserved = [r["unserved_s"] for r in good if r.get("unserved_s") is not None]
        print(f"  {'no 200 through the VIP (seconds)':48s} {fmt(unserved)}")
        again = [r["timeline_s"]["job_running_again"] - r["rto_s"] for r in good
                 if r.get("rto_s") is not None and r["timeline_s"].get("job_running_again") is not None]
        print(f"  {'job running again, after the RTO':48s} {fmt(again)}")
        recomputed = [float((r.get("canary") or {}).get("segments_recomputed") or 0) for r in good]
        print(f"  {'segments recomputed':48s} {fmt(recomputed)}   reference: all (job lost)")


if __name__ == "__main__":
    main()
