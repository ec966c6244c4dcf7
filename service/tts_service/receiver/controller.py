"""The receiver's control loop: stored notifications -> inputs -> decide() -> recorded decision ->
at most one playbook run at a time (through ansible-runner), escalations to the operators.

Notifications are processed one by one, in arrival order, by a single thread; a run is recorded as
`running` before the next notification is looked at, so a storm of duplicates yields one action.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from ..cluster import Cluster as ClusterFiles
from ..cluster import ClusterError
from ..httpjson import get_json
from ..journal import fields
from ..storage import StorageUnavailable
from . import decision as d
from .store import Store
from .webhook import WebhookError, parse

log = logging.getLogger("tts.receiver")

PLAYBOOKS = {d.FAILOVER: "failover.yml", d.REJOIN: "rejoin.yml"}
# A failover a recheck comes to starts when a recheck at least this much later comes to it again;
# CONFIRM_STORAGE_S when the primary answers, unfit for shared storage only: after a NAS outage both
# nodes shared, their sshfs clients reconnect seconds apart (a connect attempt under way runs out its
# 5 s first), and the standby must not take over from a primary about to come back.
CONFIRM_S = 1.0
CONFIRM_STORAGE_S = 12.0

# (playbook, extravars) -> (succeeded, detail)
Runner = Callable[[str, dict], "tuple[bool, str]"]


@dataclass
class NodeProbe:
    """Asks the TTS nodes over HTTP. The witness question goes to the standby, which probes the
    primary itself (GET /peer/<primary>/ready on the standby): a path that avoids the monitor's."""
    nodes: dict[str, str]          # node id -> base URL of its app
    timeout_s: float = 2.5         # longer than the witness's own probe of the primary (TTS_WITNESS_TIMEOUT)

    def get(self, url: str) -> tuple[int | None, dict]:
        status, body, _error = get_json(url, self.timeout_s)
        return status, body

    def probes(self, cluster: d.Cluster, alert: d.Alert) -> LazyProbes:
        return LazyProbes(self, cluster, alert)


class LazyProbes:
    """The probes decide() may read, asked only when a rule actually reads them (a storm of
    duplicates is mostly decided by cheap rules: run in progress, already failed over) and at most
    once each."""

    def __init__(self, probe: NodeProbe, cluster: d.Cluster, alert: d.Alert):
        self._probe, self._cluster, self._alert = probe, cluster, alert
        self._cache: dict[str, bool | None] = {}

    def _ask(self, key: str, path_of: Callable[[], tuple[str | None, str]]) -> bool | None:
        if key not in self._cache:
            node, path = path_of()
            url = self._probe.nodes.get(node or "")
            if url is None:
                self._cache[key] = None
            else:
                code, body = self._probe.get(f"{url}{path}")
                if key == "witness" and code != 200:   # unknown: ask once more before calling it unknown
                    code, body = self._probe.get(f"{url}{path}")
                if code is None:
                    self._cache[key] = None
                elif key == "witness":
                    self._cache[key] = bool(body.get("ready")) if code == 200 else None
                    checks = body.get("checks") if isinstance(body.get("checks"), dict) else {}
                    failing = {name for name, ok in checks.items() if ok is False}
                    self._cache["witness:redis_full"] = (code == 200 and failing == {"redis"}
                                                         and "refuses writes" in str(body.get("reason", "")))
                    # The primary answers, unfit only for shared storage (its renewal or free space).
                    self._cache["witness:storage_only"] = code == 200 and bool(failing) and failing <= {
                        "state", "storage"} and "storage" in str(body.get("reason", ""))
                else:
                    self._cache[key] = code == 200
                    storage = body.get("checks", {}).get("storage") if isinstance(body.get("checks"), dict) else None
                    self._cache[f"{key}:storage"] = storage if isinstance(storage, bool) else None
        return self._cache[key]

    @property
    def standby_ready(self) -> bool | None:
        return self._ask("standby", lambda: (self._cluster.standby, "/standby"))

    @property
    def standby_sees_primary_ready(self) -> bool | None:
        return self._ask("witness", lambda: (self._cluster.standby, f"/peer/{self._cluster.primary}/ready"))

    @property
    def primary_redis_refuses_writes(self) -> bool | None:
        _ = self.standby_sees_primary_ready                 # one witness answer says both
        return self._cache.get("witness:redis_full")

    @property
    def primary_unfit_for_storage_only(self) -> bool:
        """Asked after decide(): whether the witness found the primary up, unfit for shared storage only."""
        return bool(self._cache.get("witness:storage_only"))

    @property
    def node_in_role(self) -> bool | None:
        return self._ask("in_role", lambda: (self._alert.node, "/ready"))

    @property
    def node_storage_ok(self) -> bool | None:
        _ = self.node_in_role                               # one /ready answers both
        return self._cache.get("in_role:storage")


class Controller:
    def __init__(self, store: Store, cluster: ClusterFiles, probe: NodeProbe, runner: Runner,
                 cooldown_s: float = 60.0, notify: Callable[[dict], None] | None = None,
                 limits: d.Limits | None = None, warm: Callable[[], bool] | None = None,
                 warm_every_s: float = 90.0):
        self.store = store
        self.cluster = cluster
        self.probe = probe
        self.runner = runner
        self.cooldown_s = cooldown_s
        self.limits = limits or d.Limits()
        # "Not now" decisions (busy, locked, cooling down) are decided again by the receiver itself,
        # each loop turn (<= 1 s), until the answer changes: Alertmanager's repeat is not relied on.
        # Each pending alert with the action of its last decision (a recheck that comes to another
        # action is written and said; the same one again is not).
        self._pending: dict[tuple[str, str], tuple[d.Alert, str]] = {}
        # Alerts whose recheck came to a failover (when it first did): it starts if a recheck at least
        # CONFIRM_S later comes to it again. After a fault both nodes shared (the NAS stalled for both),
        # they come back one after the other, and the standby may be fit a moment before the primary is.
        self._confirming: dict[tuple[str, str], float] = {}
        # Pending alerts whose escalation was already said: a recheck that escalates again (after a
        # "confirming" in between, say) writes its row but does not tell the operators twice.
        self._escalated: set[tuple[str, str]] = set()
        self.notify = notify or (lambda _msg: None)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._run_thread: threading.Thread | None = None
        # Keeps the SSH connections a failover's first task needs open (see ssh_warmer).
        self.warm, self.warm_every_s = warm, warm_every_s

    # ---- lifecycle ----

    def start(self) -> Controller:
        for run in self.store.mark_interrupted():
            log.warning("%s #%d was interrupted by a restart; marked so", run["playbook"], run["id"])
            self.notify({"event": "run_interrupted", "playbook": run["playbook"], "target": run["target"]})
            self.finish_interrupted(run)
        threading.Thread(target=self._loop, name="receiver-loop", daemon=True).start()
        if self.warm is not None and self.warm_every_s > 0:
            threading.Thread(target=self._keep_warm, name="receiver-ssh-warm", daemon=True).start()
        self._wake.set()
        return self

    def _keep_warm(self) -> None:
        """Every warm_every_s, unless a playbook runs (it keeps its own connections open), open or
        keep open the connections to the nodes. Apart from the decision loop: never delays a decision."""
        while not self._stop.is_set():
            if self.store.running() is None:
                try:
                    if not self.warm():
                        log.info("keeping SSH connections to the nodes open: not every node answered")
                except Exception:
                    log.exception("keeping SSH connections to the nodes open failed")
            self._stop.wait(self.warm_every_s)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            for notification in self.store.unprocessed():
                try:
                    self.process(notification)
                except Exception:  # one bad notification must not stop the loop
                    log.exception("notification %s could not be processed", notification["id"])
                self.store.mark_processed(notification["id"])
            try:
                self.recheck()
            except Exception:
                log.exception("re-deciding a pending alert failed")

    def recheck(self) -> list[d.Decision]:
        """Decide again, by ourselves, the alerts whose last answer was "not now"."""
        decisions = []
        for alert, _action in list(self._pending.values()):
            decisions.append(self.handle(None, alert, recheck=True))
        return decisions

    # ---- one notification ----

    def process(self, notification: dict) -> list[d.Decision]:
        try:
            alerts = parse(notification["body"])
        except WebhookError as exc:  # stored bodies were validated before; be safe anyway
            log.warning("notification %s is invalid: %s", notification["id"], exc)
            return []
        return [self.handle(notification["id"], alert) for alert in alerts]

    def handle(self, notification_id: int | None, alert: d.Alert, recheck: bool = False) -> d.Decision:
        cluster = self._cluster()
        if cluster is None:
            decision = d.Decision(d.ESCALATE, "the cluster state cannot be read from shared storage; "
                                              "not acting blind; deciding again each second", recheck=True)
            epoch, probes = None, None
        else:
            running = self.store.running()
            facts = self.store.history_facts()
            history = d.History(now=time.time(), run_in_progress=(
                f"{running['playbook']} #{running['id']}" if running else None), **facts)
            probes = self.probe.probes(cluster, alert)
            decision = d.decide(alert, cluster, probes, history, self.cooldown_s, self.limits)
            epoch = cluster.epoch
        key = (alert.name, alert.node)
        since = self._confirming.pop(key, None)
        wait_s = CONFIRM_STORAGE_S if getattr(probes, "primary_unfit_for_storage_only", False) else CONFIRM_S
        if decision.action == d.FAILOVER and (recheck or since is not None) and (
                since is None or time.monotonic() - since < wait_s):
            self._confirming[key] = time.monotonic() if since is None else since
            decision = d.Decision(d.NONE, f"{decision.reason}; confirming it once more {wait_s:g} s later first "
                                          "(after a fault both nodes shared, the standby may come back a moment "
                                          "before the primary does)", recheck=True)
        before = self._pending.get(key, (None, None))[1]
        if decision.recheck:
            self._pending[key] = (alert, decision.action)
        else:
            self._pending.pop(key, None)
        if recheck and decision.recheck and decision.action == before:
            return decision   # the same answer again: not worth a row
        decision_id = self.store.add_decision(notification_id, alert.name, alert.node, alert.status, epoch,
                                              decision.action, decision.target, decision.reason)
        log.info("%s%s %s %s: %s", "re-decided: " if recheck else "", alert.name, alert.node, alert.status,
                 decision.reason, extra=fields(event="decision", epoch=epoch, action=decision.action,
                                               target=decision.target, alert=alert.name))
        if decision.action in PLAYBOOKS:
            self._start_run(decision_id, decision, epoch)
        elif decision.action == d.ESCALATE and key not in self._escalated:
            self.notify({"event": "escalation", "alert": alert.name, "node": alert.node, "reason": decision.reason})
        if decision.action == d.ESCALATE and decision.recheck:
            self._escalated.add(key)
        elif not decision.recheck:
            self._escalated.discard(key)
        return decision

    def finish_interrupted(self, run: dict) -> d.Decision:
        """Decide (and start, before any notification is looked at) what an interrupted run needs."""
        cluster = self._cluster()
        decision = d.finish_interrupted(d.Interrupted(run["id"], run["playbook"], run["target"], run["epoch_before"]),
                                        cluster)
        decision_id = self.store.add_decision(None, "ReceiverRestarted", run["target"] or "-", "firing",
                                              cluster.epoch if cluster else None, decision.action, decision.target,
                                              decision.reason)
        log.info("after a restart: %s", decision.reason,
                 extra=fields(event="decision", epoch=cluster.epoch if cluster else None, action=decision.action,
                              target=decision.target, alert="ReceiverRestarted"))
        if decision.action in PLAYBOOKS:
            self._start_run(decision_id, decision, cluster.epoch if cluster else None)
        elif decision.action == d.ESCALATE:
            self.notify({"event": "escalation", "alert": "ReceiverRestarted", "node": run["target"],
                         "reason": decision.reason})
        return decision

    def _cluster(self) -> d.Cluster | None:
        try:
            state = self.cluster.read()
            if state is None:
                return None
            return d.Cluster(state.epoch, state.primary, state.standby, self.cluster.lock_holder())
        except (StorageUnavailable, ClusterError, OSError):
            return None

    def _start_run(self, decision_id: int, decision: d.Decision, epoch: int | None) -> None:
        playbook = PLAYBOOKS[decision.action]
        run_id = self.store.start_run(decision_id, playbook, decision.target, epoch)
        log.info("%s #%d started for %s", playbook, run_id, decision.target,
                 extra=fields(event="playbook", epoch=epoch, target=decision.target, action=decision.action))
        extravars = {"tts_target": decision.target}
        if decision.action == d.FAILOVER:
            extravars["tts_expect_epoch"] = decision.expect_epoch

        def run() -> None:
            try:
                ok, detail = self.runner(playbook, extravars)
            except Exception as exc:
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            self.store.end_run(run_id, "succeeded" if ok else "failed", detail)
            log.info("%s #%d %s", playbook, run_id, "succeeded" if ok else f"failed: {detail[-300:]}",
                     extra=fields(event="playbook", epoch=epoch, target=decision.target, action=decision.action,
                                  result="succeeded" if ok else "failed"))
            if not ok:
                self.notify({"event": "run_failed", "playbook": playbook, "target": decision.target,
                             "detail": detail[-500:]})
            self.wake()  # reconsider anything that arrived meanwhile

        self._run_thread = threading.Thread(target=run, name=f"run-{run_id}", daemon=True)
        self._run_thread.start()

    def wait_idle(self, timeout: float) -> bool:
        """For tests and shutdown: wait until no run is in progress."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.store.running() is None:
                return True
            time.sleep(0.05)
        return False


def ansible_runner(project_dir: str, inventory: str, private_dir: str, extravars_file: str = "") -> Runner:
    """A Runner that runs playbooks from project_dir with ansible-runner (no shell involved). The
    only extra vars are the validated ones from the decision, plus the secrets file if given."""
    def run(playbook: str, extravars: dict) -> tuple[bool, str]:
        import ansible_runner as ar
        import yaml
        secrets = yaml.safe_load(open(extravars_file)) if extravars_file else {}
        os.makedirs(private_dir, exist_ok=True)
        # This repository keeps its playbooks under playbooks/.
        in_subdir = os.path.join(project_dir, "playbooks", playbook)
        result = ar.run(private_data_dir=private_dir, project_dir=project_dir,
                        playbook=in_subdir if os.path.exists(in_subdir) else playbook,
                        inventory=inventory, extravars={**secrets, **extravars}, quiet=True,
                        envvars={"ANSIBLE_CONFIG": f"{project_dir}/ansible.cfg",
                                 # ansible-playbook from the receiver's own virtualenv
                                 "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"})
        return result.rc == 0, f"status={result.status} rc={result.rc}"
    return run


def ssh_warmer(project_dir: str, inventory: str, private_dir: str) -> Callable[[], bool]:
    """An ad-hoc ping of the TTS nodes through ansible-runner, with the playbooks' own settings
    (ansible.cfg: ControlPersist 120 s), so that the SSH connection set-up is paid before an alert
    arrives, not on a failover's critical path. True when every node answered."""
    def warm() -> bool:
        import ansible_runner as ar
        os.makedirs(private_dir, exist_ok=True)
        result = ar.run(private_data_dir=private_dir, project_dir=project_dir, inventory=inventory,
                        host_pattern="tts_nodes", module="ansible.builtin.ping", quiet=True, rotate_artifacts=1,
                        envvars={"ANSIBLE_CONFIG": f"{project_dir}/ansible.cfg",
                                 "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"})
        return result.rc == 0
    return warm


def http_notifier(url: str) -> Callable[[dict], None]:
    """Tell the operators (the `operators` receiver's URL) — best effort, never raises."""
    def notify(message: dict) -> None:
        if not url:
            return
        body = json.dumps({"version": "4", "status": "firing", "receiver": "tts-receiver",
                           "alerts": [{"status": "firing", "labels": {"alertname": "TTSReceiverEvent",
                                                                      "node": "ctl"},
                                       "annotations": {k: str(v) for k, v in message.items()}}]}).encode()
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=3).close()
        except OSError as exc:
            log.warning("could not notify the operators: %s", exc)
    return notify
