"""The drill orchestrator's promises that need no pair: a fault is injected only once the cluster
lock is free, and a fault whose lifting failed is lifted again. Real cluster state on a real folder;
the drill's hands on the hosts (Ansible) are a stand-in that records the commands (named as such)."""
from pathlib import Path

import pytest
from tts_service.cluster import Cluster
from tts_service.drill.run import Drill, Plan, StepFailed
from tts_service.lockkeeper import LockKeeper
from tts_service.storage import Storage


class RecordingHands:
    """Stands in for Ansible: records each command and answers from a list of exit statuses."""

    def __init__(self, statuses=()):
        self.commands, self.statuses = [], list(statuses)

    def command(self, host, argv, timeout=120):
        self.commands.append((host, argv))
        return (self.statuses.pop(0) if self.statuses else 0), "1795000000.5\n"


def drill(tmp_path: Path, hands, mode="kill") -> Drill:
    plan = Plan.from_dict({"mode": mode, "shared_dir": str(tmp_path), "vip": "http://127.0.0.1:9", "receiver": "",
                           "nodes": {}, "project": str(tmp_path), "inventory": "unused", "lock_ttl_s": 30})
    d = Drill(plan, ansible=hands, workdir=tmp_path)
    d.cluster.init("tts-a", "tts-b", "test")
    d.record.before = {"primary": "tts-a", "standby": "tts-b", "epoch": 1}
    return d


def test_no_fault_is_injected_while_the_cluster_lock_cannot_be_released(tmp_path):
    hands = RecordingHands()
    d = drill(tmp_path, hands)
    d.keeper = LockKeeper(d.cluster, "drill.yml", 30)
    d.keeper.token = "not-the-holders-token"   # someone else holds the lock: the receiver is kept out
    Cluster(Storage(tmp_path), tmp_path / "cluster").acquire_lock("switchover.yml", 30)
    with pytest.raises(StepFailed, match="no fault injected"):
        d.inject_fault()
    assert hands.commands == [] and not d.fault_injected


def test_the_fault_is_injected_once_the_lock_is_free_and_timed_from_when_it_struck(tmp_path):
    hands = RecordingHands()
    d = drill(tmp_path, hands)
    d.take_lock()
    d.inject_fault()
    assert hands.commands == [("tts-a", ["/usr/local/sbin/tts-fault", "app-killed"])]
    assert d.cluster.lock_holder() is None and d.fault_injected
    assert d.record.fault_at == 1795000000.5


def test_a_fault_whose_lifting_failed_is_lifted_again(tmp_path):
    hands = RecordingHands(statuses=[0, 255, 0])   # inject, a failed app-back, then one that works
    d = drill(tmp_path, hands)
    d.take_lock()
    d.inject_fault()
    with pytest.raises(StepFailed):
        d.undo_fault()
    assert d.fault_injected                   # still owed
    d.undo_fault()
    assert not d.fault_injected
    assert [argv[1] for _, argv in hands.commands] == ["app-killed", "app-back", "app-back"]
