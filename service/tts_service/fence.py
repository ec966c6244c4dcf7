"""`tts-cluster fence`: stop the old primary for certain, on it, and record the confirmation.

Run on the node being fenced (failover.yml, after the promotion), as root:

1. Note which of the app's units were running (printed, one per line: started again, fenced, once the
   switch is done).
2. Kill (SIGKILL) and stop every unit of the fence but keepalived. `systemctl kill` alone was undone
   within a second by Restart=; a stop, queued at once (--no-block, so that a process stuck on a hung
   NAS cannot hold this step), cancels the pending restart, and the units stay down.
3. The VIP, gracefully: the track file says this node is no longer the primary (keepalived drops the
   address at once, and so will the next keepalived started here until the worker reads that this
   node is primary again); a stopping keepalived drops the address and tells its peer (priority 0);
   one that does not stop within 3 s is killed, and the address it left on any interface is removed
   (a SIGKILLed keepalived left it there, and both nodes held the VIP until a rejoin).
4. Once the app's units are inactive with no process left in their cgroups (a process stuck in the
   kernel keeps its cgroup: no confirmation then), the confirmation goes into the cluster state, so
   that the new primary stops waiting for this node's belief to expire.
5. Done when every unit of the fence has stopped; exit 1 if some still has not after `attempts` checks.

The commands go through `System` (systemctl, ip, the cgroup tree), so that the sequence is tested
on a machine without systemd (tests/unit/test_fence.py) and runs for real on the nodes (Molecule).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

KEEPALIVED = "keepalived"
STOPPED_STATES = {"inactive", "failed"}


class System:
    """The node's service manager and network, as the fence uses them."""

    def __init__(self, cgroup_root: Path = Path("/sys/fs/cgroup")):
        self.cgroup_root = cgroup_root

    def run(self, argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout:g} s")

    def units(self, names: list[str]) -> dict[str, dict[str, str]]:
        """ActiveState and ControlGroup of each unit, in one `systemctl show` (its blocks come in the order
        of the names; a block missing reads as a unit not stopped)."""
        out = self.run(["systemctl", "show", "-p", "ActiveState", "-p", "ControlGroup", *names]).stdout
        found: dict[str, dict[str, str]] = {}
        for name, block in zip(names, out.strip().split("\n\n"), strict=False):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            found[name] = props
        return found

    def cgroup_procs(self, cgroup: str) -> str | None:
        """The processes left in a unit's cgroup, or None when the list cannot be read."""
        try:
            return (self.cgroup_root / cgroup.lstrip("/") / "cgroup.procs").read_text()
        except OSError:
            return None

    def addresses(self) -> list[tuple[str, str]]:
        """(interface, address/prefix) of every IPv4 address on this host."""
        out = self.run(["ip", "-o", "-4", "addr", "show"]).stdout
        pairs = []
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 4:
                pairs.append((fields[1], fields[3]))
        return pairs


@dataclass
class FenceResult:
    was_running: list[str]               # the app's units that were running
    confirmed: bool = False              # the confirmation is in the cluster state
    stopped: bool = False                # every unit of the fence stopped
    notes: list[str] = field(default_factory=list)


def fence(system: System, *, service_units: list[str], app_units: list[str], units: list[str], track_file: Path,
          vip: str, confirm: Callable[[], None], attempts: int = 50, interval_s: float = 0.2,
          sleep: Callable[[float], None] = time.sleep) -> FenceResult:
    """Stop `units` for certain (`app_units` among them), take the VIP away, and call `confirm` once the
    app's units are down with no process left; report which of `service_units` (the app's long-running
    units) were running. See the module's docstring for the order and why."""
    states = system.units(service_units)
    result = FenceResult([u for u in service_units if states.get(u, {}).get("ActiveState") == "active"])
    rest = [u for u in units if u != KEEPALIVED]
    system.run(["systemctl", "kill", "--signal=SIGKILL", *rest])
    system.run(["systemctl", "stop", "--no-block", *rest])

    try:
        tmp = track_file.with_name(track_file.name + ".fence")
        tmp.write_text("1\n")
        os.replace(tmp, track_file)
    except OSError as exc:
        result.notes.append(f"could not write the VIP track file {track_file}: {exc}")
    if KEEPALIVED in units:
        system.run(["systemctl", "stop", KEEPALIVED], timeout=3)
        system.run(["systemctl", "kill", "--signal=SIGKILL", KEEPALIVED])
        system.run(["systemctl", "stop", "--no-block", KEEPALIVED])
    for dev, address in system.addresses():
        if address == vip and system.run(["ip", "addr", "del", vip, "dev", dev]).returncode == 0:
            result.notes.append(f"removed the VIP {vip} that keepalived left on {dev}")

    tried = False
    for attempt in range(attempts):
        if not tried and _all_stopped(system, app_units):
            tried = True                         # once: a refusal is not retried
            try:
                confirm()
                result.confirmed = True
            except Exception as exc:  # whatever failed, the new primary waits for the belief to expire
                result.notes.append(f"could not record the confirmation ({exc}): the new primary waits for "
                                    "this node's belief to expire")
        if _all_stopped(system, units):
            result.stopped = True
            break
        if attempt < attempts - 1:
            sleep(interval_s)
    if not result.stopped:
        result.notes.append(f"still stopping after {attempts * interval_s:g} s: {' '.join(units)}")
    return result


def _all_stopped(system: System, units: list[str]) -> bool:
    """Every unit inactive or failed, with no process left in its cgroup (an unreadable one counts as busy)."""
    states = system.units(units)
    for unit in units:
        props = states.get(unit, {})
        if props.get("ActiveState") not in STOPPED_STATES:
            return False
        cgroup = props.get("ControlGroup", "")
        if cgroup:
            procs = system.cgroup_procs(cgroup)
            if procs is None or procs.strip():
                return False
    return True


def report(result: FenceResult) -> int:
    """What failover.yml reads: the units that were running on stdout, notes on stderr; exit 1 when
    some unit did not stop."""
    for unit in result.was_running:
        print(unit)
    for note in result.notes:
        print(note, file=sys.stderr)
    return 0 if result.stopped else 1
