"""The fence: stop the old primary for certain, on it, and record the confirmation.

roles/tts_cluster/tasks/fence.yml runs this file on the node being fenced (after the promotion), as
root, with the node's own python3 and nothing else: it is handed over with the task, not installed, so
that a receiver whose playbooks are newer than the node's service still fences it (the confirmation
goes through `tts-cluster confirm-fenced`, which every version of the service has).

1. Print which of the app's service units were running (one per line, flushed at once: failover.yml
   starts them again, fenced, once the switch is done).
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
   that the new primary stops waiting for this node's belief to expire. Tried once.
5. Done (exit 0) when every unit of the fence has stopped; exit 1 if some still has not after
   `attempts` checks. A command that fails is said on stderr and the fence goes on.

The commands go through `System` (systemctl, ip, the cgroup tree), so that the sequence is tested on a
machine without systemd (tests/unit/test_fence.py) and runs for real on the nodes (Molecule).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

KEEPALIVED = "keepalived"
STOPPED_STATES = {"inactive", "failed"}
RUNNING_STATES = {"active", "reloading"}          # what `systemctl is-active` calls active


class System:
    """The node's service manager and network, as the fence uses them."""

    def __init__(self, cgroup_root: Path = Path("/sys/fs/cgroup")):
        self.cgroup_root = cgroup_root

    def run(self, argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
        """A command's result; a command that cannot start or runs too long is a failed result, never
        an exception (the fence goes on)."""
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout:g} s")
        except OSError as exc:
            return subprocess.CompletedProcess(argv, 127, "", str(exc))

    def units(self, names: list[str]) -> dict[str, dict[str, str]]:
        """ActiveState and ControlGroup of each unit, in one `systemctl show` (its blocks come in the order
        of the names; a block missing reads as a unit not stopped)."""
        out = self.run(["systemctl", "show", "-p", "ActiveState", "-p", "ControlGroup", *names]).stdout
        found: dict[str, dict[str, str]] = {}
        for name, block in zip(names, out.strip().split("\n\n"), strict=False):
            found[name] = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        return found

    def cgroup_procs(self, cgroup: str) -> str | None:
        """The processes left in a unit's cgroup, or None when the list cannot be read."""
        try:
            return (self.cgroup_root / cgroup.lstrip("/") / "cgroup.procs").read_text()
        except OSError:
            return None

    def addresses(self) -> list[tuple[str, str]]:
        """(interface, address/prefix) of every address on this host."""
        pairs = []
        for line in self.run(["ip", "-o", "addr", "show"]).stdout.splitlines():
            fields = line.split()
            if len(fields) >= 4:
                pairs.append((fields[1], fields[3]))
        return pairs


@dataclass
class FenceResult:
    was_running: list[str]               # the app's service units that were running
    confirmed: bool = False              # the confirmation is in the cluster state
    stopped: bool = False                # every unit of the fence stopped
    notes: list[str] = field(default_factory=list)


def fence(system: System, *, service_units: list[str], app_units: list[str], units: list[str], track_file: Path,
          vip: str, confirm: Callable[[], None], attempts: int = 50, interval_s: float = 0.2,
          sleep: Callable[[float], None] = time.sleep, said: Callable[[str], None] = lambda unit: None) -> FenceResult:
    """Stop `units` for certain (`app_units` among them), take the VIP away, and call `confirm` once the
    app's units are down with no process left; `said` is called at once with each of `service_units`
    (the app's long-running units) that was running. See the module's docstring for the order and why."""
    states = system.units(service_units)
    result = FenceResult([u for u in service_units if states.get(u, {}).get("ActiveState") in RUNNING_STATES])
    for unit in result.was_running:
        said(unit)

    def run(argv: list[str], timeout: float | None = None, quiet: bool = False) -> subprocess.CompletedProcess:
        done = system.run(argv, timeout)
        if done.returncode != 0 and not quiet:
            result.notes.append(f"{' '.join(argv)}: exit {done.returncode} {done.stderr.strip()[:200]}")
        return done

    rest = [u for u in units if u != KEEPALIVED]
    run(["systemctl", "kill", "--signal=SIGKILL", *rest], quiet=True)   # units not running: nothing to kill
    run(["systemctl", "stop", "--no-block", *rest])
    try:
        tmp = track_file.with_name(track_file.name + ".fence")
        tmp.write_text("1\n")
        os.replace(tmp, track_file)
    except OSError as exc:
        result.notes.append(f"could not write the VIP track file {track_file}: {exc}")
    run(["systemctl", "stop", KEEPALIVED], timeout=3, quiet=True)
    run(["systemctl", "kill", "--signal=SIGKILL", KEEPALIVED], quiet=True)
    run(["systemctl", "stop", "--no-block", KEEPALIVED])
    for dev, address in system.addresses():           # on whichever interface holds it
        if address == vip and run(["ip", "addr", "del", vip, "dev", dev]).returncode == 0:
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


def confirm_with_cli(cli: str, shared_dir: str, by: str, node: str, epoch: int) -> Callable[[], None]:
    """The confirmation through the node's `tts-cluster confirm-fenced` (its storage timeouts apply)."""
    def confirm() -> None:
        done = subprocess.run([cli, "--shared-dir", shared_dir, "--by", by, "confirm-fenced", node, "--epoch", str(epoch)],
                              capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip()[-300:] or f"exit {done.returncode}")
    return confirm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tts-fence", description="Stop this node, the old primary, for certain.")
    parser.add_argument("node")
    parser.add_argument("--epoch", type=int, required=True, help="the new epoch (the one the promotion made)")
    parser.add_argument("--by", required=True, help="who records the confirmation")
    parser.add_argument("--cli", required=True, help="the node's tts-cluster")
    parser.add_argument("--shared-dir", required=True)

    def names(value: str) -> list[str]:
        return [unit for unit in value.split(",") if unit]
    parser.add_argument("--units", type=names, required=True, help="every unit of the fence")
    parser.add_argument("--app-units", type=names, required=True, help="the app's units: confirmed once these are down")
    parser.add_argument("--service-units", type=names, required=True, help="the app's units to report if running")
    parser.add_argument("--track-file", type=Path, required=True)
    parser.add_argument("--vip", required=True, help="the VIP as address/prefix, removed from any interface")
    args = parser.parse_args(argv)
    result = fence(System(), service_units=args.service_units, app_units=args.app_units, units=args.units,
                   track_file=args.track_file, vip=args.vip,
                   confirm=confirm_with_cli(args.cli, args.shared_dir, args.by, args.node, args.epoch),
                   said=lambda unit: print(unit, flush=True))
    for note in result.notes:
        print(note, file=sys.stderr)
    return 0 if result.stopped else 1


if __name__ == "__main__":
    sys.exit(main())
