import json
import shutil
import time

import pytest
from tts_service.cluster import Cluster, ClusterError, LockHeld
from tts_service.node import Fenced, NodeView
from tts_service.storage import Storage

from tests.harness import cluster_cli, wait_for


@pytest.fixture
def cluster(shared):
    return Cluster(Storage(shared), shared / "cluster")


def test_init_only_once(cluster):
    state = cluster.init("tts-a", "tts-b", by="test")
    assert (state.epoch, state.primary, state.standby) == (1, "tts-a", "tts-b")
    with pytest.raises(ClusterError, match="already exists"):
        cluster.init("tts-b", "tts-a", by="test")
    assert cluster.read().primary == "tts-a"


def test_promote_is_compare_and_swap(cluster):
    cluster.init("tts-a", "tts-b", by="test")
    state = cluster.promote("tts-b", expect_epoch=1, by="failover.yml")
    assert (state.epoch, state.primary, state.standby, state.updated_by) == (2, "tts-b", "tts-a", "failover.yml")
    with pytest.raises(ClusterError, match="epoch is 2, not 1"):
        cluster.promote("tts-a", expect_epoch=1, by="late failover")
    assert cluster.read().epoch == 2


def test_promote_refuses_strangers_and_bad_names(cluster):
    cluster.init("tts-a", "tts-b", by="test")
    with pytest.raises(ClusterError, match="neither the primary"):
        cluster.promote("tts-c", expect_epoch=1, by="test")
    with pytest.raises(ClusterError, match="not a valid node name"):
        cluster.promote("../x", expect_epoch=1, by="test")


def test_lock_is_exclusive_until_it_expires(cluster):
    token = cluster.acquire_lock("failover", ttl_s=60)
    with pytest.raises(LockHeld, match="held by 'failover'"):
        cluster.acquire_lock("drill")
    with pytest.raises(LockHeld):
        cluster.promote("tts-a", expect_epoch=1, by="x")
    assert cluster.release_lock(token)
    short = cluster.acquire_lock("dies", ttl_s=0.1)
    time.sleep(0.2)
    taken = cluster.acquire_lock("next")     # the dead holder's lock expired and is broken
    assert taken != short
    assert not cluster.release_lock(short)   # the old holder cannot release the new lock
    assert cluster.lock_info()["holder"] == "next"


def test_promote_under_a_lock_held_for_a_whole_switchover(cluster):
    cluster.init("tts-a", "tts-b", by="test")
    token = cluster.acquire_lock("switchover.yml", ttl_s=60)
    with pytest.raises(LockHeld):
        cluster.promote("tts-b", expect_epoch=1, by="receiver")        # anyone else is kept out
    with pytest.raises(LockHeld, match="does not hold"):
        cluster.promote("tts-b", expect_epoch=1, by="x", lock_token="forged")
    assert cluster.promote("tts-b", expect_epoch=1, by="switchover.yml", lock_token=token).epoch == 2
    assert cluster.lock_info()["holder"] == "switchover.yml"           # still held until released
    assert cluster.release_lock(token)


def test_cli_status_init_promote_and_exit_codes(shared):
    assert cluster_cli(shared, "status").returncode == 3
    out = cluster_cli(shared, "--by", "site.yml", "init", "tts-a", "--standby", "tts-b")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["updated_by"] == "site.yml"
    status = json.loads(cluster_cli(shared, "status").stdout)
    assert (status["epoch"], status["primary"]) == (1, "tts-a")
    refused = cluster_cli(shared, "promote", "tts-b", "--expect-epoch", "5")
    assert refused.returncode == 1 and "epoch is 1, not 5" in refused.stderr
    done = cluster_cli(shared, "promote", "tts-b", "--expect-epoch", "1")
    assert done.returncode == 0 and json.loads(done.stdout)["epoch"] == 2
    lock = json.loads(cluster_cli(shared, "lock", "--holder", "drill").stdout)
    assert cluster_cli(shared, "promote", "tts-a", "--expect-epoch", "2").returncode == 1
    assert cluster_cli(shared, "unlock", lock["token"]).returncode == 0


def test_node_view_roles_and_fencing(cluster, shared):
    a = NodeView("tts-a", cluster, max_age_s=0.3, cache_s=0)
    b = NodeView("tts-b", cluster, max_age_s=0.3, cache_s=0)
    assert a.belief().fenced and "no cluster state exists" in a.belief().why_fenced()
    cluster.init("tts-a", "tts-b", by="test")
    assert (a.belief().role, a.belief().fenced) == ("primary", False)
    assert (b.belief().role, b.belief().fenced) == ("standby", True)
    cluster.promote("tts-b", expect_epoch=1, by="test")
    assert a.belief().fenced and "tts-b is the primary of epoch 2" in a.belief().why_fenced()
    wait_for(lambda: not b.belief().fenced, 2, what="tts-b's handover")


def test_a_new_primary_waits_out_the_old_primarys_belief_unless_it_confirms(cluster):
    cluster.init("tts-a", "tts-b", by="test")
    asked = []
    b = NodeView("tts-b", cluster, max_age_s=0.5, cache_s=0, peer_fenced=lambda peer, epoch: asked.append(
        (peer, epoch)) or False)
    assert b.belief().role == "standby"
    cluster.promote("tts-b", expect_epoch=1, by="test")
    belief = b.belief()
    assert belief.role == "primary" and belief.fenced and belief.handover_s > 0
    assert "tts-a may still act as primary" in belief.why_fenced()
    assert asked[0] == ("tts-a", 2)
    with pytest.raises(Fenced):
        b.assert_primary()
    time.sleep(0.55)
    assert not b.belief().fenced                  # the old primary's belief has expired by now
    # A confirmation from the old primary ends the wait at once.
    cluster.promote("tts-a", expect_epoch=2, by="test")
    a = NodeView("tts-a", cluster, max_age_s=30, cache_s=0, peer_fenced=lambda peer, epoch: peer == "tts-b")
    assert not a.belief().fenced and a.belief().epoch == 3


def test_the_first_epoch_needs_no_handover(cluster):
    cluster.init("tts-a", "tts-b", by="test")
    a = NodeView("tts-a", cluster, max_age_s=30, cache_s=0, peer_fenced=lambda peer, epoch: False)
    assert not a.belief().fenced


def test_node_is_fenced_when_the_state_cannot_be_read_recently(cluster, shared):
    cluster.init("tts-a", "tts-b", by="test")
    view = NodeView("tts-a", cluster, max_age_s=0.3, cache_s=0)
    assert not view.belief().fenced
    (shared / "cluster" / "state.json").write_text("{ torn")
    assert not view.belief().fenced          # one bad read: the last good one is recent enough
    time.sleep(0.4)
    belief = view.belief()
    assert belief.fenced and "has not been readable" in belief.why_fenced()
    assert belief.role == "primary"          # its belief stays, but it will not write


def test_node_never_believes_an_older_epoch(cluster, shared):
    cluster.init("tts-a", "tts-b", by="test")
    view = NodeView("tts-b", cluster, max_age_s=0.3, cache_s=0)
    cluster.promote("tts-b", expect_epoch=1, by="test")
    assert view.belief().epoch == 2
    stale = {"epoch": 1, "primary": "tts-a", "standby": "tts-b"}
    (shared / "cluster" / "state.json").write_text(json.dumps(stale))
    belief = view.belief()
    assert belief.epoch == 2 and belief.error and "after having seen 2" in belief.error


def test_redis_must_fit_the_nodes_role_in_a_pair():
    from tts_service.probes import redis_fits_role
    master = {"role": "master"}
    replica = {"role": "slave", "master_link_status": "up", "master_host": "10.0.0.1"}
    broken = {"role": "slave", "master_link_status": "down", "master_host": "10.0.0.1"}
    assert redis_fits_role(master, "primary", "pair") == (True, "ok")
    assert redis_fits_role(replica, "primary", "pair")[0] is False
    assert redis_fits_role(replica, "standby", "pair") == (True, "ok")
    assert "rejoin" in redis_fits_role(master, "standby", "pair")[1]
    assert "no live link" in redis_fits_role(broken, "standby", "pair")[1]
    assert redis_fits_role(broken, "standby", "pair", require_link=False) == (True, "ok")  # promotable
    assert redis_fits_role(master, "standby", "shared") == (True, "ok")


# ---- one lock holder, unreadable locks, renewal; the whole handover margin ----

def _race(cluster_dir, rounds: int, contenders: int) -> list[int]:
    """Per round: how many of `contenders` threads got a token for the lock at the same moment."""
    import threading
    winners_per_round = []
    for _ in range(rounds):
        barrier = threading.Barrier(contenders)
        won = []

        def contend(i, barrier=barrier, won=won):
            c = Cluster(Storage(cluster_dir.parent), cluster_dir)
            barrier.wait()
            try:
                won.append(c.acquire_lock(f"t{i}", ttl_s=60))
            except LockHeld:
                pass

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners_per_round.append(len(won))
        (cluster_dir / "lock").unlink()
    return winners_per_round


def test_concurrent_acquirers_never_both_hold_the_lock_threads(shared):
    # Before the fix the lock was created empty (O_EXCL) and written afterwards: a contender that read
    # the empty file broke it as corrupt and got a token too.
    (shared / "cluster").mkdir()
    rounds = _race(shared / "cluster", rounds=60, contenders=6)
    assert rounds == [1] * 60


def _acquire_in_process(args):
    shared_dir, i, start_at = args
    from pathlib import Path

    from tts_service.cluster import Cluster as C
    from tts_service.cluster import LockHeld as Held
    from tts_service.storage import Storage as S
    c = C(S(Path(shared_dir)), Path(shared_dir) / "cluster")
    while time.time() < start_at:
        pass
    try:
        return c.acquire_lock(f"p{i}", ttl_s=60)
    except Held:
        return None


def test_concurrent_acquirers_never_both_hold_the_lock_processes(shared):
    import multiprocessing
    (shared / "cluster").mkdir()
    # spawn, not fork: a fork copies whatever locks the test process's other threads (earlier tests'
    # servers and workers) hold at that moment, and a child can wait on one forever.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        for _ in range(15):
            start = time.time() + 0.3
            tokens = [t for t in pool.map(_acquire_in_process, [(str(shared), i, start) for i in range(4)]) if t]
            assert len(tokens) == 1
            (shared / "cluster" / "lock").unlink()


def test_an_unreadable_lock_is_held_until_its_file_is_older_than_the_ttl(cluster, shared):
    import os
    cluster.storage.makedirs(shared / "cluster")
    (shared / "cluster" / "lock").write_bytes(b"")          # torn: an empty lock file
    with pytest.raises(LockHeld, match="unreadable"):
        cluster.acquire_lock("failover", ttl_s=60)
    assert cluster.lock_holder().startswith("an unknown holder")
    old = time.time() - 120
    os.utime(shared / "cluster" / "lock", (old, old))
    token = cluster.acquire_lock("failover", ttl_s=60)       # older than the TTL: broken
    assert cluster.lock_info()["token"] == token


def test_renewing_pushes_the_expiry_and_only_for_the_holder(cluster):
    token = cluster.acquire_lock("switchover.yml", ttl_s=0.5)
    assert cluster.renew_lock(token, 30)
    time.sleep(0.6)
    with pytest.raises(LockHeld):
        cluster.acquire_lock("receiver")
    assert not cluster.renew_lock("forged", 30)
    assert cluster.release_lock(token)
    assert not cluster.renew_lock(token, 30)                  # released: nothing to renew


def test_lock_ttl_is_capped(shared):
    res = cluster_cli(shared, "lock", "--holder", "drill.yml", "--ttl", "900")
    assert res.returncode == 1 and "--ttl must be" in res.stderr


class _Clock:
    def __init__(self):
        self.t = 1000.0

    def monotonic(self):
        return self.t

    def time(self):
        return self.t

    def sleep(self, s):
        self.t += s


def test_the_handover_margin_covers_a_read_that_returned_late(cluster, monkeypatch):
    """The old primary's last good read returns state_timeout after the state it saw was current; the
    new primary must not act before that belief expires. (Failed before: the wait was max_age + cache.)"""
    import tts_service.node as node_mod
    from tts_service.storage import StorageUnavailable
    clock = _Clock()
    monkeypatch.setattr(node_mod, "time", clock)
    max_age, state_timeout, cache = 5.0, 0.8, 0.5
    cluster.init("tts-a", "tts-b", by="test")

    class SlowThenGone:
        """The old primary's view of the NAS: one read that returns late, then nothing."""
        def __init__(self):
            self.reads = 0

        def touch_alive(self, node, timeout=None):
            if self.reads == 0:                    # the one renewal that reaches the NAS leaves its mark
                cluster.touch_alive(node)
            else:
                raise StorageUnavailable("partitioned")

        def read(self, timeout=None):
            self.reads += 1
            if self.reads > 1:
                raise StorageUnavailable("partitioned")
            state = cluster.read()                 # the state as it was when the read started ...
            clock.sleep(state_timeout)             # ... returns state_timeout later
            return state

    a = NodeView("tts-a", SlowThenGone(), max_age_s=max_age, cache_s=cache, state_timeout_s=state_timeout)
    b = NodeView("tts-b", cluster, max_age_s=max_age, cache_s=cache, state_timeout_s=state_timeout,
                 peer_fenced=lambda peer, epoch: False)
    t_read_started = clock.t
    assert not a.belief(fresh=True).fenced          # tts-a: primary of epoch 1 (read returned at +0.8)
    clock.t = t_read_started + 0.01                 # the epoch changes right after tts-a's read began
    cluster.promote("tts-b", expect_epoch=1, by="failover.yml")
    assert b.belief(fresh=True).role == "primary"   # tts-b sees its new epoch at once
    both = []
    while clock.t < t_read_started + 10:
        clock.sleep(0.05)
        a_primary = not a.belief().fenced
        b_primary = not b.belief(fresh=True).fenced
        both.append(a_primary and b_primary)
    assert not any(both), "two unfenced primaries at once"
    assert not b.belief().fenced                     # and tts-b did take over
    assert b.handover_wait() == max_age + state_timeout + cache


def test_a_node_behind_the_recorded_storage_format_is_not_promoted(tmp_path):
    from tts_service.cluster import Cluster, ClusterError
    from tts_service.storage import Storage
    cluster = Cluster(Storage(tmp_path), tmp_path / "cluster")
    cluster.init("tts-a", "tts-b", by="test")
    assert cluster.storage_format() == 0
    assert cluster.record_format(3, "tts-a") and not cluster.record_format(2, "tts-b")   # never goes back
    with pytest.raises(ClusterError, match="format 3, newer than tts-b's code understands \\(2\\): upgrade tts-b"):
        cluster.promote("tts-b", expect_epoch=1, by="test", understands=2)
    assert cluster.read().epoch == 1
    assert cluster.promote("tts-b", expect_epoch=1, by="test", understands=3).primary == "tts-b"


# ---- confirmed fencing in the state, the old primary's belief expiry by the NAS's clock ----

def test_a_confirmation_in_the_state_ends_the_handover_at_once(cluster, shared):
    cluster.init("tts-a", "tts-b", by="test")
    # A long wait otherwise: the old primary renews, so its mark is fresh, and it never says it is fenced.
    a = NodeView("tts-a", cluster, max_age_s=30, cache_s=0)
    b = NodeView("tts-b", cluster, max_age_s=30, cache_s=0, peer_fenced=lambda peer, epoch: False)
    assert not a.belief().fenced
    cluster.promote("tts-b", expect_epoch=1, by="failover.yml")
    assert b.belief().fenced and b.belief().handover_s > 25
    with pytest.raises(ClusterError, match="not the standby"):
        cluster.confirm_fenced("tts-b", 2, by="test")        # only the old primary is ever confirmed
    with pytest.raises(ClusterError, match="not 1"):
        cluster.confirm_fenced("tts-a", 1, by="test")        # a confirmation for a passed epoch
    state = cluster.confirm_fenced("tts-a", 2, by="failover.yml")
    assert state.fencing_confirmed("tts-a") and state.epoch == 2 and state.primary == "tts-b"
    assert not b.belief().fenced and "confirmed fenced (failover.yml" in b.handover_reason
    assert a.belief().fenced                                  # and tts-a reads that it is not primary
    # The next epoch starts unconfirmed: a confirmation never carries over.
    cluster.promote("tts-a", expect_epoch=2, by="switchover.yml")
    assert not cluster.read().fencing_confirmed("tts-b")
    assert json.loads((shared / "cluster" / "state.json").read_text()).get("fenced") is None


def test_a_malformed_confirmation_confirms_nothing(cluster, shared):
    cluster.init("tts-a", "tts-b", by="test")
    cluster.promote("tts-b", expect_epoch=1, by="test")
    path = shared / "cluster" / "state.json"
    for bad in ({"node": "tts-a"}, {"node": "../x", "epoch": 2}, "tts-a", {"node": "tts-a", "epoch": "two"}):
        path.write_text(json.dumps({**json.loads(path.read_text()), "fenced": bad}))
        assert not cluster.read().fencing_confirmed("tts-a"), bad


def test_cli_confirm_fenced(shared):
    assert cluster_cli(shared, "init", "tts-a", "--standby", "tts-b").returncode == 0
    assert cluster_cli(shared, "promote", "tts-b", "--expect-epoch", "1").returncode == 0
    res = cluster_cli(shared, "--by", "failover.yml", "confirm-fenced", "tts-a", "--epoch", "2")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["fenced"]["node"] == "tts-a"
    res = cluster_cli(shared, "confirm-fenced", "tts-a", "--epoch", "1")
    assert res.returncode == 1 and "passed" in res.stderr


def test_a_dead_old_primarys_belief_is_known_expired_from_its_last_mark(cluster):
    """The old primary stopped renewing (killed, host lost) longer than max_age ago: the new primary
    takes over at once, although the bound that needs nothing from storage is 10 s away."""
    cluster.init("tts-a", "tts-b", by="test")
    a = NodeView("tts-a", cluster, max_age_s=0.8, cache_s=0)
    b = NodeView("tts-b", cluster, max_age_s=0.8, cache_s=0, state_timeout_s=10, peer_fenced=lambda p, e: False)
    assert not a.belief().fenced                               # tts-a's last renewal: its mark on the NAS
    time.sleep(1.0)                                            # ... then it dies
    cluster.promote("tts-b", expect_epoch=1, by="failover.yml")
    belief = b.belief()
    assert not belief.fenced, belief.why_fenced()
    assert "belief expired by the NAS's clock" in b.handover_reason
    assert cluster.silent_for("tts-a") >= 0.8 - 0.02 and cluster.silent_for("nobody") is None


def test_a_live_old_primary_keeps_its_successor_waiting_and_never_two_primaries(cluster):
    """The old primary goes on renewing (its Redis died, not its app): its marks stay fresh, so the new
    primary waits until the old one has read the new epoch and its last primary belief expired. Sampled
    every few ms from both sides: never two unfenced primaries."""
    import threading
    cluster.init("tts-a", "tts-b", by="test")
    max_age = 0.6
    a = NodeView("tts-a", cluster, max_age_s=max_age, cache_s=0.05)
    b = NodeView("tts-b", cluster, max_age_s=max_age, cache_s=0.05, state_timeout_s=5,
                 peer_fenced=lambda p, e: False)
    stop, a_primary_until = threading.Event(), [0.0]

    def old_primary():
        while not stop.is_set():
            if not a.belief().fenced:
                a_primary_until[0] = time.monotonic()
            time.sleep(0.005)
    thread = threading.Thread(target=old_primary, daemon=True)
    thread.start()
    wait_for(lambda: a_primary_until[0] > 0, 2, what="tts-a primary")
    cluster.promote("tts-b", expect_epoch=1, by="failover.yml")
    promoted = time.monotonic()
    b_primary_from = None
    while time.monotonic() < promoted + 3 and b_primary_from is None:
        if not b.belief(fresh=True).fenced:
            b_primary_from = time.monotonic()
        time.sleep(0.005)
    assert b_primary_from is not None, "tts-b never took over"
    time.sleep(0.1)
    stop.set()
    thread.join(2)
    assert a_primary_until[0] < b_primary_from, "two unfenced primaries at once"
    # It waited for the live node's marks (not the 5.6 s bound that needs nothing from storage).
    assert b_primary_from - promoted < 3 and "NAS's clock" in b.handover_reason


def test_a_damaged_mark_never_fences_a_healthy_primary(cluster, shared):
    """Garbage in the mark, a folder where it should be, `cluster/alive` a file: each is moved aside
    or written over, and the primary renews its belief as before."""
    cluster.init("tts-a", "tts-b", by="test")
    alive = shared / "cluster" / "alive"
    mark = alive / "tts-a"
    view = NodeView("tts-a", cluster, max_age_s=0.3, cache_s=0)
    assert not view.belief().fenced
    mark.write_bytes(b"\x00garbage that is longer than a mark")
    assert not view.belief().fenced and view.belief().error is None
    mark.unlink()
    mark.mkdir()
    (mark / "x").write_text("in the way")
    assert not view.belief().fenced and view.belief().error is None and mark.is_file()
    shutil.rmtree(alive)
    alive.write_text("not a folder")
    assert not view.belief().fenced and view.belief().error is None and mark.is_file()
    assert any(p.name.startswith(".damaged-") for p in (shared / "cluster").iterdir())


def test_a_renewal_that_cannot_leave_its_mark_gives_no_belief(cluster, monkeypatch):
    from tts_service.storage import StorageUnavailable
    cluster.init("tts-a", "tts-b", by="test")
    view = NodeView("tts-a", cluster, max_age_s=0.3, cache_s=0)
    assert not view.belief().fenced

    def refuse(node, timeout=None):
        raise StorageUnavailable("the NAS refused the write")
    monkeypatch.setattr(cluster, "touch_alive", refuse)
    with pytest.raises(Fenced, match="could not be read just now"):
        view.assert_primary()               # a write needs a renewal that succeeded now
    time.sleep(0.35)
    belief = view.belief()
    assert belief.fenced and "has not been readable" in belief.why_fenced()


def test_the_expiry_deadline_is_anchored_after_a_slow_answer(cluster, monkeypatch):
    """The NAS's "now" may be read well before a slow silent_for() returns: the deadline must count
    from the return (anchored at the asking, it came 0.8 s early here)."""
    cluster.init("tts-a", "tts-b", by="test")
    a = NodeView("tts-a", cluster, max_age_s=1.0, cache_s=0)
    assert not a.belief().fenced
    cluster.promote("tts-b", expect_epoch=1, by="failover.yml")
    b = NodeView("tts-b", cluster, max_age_s=1.0, cache_s=0, state_timeout_s=10, peer_fenced=lambda p, e: False)
    real = cluster.silent_for

    def slow(node, timeout=None):
        silent = real(node)
        time.sleep(0.8)                     # the answer comes back late
        return silent
    monkeypatch.setattr(cluster, "silent_for", slow)
    asked = time.monotonic()
    while b.belief().fenced:
        time.sleep(0.01)
    # tts-a's mark is ~0 s old when the NAS's clock is read: 1 s more from the answer, 0.8 s later.
    assert time.monotonic() - asked >= 0.8 + 1.0 - 0.05
