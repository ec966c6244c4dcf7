import json
import time

import pytest

from tests.harness import cluster_cli, wait_for
from tts_service.cluster import Cluster, ClusterError, LockHeld
from tts_service.node import Fenced, NodeView
from tts_service.storage import Storage


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
