"""The failover chain rehearsed on the converged pair, after test_10_pair (same `molecule verify`):
a job in flight, the primary's app killed ("app killed" in docs/contracts.md), then the new primary's host
lost (`podman kill`). Waits on real events only (receiver runs, job state, /ready of both nodes);
prints the measured RTO split into its stages. Runs against the lab too:
    TTS_TEST_INVENTORY=inventory/lab/hosts.yml .venv/bin/pytest -s molecule/default/tests/test_20_failover.py
"""
import sys
import time

import numpy as np
import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from lab import (
    APP_BACK,
    APP_KILLED,
    LAB_CA,
    LAB_PASSWORD,
    LAB_USER,
    NODES,
    PREFIX,
    SHARED,
    VIP,
    RoleWatcher,
    cluster_state,
    follow_rejoin,
    new_run,
    on,
    operator_playbook,
    podman,
    receiver,
    receiver_runs,
    redis_hget,
    start_job,
    wait,
)

sys.path.insert(0, str(LAB_CA.parents[1]))              # the project root: tests.browser
from tests.browser import HAVE_CHROMIUM, chromium, heard, heard_and_final

TURNS = 12


@pytest.fixture
def watcher():
    w = RoleWatcher()
    w.start()
    yield w
    w.finish()


def job_in_flight():
    """The pair as it stands and a job in flight through the VIP: (primary, standby, the receiver's runs
    so far, the job's session, its id)."""
    state = cluster_state()
    runs_before = {r["id"] for r in receiver_runs()}
    session = requests.Session()
    return state["primary"], state["standby"], runs_before, session, start_job(session, TURNS)


def follow_failover(session, job_id, primary, standby, t_fault, runs_before):
    """Wait for the chain; return the stages of the RTO (seconds after the fault)."""
    run = wait(lambda: new_run(runs_before, "failover.yml", standby), 90, f"failover.yml to {standby}")
    assert run["result"] == "succeeded", run
    first_primary = wait(lambda: requests.get(f"{VIP}/primary", timeout=1).status_code == 200 and time.time(),
                         60, "/primary through the VIP", interval=0.1)
    job = wait(lambda: (j := session.get(f"{VIP}/api/jobs/{job_id}", timeout=3).json())["status"] == "done" and j,
               180, "the job to finish")
    # Every worker takes jobs (the pool): the job went on on a free one (the standby, or the worker host).
    assert job["node"] != primary and job["segments_done"] == TURNS, job
    names = on("nas", f"ls {SHARED}/jobs/{job_id}/segments").split()
    indexes = [n.split(".")[0] for n in names]
    assert sorted(set(indexes)) == [f"{i:05d}" for i in range(TURNS)] and len(indexes) == TURNS, names
    recomputed = int(redis_hget(standby, f"tts:job:{job_id}", "attempts")) - TURNS
    assert recomputed <= 1
    claimed = float(redis_hget(standby, f"tts:job:{job_id}", "claimed_at"))
    assert job_id in [j["id"] for j in session.get(f"{VIP}/api/jobs", timeout=3).json()["jobs"]]
    decided = [d for d in receiver()["decisions"]
               if d["action"] == "failover" and d["target"] == standby]
    return {"decision": decided[0]["decided_at"] - t_fault, "playbook_start": run["started_at"] - t_fault,
            "playbook_end": run["ended_at"] - t_fault, "first_primary_via_vip": first_primary - t_fault,
            "job_running_again": claimed - t_fault, "recomputed": recomputed}


def report(case, stages):
    print(f"\nRTO, {case} (seconds after the fault; source design: standby took over after 22 s, job lost):")
    for key, value in stages.items():
        print(f"  {key:24s} {value:7.2f}" if key != "recomputed" else f"  {key:24s} {value:7d}")


def listen_in_the_page(session, job_id, profile):
    """The page through the VIP (HTTPS, logged in, the job's own session), listening to the job."""
    browser = chromium(profile, trust_ca=LAB_CA, login=(LAB_USER, LAB_PASSWORD, VIP))
    browser.set_script_timeout(60)
    browser.get(f"{VIP}/health")
    browser.add_cookie({"name": "tts_session", "value": session.cookies["tts_session"], "path": "/", "secure": True})
    browser.get(f"{VIP}/?record")
    WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f'#jobs li[data-id="{job_id}"] button.listen'))
    browser.find_element(By.CSS_SELECTOR, f'#jobs li[data-id="{job_id}"] button.listen').click()
    WebDriverWait(browser, 30).until(lambda d: (heard(d) or {}).get("played", 0) > 0)
    return browser


def test_app_killed_on_the_primary(watcher, tmp_path):
    primary, standby, runs_before, session, job_id = job_in_flight()
    browser = listen_in_the_page(session, job_id, tmp_path) if HAVE_CHROMIUM else None
    t_fault = time.time()
    on(primary, APP_KILLED)
    try:
        stages = follow_failover(session, job_id, primary, standby, t_fault, runs_before)
        report(f"app killed on {primary}", stages)
        if browser is not None:
            # The listener in the page carried on through the failover: what it played is the final file.
            WebDriverWait(browser, 120, poll_frequency=1).until(
                lambda d: "finished" in d.find_element(By.ID, "listen-state").text)
            played, final, rate, pauses = heard_and_final(browser, job_id)
            print(f"\nthe page heard {len(played) / rate:.2f} s of the {len(final) / rate:.2f} s file through "
                  f"the failover; {len(pauses)} pause(s), the longest {max(pauses, default=0.0):.2f} s")
            assert len(played) == len(final) and np.array_equal(played, final), (len(played), len(final))
            assert not browser.find_element(By.ID, "connection").is_displayed()
    finally:
        if browser is not None:
            browser.quit()
    state = cluster_state()
    assert state["primary"] == standby
    # failover.yml stopped the old primary's app for certain and recorded it in the state.
    assert (state.get("fenced") or {}).get("node") == primary and state["fenced"]["epoch"] == state["epoch"], state
    failovers = [r for r in receiver_runs() if r["id"] not in runs_before and r["playbook"] == "failover.yml"]
    assert len(failovers) == 1
    # The job's story on ctl, from every host's uploaded journal and the receiver's own: claimed on the
    # old primary, the receiver's decision sentence, claimed again (by a free worker of the pool: it may
    # be before the decision, the lease lapsing first) and finished there.
    job = session.get(f"{VIP}/api/jobs/{job_id}", timeout=3).json()
    story = wait(lambda: (s := on("ctl", f"tts-logs job {job_id}")) and f"job {job_id}: finished" in s and s,
                 30, "the job's story on ctl")
    lines = story.splitlines()
    assert {line.split()[1] for line in lines if " claimed " in line} == {primary, job["node"]}, story
    assert any(" decision " in line and f"failing over to {standby}" in line for line in lines), story
    assert "failover.yml" in on("ctl", "tts-logs failover")
    print(f"\ntts-logs job {job_id} on ctl:\n{story}")
    # The app comes back: TTSNodeNotInRole -> rejoin.yml makes it the standby.
    runs_before = {r["id"] for r in receiver_runs()}
    on(primary, APP_BACK)
    follow_rejoin(primary, runs_before)


def test_host_of_the_new_primary_lost(watcher):
    primary, standby, runs_before, session, job_id = job_in_flight()
    t_fault = time.time()
    podman("kill", PREFIX + primary)
    try:
        stages = follow_failover(session, job_id, primary, standby, t_fault, runs_before)
        report(f"host {primary} lost", stages)
        failovers = [r for r in receiver_runs() if r["id"] not in runs_before and r["playbook"] == "failover.yml"]
        assert len(failovers) == 1
        # A lost host cannot be confirmed fenced: the new primary knew its belief had expired from the
        # dead node's last mark on the NAS (its own clock), and said so in its journal (shipped to ctl).
        assert "fenced" not in cluster_state()
        epoch = cluster_state()["epoch"]
        handover = wait(lambda: [line for line in on("ctl", "journalctl -D /var/log/journal/remote -o cat "
                                                            f"TTS_EVENT=handover TTS_EPOCH={epoch}").splitlines()
                                 if "acting as the primary" in line], 30, "the handover in the journal")
        assert any("expired by the NAS's clock" in line for line in handover), handover
    finally:
        runs_before = {r["id"] for r in receiver_runs()}
        podman("start", PREFIX + primary)
    follow_rejoin(primary, runs_before)
    assert cluster_state()["primary"] == standby


def test_a_switchover_run_without_the_locks_keeper_stops_before_changing_anything():
    """switchover.yml run bare (not through tts-cluster run-locked) holds no lock: it stops at its first
    check with the command to use, before any worker was stopped."""
    before = cluster_state()
    with pytest.raises(AssertionError, match="tts-cluster run-locked --holder switchover.yml"):
        operator_playbook("switchover.yml", before["standby"], locked=False)
    assert cluster_state() == before
    assert requests.get(f"{NODES[before['primary']]}/primary", timeout=3).status_code == 200


def test_planned_switchover_loses_nothing(watcher):
    """An operator on ctl runs switchover.yml (as the receiver's user, with its key and inventory)."""
    primary, standby, runs_before, session, job_id = job_in_flight()
    started = time.time()
    operator_playbook("switchover.yml", standby)
    took = time.time() - started
    assert cluster_state()["primary"] == standby
    job = wait(lambda: (j := session.get(f"{VIP}/api/jobs/{job_id}", timeout=3).json())["status"] == "done" and j,
               180, "the job to finish")
    assert job["node"] != primary                                              # handed over to a free worker
    assert int(redis_hget(standby, f"tts:job:{job_id}", "attempts")) == TURNS   # nothing recomputed
    assert requests.get(f"{NODES[primary]}/standby", timeout=2).status_code == 200
    assert [r for r in receiver_runs() if r["id"] not in runs_before] == []     # the receiver kept out
    print(f"\nswitchover {primary} -> {standby}: {took:.1f} s, 0 segments recomputed")
