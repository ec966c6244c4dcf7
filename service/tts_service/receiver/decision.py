"""Should we fail over?" — one pure function of (alert, cluster state, fresh probes, history).

Like Patroni's HA loop, every call returns a decision *and* a sentence saying why. Nothing here does
I/O: the receiver gathers the inputs, calls decide(), records the Decision, and acts on it.
Each branch is a small named function; decide() tries them in order and the first that applies wins.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

FAILOVER = "failover"
REJOIN = "rejoin"
NONE = "none"
ESCALATE = "escalate"   # do nothing automatically; tell the operators


@dataclass(frozen=True)
class Alert:
    name: str
    node: str
    status: str                      # "firing" | "resolved"
    fingerprint: str = ""


@dataclass(frozen=True)
class Cluster:
    epoch: int
    primary: str
    standby: str | None
    lock_holder: str | None = None   # who holds the shared lock now (None: free)


@dataclass(frozen=True)
class Probes:
    """Taken just now, from the standby's side (a witness that does not share the monitor's path)."""
    standby_ready: bool | None = None                 # the standby's own /standby answered 200
    standby_sees_primary_ready: bool | None = None    # the standby reached the primary's /ready = 200
    node_in_role: bool | None = None                  # for a rejoin: the node's /ready answers 200 now
    node_storage_ok: bool | None = None               # for a rejoin: its /ready says shared storage works
    primary_redis_refuses_writes: bool | None = None  # the witness saw the primary unready only for that


@dataclass(frozen=True)
class History:
    now: float
    run_in_progress: str | None = None                # description of a playbook run not finished
    last_failover_at: float | None = None             # end of the last successful failover
    failover_epochs: frozenset[int] = field(default_factory=frozenset)  # epochs already failed over from
    failed_failover_epochs: frozenset[int] = field(default_factory=frozenset)
    rejoins_failed: frozenset[tuple[str, int]] = field(default_factory=frozenset)  # (node, epoch)
    failovers_last_hour: int = 0                      # successful failovers that ended in the last hour
    rejoins_succeeded: dict[tuple[str, int], int] = field(default_factory=dict)  # (node, epoch) -> count


@dataclass(frozen=True)
class Limits:
    """Flap damping: beyond these the receiver stops acting by itself and tells the operators."""
    failovers_per_hour: int = 3        # tts_failover_max_per_hour, whatever the epochs
    rejoins_per_epoch: int = 3         # a node rejoined this often in one epoch does not stay in role


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str
    target: str | None = None        # the node acted on: the one promoted, or the one rejoined
    expect_epoch: int | None = None  # the epoch the failover must find (compare-and-swap)
    recheck: bool = False            # "not now" (busy, locked, cooling down, standby unfit): decide again

    def to_dict(self) -> dict:
        return {"action": self.action, "reason": self.reason, "target": self.target,
                "expect_epoch": self.expect_epoch, "recheck": self.recheck}


@dataclass(frozen=True)
class Inputs:
    alert: Alert
    cluster: Cluster
    probes: Probes
    history: History
    cooldown_s: float
    limits: Limits = Limits()


Rule = Callable[[Inputs], "Decision | None"]


def _resolved(i: Inputs) -> Decision | None:
    if i.alert.status != "firing":
        return Decision(NONE, f"{i.alert.name} for {i.alert.node} resolved: resolved notifications never "
                              "start or stop anything")
    return None


def _stranger(i: Inputs) -> Decision | None:
    if i.alert.node not in (i.cluster.primary, i.cluster.standby):
        return Decision(NONE, f"{i.alert.node!r} is not a member of the cluster "
                              f"({i.cluster.primary}, {i.cluster.standby})")
    return None


def _busy(i: Inputs) -> Decision | None:
    if i.history.run_in_progress:
        return Decision(NONE, f"not acting now because a run is in progress ({i.history.run_in_progress}); "
                              "a run in progress is never interrupted; deciding again when it ends", recheck=True)
    if i.cluster.lock_holder:
        return Decision(NONE, f"not acting now because the cluster lock is held by {i.cluster.lock_holder}; "
                              "deciding again when it is released", recheck=True)
    return None


# ---- TTSNodeDown ----

def _down_standby(i: Inputs) -> Decision | None:
    if i.alert.node != i.cluster.primary:
        return Decision(NONE, f"{i.alert.node} is the standby, not the primary ({i.cluster.primary} is): "
                              "losing the standby needs no failover")
    return None


def _already_failed_over(i: Inputs) -> Decision | None:
    if i.cluster.epoch in i.history.failover_epochs:
        return Decision(NONE, f"a failover from epoch {i.cluster.epoch} was already done: at most one "
                              "failover per epoch")
    return None


def _second_failure(i: Inputs) -> Decision | None:
    if i.cluster.epoch in i.history.failed_failover_epochs:
        return Decision(ESCALATE, f"a failover from epoch {i.cluster.epoch} already failed: stopping here "
                                  "and telling the operators rather than trying again")
    return None


def _cooldown(i: Inputs) -> Decision | None:
    last = i.history.last_failover_at
    if last is not None and i.history.now - last < i.cooldown_s:
        left = i.cooldown_s - (i.history.now - last)
        return Decision(NONE, f"not failing over now because the last failover ended {i.history.now - last:.0f} s "
                              f"ago (cooldown {i.cooldown_s:.0f} s, {left:.0f} s left); deciding again then",
                        recheck=True)
    return None


def _flapping(i: Inputs) -> Decision | None:
    n, limit = i.history.failovers_last_hour, i.limits.failovers_per_hour
    if n >= limit:
        return Decision(ESCALATE, f"not failing over because {n} failovers already ended in the last hour "
                                  f"(limit {limit}): the pair is flapping; telling the operators")
    return None


def _witness_unknown(i: Inputs) -> Decision | None:
    if i.cluster.standby and i.probes.standby_sees_primary_ready is None:
        return Decision(ESCALATE, f"not failing over because the standby {i.cluster.standby} could not say "
                                  f"whether it reaches the primary {i.cluster.primary} (asked twice): an unknown "
                                  "is not a witness that saw nothing; telling the operators")
    return None


def _witness_sees_primary(i: Inputs) -> Decision | None:
    if i.probes.standby_sees_primary_ready:
        return Decision(NONE, f"not failing over because the standby {i.cluster.standby} still reaches a "
                              f"ready primary {i.cluster.primary}: the monitor may be the partitioned one")
    return None


def _redis_refuses_writes(i: Inputs) -> Decision | None:
    if i.probes.primary_redis_refuses_writes:
        return Decision(ESCALATE, f"not failing over because the primary {i.cluster.primary} is up but its Redis "
                                  "refuses writes (full at its maxmemory?): the standby's replica holds the same "
                                  "data, so a failover would not help; telling the operators")
    return None


def _standby_unfit(i: Inputs) -> Decision | None:
    if i.cluster.standby is None:
        return Decision(ESCALATE, f"{i.cluster.primary} is down and there is no standby to promote")
    if not i.probes.standby_ready:
        # It may be healing (its NAS client died: remounted, its services restarted, so for a moment it
        # answers nothing). Decided again each second while the alert fires, so the failover starts once
        # it is fit, not at Alertmanager's repeat.
        why = "could not be asked" if i.probes.standby_ready is None else "is not ready"
        return Decision(ESCALATE, f"{i.cluster.primary} is down but the standby {i.cluster.standby} {why}: "
                                  "a failover would not help now; telling the operators and deciding again each "
                                  "second while the standby may heal", recheck=True)
    return None


def _failover(i: Inputs) -> Decision | None:
    return Decision(FAILOVER, f"failing over to {i.cluster.standby} because the primary {i.cluster.primary} "
                              f"is down, the standby cannot reach it either, and the standby is ready",
                    target=i.cluster.standby, expect_epoch=i.cluster.epoch)


# ---- TTSNodeNotInRole ----

def _primary_not_in_role(i: Inputs) -> Decision | None:
    if i.alert.node == i.cluster.primary:
        return Decision(ESCALATE, f"the primary {i.alert.node} is up but not fit for its role: rejoin is for "
                                  "standbys; telling the operators")
    return None


def _already_in_role(i: Inputs) -> Decision | None:
    if i.probes.node_in_role:
        return Decision(NONE, f"{i.alert.node} is ready for its role again: nothing to rejoin")
    return None


def _rejoin_failed_before(i: Inputs) -> Decision | None:
    if (i.alert.node, i.cluster.epoch) in i.history.rejoins_failed:
        if i.probes.node_storage_ok is False:
            return Decision(ESCALATE, f"{i.alert.node} still cannot reach the shared storage after a heal in epoch "
                                      f"{i.cluster.epoch} failed (its mount detached and mounted again, its services "
                                      "restarted onto it, a rejoin): the NAS itself, or the way to it; telling the "
                                      "operators")
        return Decision(ESCALATE, f"rejoining {i.alert.node} already failed in epoch {i.cluster.epoch}: "
                                  "telling the operators rather than looping")
    return None


def _rejoin_flapping(i: Inputs) -> Decision | None:
    n = i.history.rejoins_succeeded.get((i.alert.node, i.cluster.epoch), 0)
    if n >= i.limits.rejoins_per_epoch:
        return Decision(ESCALATE, f"not rejoining {i.alert.node} again: it was rejoined {n} times in epoch "
                                  f"{i.cluster.epoch} and did not stay in role; telling the operators")
    return None


def _heal(i: Inputs) -> Decision | None:
    if i.probes.node_storage_ok is False:
        return Decision(REJOIN, f"healing {i.alert.node} because it cannot reach the shared storage: its mount is "
                                "detached and mounted again if its client died, its services restarted onto it, "
                                f"and it rejoins as the standby of {i.cluster.primary} (escalated if that fails)",
                        target=i.alert.node)
    return None


def _rejoin(i: Inputs) -> Decision | None:
    return Decision(REJOIN, f"rejoining {i.alert.node} as the standby of {i.cluster.primary} because it "
                            "is up but not following the current primary", target=i.alert.node)


def _unknown_alert(i: Inputs) -> Decision | None:
    return Decision(NONE, f"{i.alert.name} is not an alert this receiver acts on")


# An alert meets the common rules, then the rules of its own name, in order: the first that answers
# decides (the last rule of each list always answers). A resolved notification is never acted on.
COMMON_RULES: tuple[Rule, ...] = (_stranger, _busy)
RULES_BY_ALERT: dict[str, tuple[Rule, ...]] = {
    "TTSNodeDown": (_down_standby, _already_failed_over, _second_failure, _flapping, _cooldown,
                    _witness_sees_primary, _redis_refuses_writes, _standby_unfit, _witness_unknown, _failover),
    "TTSNodeNotInRole": (_primary_not_in_role, _already_in_role, _rejoin_failed_before, _rejoin_flapping, _heal,
                         _rejoin),
}


@dataclass(frozen=True)
class Interrupted:
    """A playbook run that was in progress when the receiver stopped (killed, host rebooted)."""
    run_id: int
    playbook: str
    target: str | None
    epoch_before: int | None


def finish_interrupted(run: Interrupted, cluster: Cluster | None) -> Decision:
    """What to do, at start-up, about a run the previous receiver process left unfinished.

    A failover killed half-way may have fenced the old primary (bumped the epoch) without promoting
    Redis or switching nginx; nothing else would finish it, since the alert that started it now names
    a node that is no longer the primary. failover.yml is therefore run again to the same target:
    from the same epoch if it had not fenced yet, or from the epoch it made (one more bump) if it had.
    """
    name = f"{run.playbook} #{run.run_id}"
    if run.playbook != "failover.yml":
        return Decision(NONE, f"{name} was interrupted by a restart; not repeating it: its alert starts it "
                              "again if the node still needs it")
    if cluster is None:
        return Decision(ESCALATE, f"{name} to {run.target} was interrupted by a restart and the cluster state "
                                  "cannot be read now: telling the operators rather than acting blind")
    if cluster.epoch == run.epoch_before and cluster.primary != run.target:
        return Decision(FAILOVER, f"starting the interrupted {name} to {run.target} again: it had not fenced "
                                  f"epoch {cluster.epoch} yet", target=run.target, expect_epoch=cluster.epoch)
    if run.epoch_before is not None and cluster.epoch == run.epoch_before + 1 and cluster.primary == run.target:
        return Decision(FAILOVER, f"finishing the interrupted {name}: it fenced epoch {run.epoch_before} and made "
                                  f"{run.target} primary, but Redis, nginx and the VIP may not follow yet; "
                                  "running failover.yml once more (one more epoch)",
                        target=run.target, expect_epoch=cluster.epoch)
    return Decision(NONE, f"{name} was interrupted, but the cluster has moved on since (epoch {cluster.epoch}, "
                          f"primary {cluster.primary}): nothing to finish")


def decide(alert: Alert, cluster: Cluster, probes: Probes, history: History, cooldown_s: float,
           limits: Limits = Limits()) -> Decision:
    inputs = Inputs(alert, cluster, probes, history, cooldown_s, limits)
    rules = COMMON_RULES + RULES_BY_ALERT[alert.name] if alert.name in RULES_BY_ALERT else (_unknown_alert,)
    for rule in (_resolved,) + rules:
        decision = rule(inputs)
        if decision is not None:
            return decision
    raise AssertionError("the last rule of every list answers")
