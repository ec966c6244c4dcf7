"""`tts-drill run`: one failover drill, start to end, from the controller (ctl). playbooks/drill.yml
is its entry point: it passes the inventory's values (addresses, ports, the VIP, the lab's power
switch) and this orchestrator does the rest in one language:

    preflight  both nodes fit for their roles, no receiver run in progress, no recent failover
    canary     a multi-speaker job through the VIP, watched to the end (watch.py)
    switch     drill_mode=switchover: switchover.yml under the drill's cluster lock (its token in
               TTS_LOCK_TOKEN, as `tts-cluster run-locked` hands it over);
               kill / redis-down: `tts-fault` on the primary, then the real alert chain acts;
               host-lost: the inventory's power-off command for the primary's host
    verify     the canary on shared storage (`tts-drill verify` on the new primary), the old
               primary back as the standby
    report     drills/<UTC timestamp>.json and .md on shared storage (report.py), in the journal

A failing step ends the drill with a failed report naming that step; a fault injected is always
lifted again. The cluster lock is held from preflight to the switch (a fault drill releases it just
before the fault, so that the receiver can act), renewed by a LockKeeper thread of this process.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .. import journal
from ..cluster import Cluster, ClusterError
from ..config import storage_timeout_from_env
from ..httpjson import get_json
from ..lockkeeper import TOKEN_ENV, LockKeeper, with_parent
from ..storage import Storage, StorageUnavailable
from . import report
from .watch import Watcher

MODES = ("switchover", "kill", "redis-down", "host-lost")
# tts-fault's names for a mode's fault and its undoing (roles/tts_app/files/tts-fault).
FAULTS = {"kill": ("app-killed", "app-back"), "redis-down": ("redis-down", "redis-back")}


@dataclass(frozen=True)
class Plan:
    """What the drill needs from the inventory (the failover_drill role writes it as JSON at deploy time:
    roles/failover_drill/templates/drill-plan.json.j2)."""
    mode: str
    shared_dir: Path
    vip: str                          # tts_vip_url
    receiver: str                     # the alert receiver's base URL
    nodes: dict[str, str]             # node -> its app's base URL (or node_addresses + app_port)
    project: Path                     # this repository on the controller (playbooks/, ansible.cfg)
    inventory: str
    extra_vars: list[str] = field(default_factory=list)   # -e arguments for the playbooks (secrets)
    turns: int = 12
    cooldown_s: float = 60.0          # no drill within this long after a failover ended
    canary_timeout_s: float = 600.0   # submission to the canary's end
    rejoin_timeout_s: float = 180.0   # the old primary a ready standby again
    lock_ttl_s: float = 30.0
    allow_host_kill: bool = False
    host_kill_cmd: list[str] = field(default_factory=list)
    host_start_cmd: list[str] = field(default_factory=list)
    login_file: str = ""              # "user:password" for the VIP's basic auth (tts_access: basic)

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        data = dict(data)
        if "node_addresses" in data:   # drill.yml: every node's app on the same port
            port = data.pop("app_port")
            data["nodes"] = {node: f"http://{address}:{port}" for node, address in data.pop("node_addresses").items()}
        data["shared_dir"], data["project"] = Path(data["shared_dir"]), Path(data["project"])
        for key in ("host_kill_cmd", "host_start_cmd"):
            value = data.get(key) or []
            data[key] = value.split() if isinstance(value, str) else list(value)
        return cls(**data)

    def receiver_headers(self) -> dict[str, str]:
        """The receiver's /runs wants the webhook's token: the drill has it among the secrets it is
        handed for the playbooks (extra_vars' @files, as the receiver keeps them)."""
        import yaml
        for value in self.extra_vars:
            if not value.startswith("@"):
                continue
            try:
                secrets = yaml.safe_load(Path(value[1:]).read_text()) or {}
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(secrets, dict) and secrets.get("tts_alert_token"):
                return {"Authorization": f"Bearer {secrets['tts_alert_token']}"}
        return {}


class StepFailed(Exception):
    pass


class Ansible:
    """The drill's hands on the nodes: this project's playbooks and ad-hoc commands, with the
    controller's Ansible (the one running drill.yml)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.bin = Path(sys.executable).parent
        self.env = dict(os.environ)
        if (plan.project / "ansible.cfg").exists():
            self.env["ANSIBLE_CONFIG"] = str(plan.project / "ansible.cfg")

    def _extra(self) -> list[str]:
        return [arg for value in self.plan.extra_vars for arg in ("-e", value)]

    def playbook(self, name: str, extra: dict, timeout: float = 900, lock_token: str = "") -> subprocess.CompletedProcess:
        """Run a playbook; lock_token: under the cluster lock the caller holds (TTS_LOCK_TOKEN). It is
        told to stop if this process dies (the lock is no longer kept then). From the main thread only."""
        env = {**self.env, TOKEN_ENV: lock_token} if lock_token else self.env
        return subprocess.run(with_parent([str(self.bin / "ansible-playbook"), "-i", self.plan.inventory,
                                           str(self.plan.project / "playbooks" / name), *self._extra(),
                                           "-e", json.dumps(extra)]),
                              cwd=self.plan.project, env=env, capture_output=True, text=True, timeout=timeout)

    def command(self, host: str, argv: list[str], timeout: float = 120) -> tuple[int, str]:
        """Run argv on host through ansible-runner, as the receiver does: (its exit status, its stdout);
        -1 when the host could not be reached."""
        import ansible_runner
        with tempfile.TemporaryDirectory(prefix="tts-drill-runner-") as private:
            result = ansible_runner.run(
                private_data_dir=private, project_dir=str(self.plan.project), inventory=self.plan.inventory,
                host_pattern=host, module="ansible.builtin.command", module_args=json.dumps({"argv": argv}),
                cmdline=" ".join(shlex.quote(arg) for arg in self._extra()), quiet=True, timeout=int(timeout),
                envvars={"ANSIBLE_CONFIG": self.env.get("ANSIBLE_CONFIG", ""),
                         "PATH": f"{self.bin}:{os.environ.get('PATH', '')}"})
            return command_result(list(result.events), host)


def command_result(events: list[dict], host: str) -> tuple[int, str]:
    """(rc, stdout) of `host` in an ad-hoc command's ansible-runner events; -1 if it did not answer."""
    for event in events:
        data = event.get("event_data") or {}
        if data.get("host") != host:
            continue
        if event.get("event") in ("runner_on_ok", "runner_on_failed"):
            res = data.get("res") or {}
            return int(res.get("rc", 1)), res.get("stdout", "")
        if event.get("event") == "runner_on_unreachable":
            return -1, ""
    return -1, ""


def _utc_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")



@dataclass
class DrillRecord:
    """What the drill saw happen, step by step; its report is built from it (report.build)."""
    id: str
    mode: str
    started_at: float
    before: dict = field(default_factory=dict)      # primary, standby and epoch as the drill began
    after: dict = field(default_factory=dict)       # the cluster state as it ended (changed_at: when)
    settings: dict = field(default_factory=dict)    # the engine and its pacing, from the primary's /ready
    fault_at: float | None = None                   # when the fault struck (or the switchover began)
    playbook_started_at: float | None = None        # switchover.yml's run, in a switchover drill
    playbook_ended_at: float | None = None
    failed_step: str | None = None                  # the step that failed, as the report names it
    error: str | None = None
    ended_at: float | None = None

class Drill:
    def __init__(self, plan: Plan, ansible: Ansible | None = None, workdir: Path | None = None):
        self.plan = plan
        self.ansible = ansible or Ansible(plan)
        self.cluster = Cluster(Storage(plan.shared_dir, timeout=storage_timeout_from_env()),
                               plan.shared_dir / "cluster")
        self.own_workdir = workdir is None     # the watcher's notes, removed at the end if ours
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="tts-drill-"))
        self.record = DrillRecord(id=_utc_id(), mode=plan.mode, started_at=time.time())
        self.step = "Read who is primary now"
        self.keeper: LockKeeper | None = None
        self.watcher: Watcher | None = None
        self.watch_thread: threading.Thread | None = None
        self.fault_injected = False
        self.verdict: dict = {}

    # ---- the steps: each named as the report names a failed one ----

    def _do(self, step: str, ok: bool, why: str = "") -> None:
        self.step = step
        if not ok:
            raise StepFailed(why or step)

    def read_state(self) -> dict:
        try:
            state = self.cluster.read()
        except (ClusterError, StorageUnavailable) as exc:
            raise StepFailed(f"the cluster state cannot be read: {exc}") from exc
        if state is None:
            raise StepFailed("there is no cluster state on shared storage")
        return state.to_dict()

    def check_request(self) -> None:
        p = self.plan
        self._do("Check the request", p.mode in MODES, f"drill_mode is one of {', '.join(MODES)}, not {p.mode}")
        self._do("Check the request", p.mode != "host-lost" or (p.allow_host_kill and p.host_kill_cmd
                                                                   and p.host_start_cmd),
                 "host-lost needs drill_allow_host_kill=true, drill_host_kill_cmd and drill_host_start_cmd")

    def take_lock(self) -> None:
        self.step = "Take the cluster lock (no failover or other drill meanwhile; renewed while the drill runs)"
        self.keeper = LockKeeper(self.cluster, "drill.yml", self.plan.lock_ttl_s)
        try:
            self.keeper.acquire()
        except (ClusterError, StorageUnavailable) as exc:
            self.keeper = None
            raise StepFailed(str(exc)) from exc

    def release_lock(self) -> bool:
        """Stop renewing, release the lock; True when it is free now (if not, its TTL ends it)."""
        keeper, self.keeper = self.keeper, None
        return keeper.release() if keeper is not None else True

    def preflight(self) -> None:
        p, before = self.plan, self.record.before
        status, body, error = get_json(f"{p.nodes[before['primary']]}/primary", 5)
        self._do("Preflight - the primary serves as the primary", status == 200,
                 f"{before['primary']} answers /primary with {status or error}")
        self.record.settings = {k: body[k] for k in ("engine", "engine_pace") if k in body}
        status, body, error = get_json(f"{p.nodes[before['standby']]}/ready", 5)
        self._do("Preflight - the standby is ready and its replica in sync",
                 status == 200 and body.get("role") == "standby" and bool((body.get("checks") or {}).get("redis")),
                 f"{before['standby']} answers /ready with {status or error}: {json.dumps(body)[:300]}")
        status, body, error = get_json(f"{p.receiver}/runs", 10, p.receiver_headers())
        runs = body.get("runs") or []
        recent = [r for r in runs if r.get("playbook") == "failover.yml" and isinstance(r.get("ended_at"), (int, float))
                  and r["ended_at"] > self.record.started_at - p.cooldown_s]
        self._do("Preflight - no receiver run in progress and no failover in cooldown",
                 status == 200 and not any(r.get("result") == "running" for r in runs) and not recent,
                 f"the receiver ({status or error}) is running a playbook, or a failover ended less than "
                 f"{p.cooldown_s:.0f} s ago")

    def start_canary(self) -> None:
        self.step = "Start the canary job through the VIP and watch it"
        # The canary logs in where the VIP wants it: "user:password" from the plan's login_file (never
        # on a command line or in the plan itself).
        self.watcher = Watcher(self.plan.vip, self.record.before["standby"], self.workdir / "watch.json",
                               turns=self.plan.turns, timeout=self.plan.canary_timeout_s,
                               login=Path(self.plan.login_file).read_text().strip() if self.plan.login_file else "",
                               source=self.record.before["primary"])
        self.watch_thread = threading.Thread(target=self.watcher.run, name="canary", daemon=True)
        self.watch_thread.start()
        deadline = time.monotonic() + 120
        while not (self.watcher.obs.in_flight or self.watcher.obs.finished) and time.monotonic() < deadline:
            time.sleep(0.2)
        obs = self.watcher.obs
        self._do("Check the canary is in flight", obs.in_flight and not obs.error,
                 f"the canary is not in flight: {obs.error or obs.job}")

    def switch_over(self) -> None:
        before = self.record.before
        self.step = "Switch over"
        self.record.fault_at = self.record.playbook_started_at = time.time()
        run = self.ansible.playbook("switchover.yml", {"tts_target": before["standby"], "switchover_by": "drill.yml"},
                                    lock_token=self.keeper.token)
        self._do("Switch over", run.returncode == 0,
                 f"switchover.yml exited {run.returncode}: {(run.stdout + run.stderr)[-400:]}")
        self.record.playbook_ended_at = time.time()

    def inject_fault(self) -> None:
        p, primary = self.plan, self.record.before["primary"]
        # Never a fault while the receiver is kept out: no fault unless the lock is free.
        self._do("Release the cluster lock so that the receiver can act", self.release_lock(),
                 "the cluster lock could not be released (it expires within its TTL); no fault injected")
        self.step = f"inject {p.mode} on the primary"
        self.record.fault_at = time.time()
        self.fault_injected = True
        if p.mode in FAULTS:
            rc, struck = self.ansible.command(primary, ["/usr/local/sbin/tts-fault", FAULTS[p.mode][0]])
            self._do("Break the primary's app or Redis and keep it down", rc == 0, f"tts-fault exited {rc}")
        else:
            run = subprocess.run(p.host_kill_cmd + [primary], capture_output=True, text=True, timeout=120)
            self._do("Kill the primary's host (prints when it was done)", run.returncode == 0,
                     f"{' '.join(p.host_kill_cmd)} exited {run.returncode}: {run.stderr[-300:]}")
            struck = run.stdout
        try:   # tts-fault and the host killer say when the fault struck (not when the command started)
            self.record.fault_at = float(struck.strip().splitlines()[-1])
        except (ValueError, IndexError):
            pass

    def check_canary(self) -> None:
        self.step = "Wait for the canary to finish"
        self.watch_thread.join(self.plan.canary_timeout_s + 60)
        obs, target, source = self.watcher.obs, self.record.before["standby"], self.record.before["primary"]
        # Every host's worker takes jobs (the pool): the canary goes on on whichever was free, never on the
        # primary the fault struck.
        self._do("Check the canary finished away from the old primary",
                 not obs.error and obs.job.get("status") == "done" and obs.job.get("node") not in ("", None, source),
                 f"the canary: {obs.error or obs.job}")
        rc, out = self.ansible.command(target, ["/usr/local/bin/tts-drill", "verify", obs.job_id,
                                                "--env-file", "/etc/tts/tts.env"])
        try:
            self.verdict = json.loads(out)
        except ValueError:
            self.verdict = {"job_id": obs.job_id, "ok": False, "reason": f"tts-drill verify exited {rc}"}
        self._do("Check the canary's segments and audio on shared storage", bool(self.verdict.get("ok")),
                 str(self.verdict.get("reason")))

    def undo_fault(self) -> None:
        """Lift the fault; it counts as lifted only once that worked (a failed drill tries again)."""
        if not self.fault_injected:
            return
        p, primary = self.plan, self.record.before["primary"]
        if p.mode in FAULTS:
            rc, _ = self.ansible.command(primary, ["/usr/local/sbin/tts-fault", FAULTS[p.mode][1]])
            self._do("Bring the old primary's app or Redis back", rc == 0, f"tts-fault exited {rc}")
        elif p.mode == "host-lost":
            run = subprocess.run(p.host_start_cmd + [primary], capture_output=True, text=True, timeout=300)
            self._do("Bring the old primary's host back", run.returncode == 0,
                     f"{' '.join(p.host_start_cmd)} exited {run.returncode}: {run.stderr[-300:]}")
        self.fault_injected = False

    def wait_rejoined(self) -> None:
        old = self.record.before["primary"]
        deadline = time.monotonic() + self.plan.rejoin_timeout_s
        while True:
            status, _body, _error = get_json(f"{self.plan.nodes[old]}/standby", 3)
            if status == 200:
                return
            self._do("Wait until the old primary is a ready standby again", time.monotonic() < deadline,
                     f"{old} did not answer /standby with 200 within {self.plan.rejoin_timeout_s:.0f} s")
            time.sleep(2)

    # ---- the whole drill ----

    def run(self) -> dict:
        try:
            self.record.before = {k: v for k, v in self.read_state().items() if k in ("primary", "standby", "epoch")}
            self.check_request()
            self.take_lock()
            self.preflight()
            self.start_canary()
            if self.plan.mode == "switchover":
                self.switch_over()
            else:
                self.inject_fault()
            self.check_canary()
            self.undo_fault()
            self.wait_rejoined()
        except Exception as exc:
            self.record.failed_step, self.record.error = self.step, (str(exc) or type(exc).__name__)[:500]
            try:
                self.undo_fault()
            except Exception:
                print(f"tts-drill: could not undo the fault: {sys.exc_info()[1]}", file=sys.stderr)
        finally:
            self.release_lock()
        return self.finish()

    def finish(self) -> dict:
        self.record.ended_at = time.time()
        try:
            self.record.after = self.read_state()
            self.record.after["changed_at"] = self.record.after.get("updated_at")
        except StepFailed:
            self.record.after = {}
        _status, receiver, _error = get_json(f"{self.plan.receiver}/runs", 10, self.plan.receiver_headers())
        watched = asdict(self.watcher.obs) if self.watcher else {}
        rep = report.build(asdict(self.record), watched, self.verdict, receiver)
        try:
            publish(rep, self.plan.shared_dir / "drills")
        except (OSError, StorageUnavailable) as exc:   # the report still goes to stdout; the drill fails
            rep["result"], rep["error"] = "failed", f"the report could not be written to shared storage: {exc}"
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return rep


def publish(rep: dict, drills_dir: Path) -> tuple[Path, Path]:
    """Write the report (drills/<id>.json and .md) and say so in the journal."""
    js, md = report.write(rep, drills_dir)
    before = rep.get("before") or {}
    journal.send("tts-drill", socket.gethostname(),
                 f"drill {rep['id']} ({rep['mode']}): {rep['result']}"
                 + (f", RTO {rep['rto_s']:.1f} s" if rep.get("rto_s") is not None else "")
                 + (f"; {rep['error']}" if rep.get("error") else "") + f" (report {md})",
                 event="drill", epoch=before.get("epoch"), job=(rep.get("canary") or {}).get("job_id"),
                 result=rep["result"])
    return js, md
