"""The fence (roles/tts_cluster/files/tts_fence.py, run on the old primary by fence.yml): its units stopped for
certain, the VIP taken away, and the confirmation recorded only once the app's units are down with no
process left. systemd is played by a small stand-in (this machine has no systemd as PID 1): units that
stop some checks after a stop is queued, cgroups that keep a stuck process; the real one runs in
Molecule's failover suites (test_20, test_40)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from tts_service.cluster import Cluster
from tts_service.storage import Storage

# The fence is a file the role hands over (not part of the service): loaded here from the role.
_SPEC = importlib.util.spec_from_file_location(
    "tts_fence", Path(__file__).resolve().parents[2] / "roles/tts_cluster/files/tts_fence.py")
tts_fence = importlib.util.module_from_spec(_SPEC)
sys.modules["tts_fence"] = tts_fence
_SPEC.loader.exec_module(tts_fence)
System, fence = tts_fence.System, tts_fence.fence

UNITS = ["keepalived", "tts-worker", "tts-web", "tts-api", "tts-retention", "redis-server"]
APP = ["tts-worker", "tts-web", "tts-api", "tts-retention"]
SERVICE = ["tts-worker", "tts-web", "tts-api"]
VIP = "10.89.61.100/24"


class FakeSystemd(System):
    """Units with a state and a cgroup; a queued stop takes `stop_checks` state reads to finish."""

    def __init__(self, tmp_path: Path, running=("tts-worker", "tts-web", "tts-api", "redis-server", "keepalived"),
                 stop_checks=2, stuck=(), unreadable=(), vip_on=("eth0",)):
        super().__init__(cgroup_root=tmp_path / "cgroup")
        self.state = {u: ("active" if u in running else "inactive") for u in UNITS}
        self.countdown: dict[str, int] = {}
        self.stop_checks = stop_checks
        self.stuck, self.unreadable = set(stuck), set(unreadable)
        self.addrs = [("lo", "127.0.0.1/8"), *((dev, VIP) for dev in vip_on)]
        self.calls: list[list[str]] = []
        for unit in UNITS:
            folder = self.cgroup_root / "system.slice" / f"{unit}.service"
            folder.mkdir(parents=True)
            if unit not in self.unreadable:
                (folder / "cgroup.procs").write_text("123\n" if unit in self.stuck or unit in running else "")

    def run(self, argv, timeout=None):
        self.calls.append(argv)
        if argv[:2] == ["systemctl", "stop"]:
            for unit in (a for a in argv[2:] if not a.startswith("-")):
                self.countdown.setdefault(unit, self.stop_checks)
        if argv[:3] == ["ip", "addr", "del"]:
            self.addrs = [(d, a) for d, a in self.addrs if not (a == argv[3] and d == argv[5])]
        return subprocess.CompletedProcess(argv, 0, "", "")

    def units(self, names):
        for unit, left in list(self.countdown.items()):
            if left <= 0:
                self.state[unit] = "inactive"
                if unit not in self.stuck and unit not in self.unreadable:
                    (self.cgroup_root / "system.slice" / f"{unit}.service" / "cgroup.procs").write_text("")
            else:
                self.countdown[unit] = left - 1
        return {u: {"ActiveState": self.state[u], "ControlGroup": f"/system.slice/{u}.service"} for u in names}

    def addresses(self):
        return list(self.addrs)


@pytest.fixture
def cluster(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    c = Cluster(Storage(shared), shared / "cluster")
    c.init("tts-a", "tts-b", "test")
    c.promote("tts-b", 1, "test")              # epoch 2: tts-a, the old primary, is its standby
    return c


def run_fence(system, cluster, tmp_path, **kw):
    kw.setdefault("attempts", 10)
    return fence(system, service_units=SERVICE, app_units=APP, units=UNITS, track_file=tmp_path / "track",
                 vip=VIP, confirm=lambda: cluster.confirm_fenced("tts-a", 2, "failover.yml"),
                 sleep=lambda s: None, **kw)


def test_every_unit_is_stopped_the_vip_taken_away_and_the_confirmation_recorded(tmp_path, cluster):
    system = FakeSystemd(tmp_path)
    result = run_fence(system, cluster, tmp_path)
    assert result.stopped and result.confirmed
    assert result.was_running == ["tts-worker", "tts-web", "tts-api"]
    assert all(system.state[u] == "inactive" for u in UNITS)
    state = cluster.read()
    assert (state.fenced_node, state.fenced_epoch) == ("tts-a", 2)
    assert (tmp_path / "track").read_text() == "1\n"            # keepalived may not take the VIP here
    assert ("eth0", VIP) not in system.addresses()
    assert any("removed the VIP" in n for n in result.notes)


def test_the_units_are_killed_and_stopped_before_keepalived_is_asked_to_stop_gracefully(tmp_path, cluster):
    system = FakeSystemd(tmp_path)
    run_fence(system, cluster, tmp_path)
    kill, stop = system.calls[0], system.calls[1]         # (state reads are not commands here)
    assert kill[:3] == ["systemctl", "kill", "--signal=SIGKILL"] and "keepalived" not in kill
    assert set(kill[3:]) == set(UNITS) - {"keepalived"}
    assert stop[:3] == ["systemctl", "stop", "--no-block"] and set(stop[3:]) == set(kill[3:])
    graceful = system.calls.index(["systemctl", "stop", "keepalived"])
    assert graceful > 1 and system.calls[graceful + 1] == ["systemctl", "kill", "--signal=SIGKILL", "keepalived"]


def test_a_process_stuck_in_an_app_units_cgroup_means_no_confirmation(tmp_path, cluster):
    """A process stuck in the kernel (on a hung NAS) keeps its cgroup: the node is not fenced for
    certain, so nothing is recorded and the new primary waits for the belief to expire."""
    system = FakeSystemd(tmp_path, stuck=["tts-worker"])
    result = run_fence(system, cluster, tmp_path)
    assert not result.confirmed and not result.stopped
    assert cluster.read().fenced_node in (None, "")
    assert any("still stopping" in n for n in result.notes)


def test_a_cgroup_that_cannot_be_read_counts_as_busy(tmp_path, cluster):
    system = FakeSystemd(tmp_path, unreadable=["tts-api"])
    result = run_fence(system, cluster, tmp_path)
    assert not result.confirmed and not result.stopped


def test_a_refused_confirmation_is_said_and_tried_once_and_the_fence_still_completes(tmp_path, cluster):
    system = FakeSystemd(tmp_path)
    tries = []

    def refused():
        tries.append(1)
        raise RuntimeError("epoch is 3, not 2")

    result = fence(system, service_units=SERVICE, app_units=APP, units=UNITS, track_file=tmp_path / "track",
                   vip=VIP, confirm=refused, attempts=10, sleep=lambda s: None)
    assert result.stopped and not result.confirmed and tries == [1]
    assert any("could not record the confirmation (epoch is 3, not 2)" in n for n in result.notes)


def test_the_running_service_units_are_said_before_anything_is_stopped(tmp_path, cluster):
    """failover.yml starts again what was running: it is printed first (flushed), so that a fence cut
    short still said it."""
    system = FakeSystemd(tmp_path, running=("tts-web", "redis-server"))
    said = []
    result = fence(system, service_units=SERVICE, app_units=APP, units=UNITS, track_file=tmp_path / "track",
                   vip=VIP, confirm=lambda: None, attempts=10, sleep=lambda s: None,
                   said=lambda unit: said.append((unit, len(system.calls))))
    assert said == [("tts-web", 0)] and result.was_running == ["tts-web"]


def test_a_command_that_cannot_start_is_a_failed_result_and_the_fence_goes_on(tmp_path):
    done = System().run(["/nonexistent/systemctl", "stop", "x"])
    assert done.returncode == 127 and "No such file" in done.stderr


def test_the_confirmation_goes_through_the_nodes_tts_cluster(tmp_path, cluster):
    """As on the node: `tts-cluster confirm-fenced`, which every version of the service has; a refusal
    (an epoch that has passed) is an error with the CLI's sentence."""
    cli = str(Path(sys.executable).parent / "tts-cluster")
    shared = str(cluster.dir.parent)
    tts_fence.confirm_with_cli(cli, shared, "failover.yml", "tts-a", 2)()
    assert (cluster.read().fenced_node, cluster.read().fenced_epoch) == ("tts-a", 2)
    with pytest.raises(RuntimeError, match="not 1"):
        tts_fence.confirm_with_cli(cli, shared, "failover.yml", "tts-a", 1)()


def test_systemctl_shows_blocks_in_the_order_of_the_names(tmp_path):
    """System.units reads one `systemctl show` of several units: blocks separated by blank lines."""
    class Shown(System):
        def run(self, argv, timeout=None):
            out = ("ActiveState=inactive\nControlGroup=\n\n"
                   "ActiveState=active\nControlGroup=/system.slice/tts-web.service\n")
            return subprocess.CompletedProcess(argv, 0, out, "")
    states = Shown().units(["tts-worker", "tts-web"])
    assert states["tts-worker"]["ActiveState"] == "inactive"
    assert states["tts-web"] == {"ActiveState": "active", "ControlGroup": "/system.slice/tts-web.service"}
