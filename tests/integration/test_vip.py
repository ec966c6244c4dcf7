"""Each node exports whether it holds the entry VIP (tts_vip_held), read from its interfaces: the
TTSVipNotSingle alert counts the holders (two: clients split between the primary and a node that
cannot serve them; none: nobody gets in)."""
import time
from dataclasses import replace

import pytest


@pytest.mark.parametrize("vip, held", [("127.0.0.1", 1.0), ("192.0.2.77", 0.0)])
def test_the_node_says_whether_the_vip_is_on_its_interfaces(rt, vip, held):
    from tts_service.app import create_app
    metrics = create_app(replace(rt.settings, vip=vip)).test_client().get("/metrics").get_data(as_text=True)
    assert f'tts_vip_held{{node="tts-a"}} {held}' in metrics, [m for m in metrics.splitlines() if "vip" in m]


def test_without_a_vip_setting_nothing_is_claimed(api):
    assert "tts_vip_held" not in api.get("/metrics").get_data(as_text=True)


# ---- only the cluster state's primary may hold the VIP (vip.py, keepalived's track_file) ----

def vip_worker(rt, tmp_path):
    from tts_service.worker import Worker
    return Worker(rt), tmp_path / "vip-track"


def test_the_track_file_lets_only_the_cluster_states_primary_hold_the_vip(rt, tmp_path):
    """A cut between the nodes left both holding the VIP (keepalived cannot tell a cut from a dead
    peer); the track file follows the store: 0 (may hold) on its primary, 1 (FAULT) on any other node."""
    worker, path = vip_worker(rt, tmp_path)
    assert worker.sync_vip(path) == "0" and path.read_text() == "0\n"     # tts-a is the primary of epoch 1
    rt.cluster.promote("tts-b", expect_epoch=1, by="test")
    time.sleep(rt.settings.state_cache_s + 0.05)
    assert worker.sync_vip(path) == "1" and path.read_text() == "1\n"     # tts-b now: tts-a lets go


def test_what_keepalived_wrote_at_its_start_is_corrected(rt, tmp_path):
    """keepalived creates the file saying 1 when it is missing (a reboot empties /run); the primary's
    worker must set it right again, not trust what it wrote last."""
    worker, path = vip_worker(rt, tmp_path)
    worker.sync_vip(path)
    path.write_text("1\n")
    assert worker.sync_vip(path) == "0" and path.read_text() == "0\n"


def cut_from_storage(rt, monkeypatch):
    from tts_service.storage import StorageUnavailable

    def cut(node, timeout=None):
        raise StorageUnavailable("shared storage did not answer within 0.8 s")
    monkeypatch.setattr(rt.node.cluster, "touch_alive", cut)


def test_one_failed_read_of_the_state_leaves_the_track_file_as_it_was(rt, tmp_path, monkeypatch):
    worker, path = vip_worker(rt, tmp_path)
    assert worker.sync_vip(path) == "0"
    cut_from_storage(rt, monkeypatch)
    time.sleep(rt.settings.state_cache_s + 0.05)
    assert worker.sync_vip(path) is None
    assert path.read_text() == "0\n"      # neither claimed nor let go on one failed read


def test_a_primary_that_cannot_read_the_state_any_more_lets_the_vip_go(rt, tmp_path, monkeypatch):
    """A primary paused (or cut off) while the pair failed over resumes as VRRP master with the higher
    priority: if it then cannot read the new epoch, it must still not take the VIP back."""
    worker, path = vip_worker(rt, tmp_path)
    assert worker.sync_vip(path) == "0"
    cut_from_storage(rt, monkeypatch)
    monkeypatch.setattr(rt.node, "max_age_s", 0.3)
    time.sleep(0.4)
    assert worker.sync_vip(path) == "1" and path.read_text() == "1\n"


def test_a_root_only_file_left_by_keepalived_is_replaced(rt, tmp_path, monkeypatch):
    """keepalived's init_file makes the file root-only (0600) when it starts before the worker: the
    worker (user tts) cannot read it, and must replace it rather than give up (the tests run as root,
    who reads anything: the refusal is the kernel's answer to the worker, given here)."""
    from pathlib import Path
    worker, path = vip_worker(rt, tmp_path)
    path.write_text("1\n")
    path.chmod(0o600)
    read = Path.read_text

    def as_the_worker(self, *a, **kw):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return read(self, *a, **kw)
    monkeypatch.setattr(Path, "read_text", as_the_worker)
    assert worker.sync_vip(path) == "0"
    monkeypatch.undo()
    assert path.read_text() == "0\n" and path.stat().st_mode & 0o777 == 0o644


def test_the_worker_keeps_the_track_file_in_step_by_itself(rt, tmp_path):
    """The loop, as the unit runs it (TTS_VIP_TRACK_FILE): a promotion reaches the file within a
    second, with no request to anyone."""
    import threading
    from dataclasses import replace

    from tts_service.worker import Worker
    path = tmp_path / "vip-track"
    worker = Worker(replace(rt, settings=replace(rt.settings, vip_track_file=str(path))))
    thread = threading.Thread(target=worker._vip_loop, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not (path.exists() and path.read_text() == "0\n") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.read_text() == "0\n"
        rt.cluster.promote("tts-b", expect_epoch=1, by="test")
        deadline = time.monotonic() + 10
        while path.read_text() != "1\n" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.read_text() == "1\n"
    finally:
        worker.stopping.set()
        thread.join(5)


def test_a_track_file_that_cannot_be_written_is_said_once_and_retried(rt, tmp_path, caplog):
    """On a first deploy the app starts before the keepalived role makes the file's folder."""
    worker = vip_worker(rt, tmp_path)[0]
    path = tmp_path / "not-yet" / "vip-track"
    with caplog.at_level("WARNING", logger="tts.worker"):
        assert worker.sync_vip(path) is None and worker.sync_vip(path) is None
    assert len([r for r in caplog.records if "VIP track file" in r.getMessage()]) == 1
    path.parent.mkdir()
    assert worker.sync_vip(path) == "0" and path.read_text() == "0\n"
