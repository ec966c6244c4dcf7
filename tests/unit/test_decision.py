"""Every branch of the failover decision, with the sentence it gives."""
import pytest
from tts_service.receiver.decision import (
    ESCALATE,
    FAILOVER,
    NONE,
    REJOIN,
    Alert,
    Cluster,
    History,
    Interrupted,
    Probes,
    decide,
    finish_interrupted,
)

CLUSTER = Cluster(epoch=3, primary="tts-a", standby="tts-b")
HEALTHY_WITNESS = Probes(standby_ready=True, standby_sees_primary_ready=False)
NOW = 1_000_000.0


def down(node="tts-a", status="firing"):
    return Alert("TTSNodeDown", node, status)


def not_in_role(node="tts-b"):
    return Alert("TTSNodeNotInRole", node, "firing")


def run(alert, cluster=CLUSTER, probes=HEALTHY_WITNESS, history=None, cooldown=60.0):
    return decide(alert, cluster, probes, history or History(now=NOW), cooldown)


def test_primary_down_with_a_ready_standby_fails_over_with_compare_and_swap_epoch():
    d = run(down())
    assert (d.action, d.target, d.expect_epoch) == (FAILOVER, "tts-b", 3)
    assert "failing over to tts-b because the primary tts-a is down" in d.reason


def test_resolved_notifications_never_act():
    d = run(down(status="resolved"))
    assert d.action == NONE and "never start or stop anything" in d.reason


def test_other_alerts_are_ignored():
    assert run(Alert("Watchdog", "ctl", "firing")).action == NONE


def test_unknown_node_is_ignored():
    d = run(down(node="tts-z"))
    assert d.action == NONE and "not a member" in d.reason


def test_a_down_standby_needs_no_failover():
    d = run(down(node="tts-b"))
    assert d.action == NONE and "losing the standby needs no failover" in d.reason


def test_a_run_in_progress_is_never_interrupted():
    d = run(down(), history=History(now=NOW, run_in_progress="failover.yml #4"))
    assert d.action == NONE and "never interrupted" in d.reason


def test_the_lock_held_by_a_drill_blocks_action():
    d = run(down(), cluster=Cluster(3, "tts-a", "tts-b", lock_holder="drill"))
    assert d.action == NONE and "held by drill" in d.reason


def test_at_most_one_failover_per_epoch():
    d = run(down(), history=History(now=NOW, failover_epochs=frozenset({3})))
    assert d.action == NONE and "at most one failover per epoch" in d.reason


def test_a_failed_failover_is_not_retried_but_escalated():
    d = run(down(), history=History(now=NOW, failed_failover_epochs=frozenset({3})))
    assert d.action == ESCALATE and "rather than trying again" in d.reason


def test_cooldown_after_a_failover():
    d = run(down(), history=History(now=NOW, last_failover_at=NOW - 20), cooldown=60)
    assert d.action == NONE and "cooldown 60 s, 40 s left" in d.reason
    assert run(down(), history=History(now=NOW, last_failover_at=NOW - 61), cooldown=60).action == FAILOVER


def test_witness_still_reaching_the_primary_means_no_failover():
    d = run(down(), probes=Probes(standby_ready=True, standby_sees_primary_ready=True))
    assert d.action == NONE and "the monitor may be the partitioned one" in d.reason


@pytest.mark.parametrize("ready, words", [(False, "is not ready"), (None, "could not be asked")])
def test_an_unfit_standby_is_escalated_not_promoted(ready, words):
    d = run(down(), probes=Probes(standby_ready=ready, standby_sees_primary_ready=False))
    assert d.action == ESCALATE and words in d.reason


@pytest.mark.parametrize("ready", [False, None])
def test_an_unfit_standby_is_decided_again_each_second(ready):
    """The standby may be healing (its NAS client died: remount, then its services restart, and for a
    moment it answers nothing): the receiver decides again each second while the alert fires and fails
    over once it is fit, instead of waiting for Alertmanager's repeat (30 s)."""
    unfit = run(down(), probes=Probes(standby_ready=ready, standby_sees_primary_ready=False))
    assert unfit.action == ESCALATE and unfit.recheck and "deciding again each second" in unfit.reason


def test_no_standby_at_all_is_escalated():
    d = run(down(), cluster=Cluster(3, "tts-a", None))
    assert d.action == ESCALATE and "no standby to promote" in d.reason


def test_not_in_role_standby_is_rejoined():
    d = run(not_in_role("tts-b"), probes=Probes(node_in_role=False))
    assert (d.action, d.target) == (REJOIN, "tts-b")
    assert "rejoining tts-b as the standby of tts-a" in d.reason


def test_not_in_role_primary_is_escalated():
    d = run(not_in_role("tts-a"), probes=Probes(node_in_role=False))
    assert d.action == ESCALATE and "rejoin is for standbys" in d.reason


def test_a_node_back_in_role_is_left_alone():
    d = run(not_in_role("tts-b"), probes=Probes(node_in_role=True))
    assert d.action == NONE and "ready for its role again" in d.reason


def test_a_failed_rejoin_is_escalated_not_looped():
    d = run(not_in_role("tts-b"), probes=Probes(node_in_role=False),
            history=History(now=NOW, rejoins_failed=frozenset({("tts-b", 3)})))
    assert d.action == ESCALATE and "rather than looping" in d.reason


def test_decisions_serialise_for_the_run_history():
    assert run(down()).to_dict() == {"action": "failover", "reason": run(down()).reason, "target": "tts-b", "recheck": False,
                                     "expect_epoch": 3}


# ---- a run the previous receiver process left unfinished ----

KILLED = Interrupted(run_id=7, playbook="failover.yml", target="tts-b", epoch_before=3)


def test_an_interrupted_failover_that_had_not_fenced_starts_again_from_the_same_epoch():
    d = finish_interrupted(KILLED, CLUSTER)
    assert (d.action, d.target, d.expect_epoch) == (FAILOVER, "tts-b", 3)
    assert "had not fenced epoch 3 yet" in d.reason


def test_an_interrupted_failover_that_had_fenced_is_finished_with_one_more_epoch():
    d = finish_interrupted(KILLED, Cluster(epoch=4, primary="tts-b", standby="tts-a"))
    assert (d.action, d.target, d.expect_epoch) == (FAILOVER, "tts-b", 4)
    assert "finishing the interrupted failover.yml #7" in d.reason


def test_an_interrupted_failover_overtaken_by_events_is_left_alone():
    d = finish_interrupted(KILLED, Cluster(epoch=6, primary="tts-a", standby="tts-b"))
    assert d.action == NONE and "moved on" in d.reason


def test_an_interrupted_failover_without_the_cluster_state_goes_to_the_operators():
    d = finish_interrupted(KILLED, None)
    assert d.action == ESCALATE and "acting blind" in d.reason


def test_an_interrupted_rejoin_is_left_to_its_alert():
    d = finish_interrupted(Interrupted(8, "rejoin.yml", "tts-a", 3), CLUSTER)
    assert d.action == NONE and "its alert starts it again" in d.reason


def test_a_node_cut_off_from_shared_storage_is_healed_and_rejoined_and_reported_only_if_that_failed():
    """A dead mount (the node's NAS client died) is the node's to heal: escalating at once left the pair
    without a standby until a person came, and the next fault took the service down."""
    d = run(not_in_role(), probes=Probes(node_in_role=False, node_storage_ok=False))
    assert d.action == REJOIN and d.target == "tts-b", d
    assert d.reason.startswith("healing tts-b because it cannot reach the shared storage: its mount is detached "
                               "and mounted again")
    failed = History(now=NOW, rejoins_failed=frozenset({("tts-b", 3)}))
    d = run(not_in_role(), probes=Probes(node_in_role=False, node_storage_ok=False), history=failed)
    assert d.action == ESCALATE and "still cannot reach the shared storage after a heal in epoch 3 failed" in d.reason


def test_a_node_with_storage_but_not_in_role_is_rejoined():
    d = run(not_in_role(), probes=Probes(node_in_role=False, node_storage_ok=True))
    assert d.action == REJOIN and d.target == "tts-b"


# ---- flap damping, unknown witnesses, rejoin loops, "not now" re-decided ----

def test_flap_damping_escalates_after_the_hourly_limit_whatever_the_epochs():
    d = run(down(), history=History(now=NOW, failovers_last_hour=3))
    assert d.action == ESCALATE and "3 failovers already ended in the last hour" in d.reason
    assert run(down(), history=History(now=NOW, failovers_last_hour=2)).action == FAILOVER


def test_flap_limit_comes_from_the_limits():
    from tts_service.receiver.decision import Limits
    d = decide(down(), CLUSTER, HEALTHY_WITNESS, History(now=NOW, failovers_last_hour=1), 60.0,
               Limits(failovers_per_hour=1))
    assert d.action == ESCALATE


def test_a_witness_that_could_not_be_asked_never_leads_to_a_failover():
    d = run(down(), probes=Probes(standby_ready=True, standby_sees_primary_ready=None))
    assert d.action == ESCALATE and "an unknown is not a witness that saw nothing" in d.reason


def test_a_node_rejoined_too_often_in_one_epoch_is_escalated():
    history = History(now=NOW, rejoins_succeeded={("tts-b", 3): 3})
    d = run(not_in_role(), probes=Probes(node_in_role=False), history=history)
    assert d.action == ESCALATE and "rejoined 3 times in epoch 3" in d.reason
    # the same count in an older epoch does not count
    d = run(not_in_role(), probes=Probes(node_in_role=False), history=History(now=NOW, rejoins_succeeded={("tts-b", 2): 5}))
    assert d.action == REJOIN


@pytest.mark.parametrize("history,cluster", [
    (History(now=NOW, run_in_progress="rejoin.yml #2"), CLUSTER),
    (History(now=NOW), Cluster(3, "tts-a", "tts-b", lock_holder="switchover.yml")),
    (History(now=NOW, last_failover_at=NOW - 10), CLUSTER),
])
def test_not_now_decisions_ask_to_be_decided_again(history, cluster):
    d = run(down(), cluster=cluster, history=history)
    assert d.action == NONE and d.recheck and "deciding again" in d.reason


def test_final_decisions_do_not_ask_to_be_decided_again():
    assert not run(down()).recheck
    assert not run(down(node="tts-b")).recheck


def test_a_primary_whose_redis_refuses_writes_is_not_failed_over():
    """Its Redis full (noeviction at maxmemory): the replica holds the same data, a new primary would be
    full at once, and the pair would flap. The operators are told instead."""
    d = run(down(), probes=Probes(standby_ready=True, standby_sees_primary_ready=False,
                                  primary_redis_refuses_writes=True))
    assert d.action == ESCALATE and "refuses writes" in d.reason and "would not help" in d.reason


def test_the_witness_answer_says_whether_redis_refusing_writes_is_all_that_is_wrong():
    from tts_service.receiver.controller import LazyProbes, NodeProbe

    class Answers(NodeProbe):
        def __init__(self, body):
            super().__init__({"tts-a": "http://a", "tts-b": "http://b"})
            self.body = body

        def get(self, url):
            return 200, self.body

    full = {"ready": False, "status": 503, "reason": "local Redis refuses writes: OOM command not allowed",
            "checks": {"state": True, "storage": True, "redis": False, "worker": True, "engine": True}}
    assert LazyProbes(Answers(full), CLUSTER, down()).primary_redis_refuses_writes is True
    worse = {**full, "checks": {**full["checks"], "worker": False}}       # and its worker is gone too
    assert LazyProbes(Answers(worse), CLUSTER, down()).primary_redis_refuses_writes is False
    unreachable = {"ready": False, "status": None, "error": "timed out"}
    assert LazyProbes(Answers(unreachable), CLUSTER, down()).primary_redis_refuses_writes is False
