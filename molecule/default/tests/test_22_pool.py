"""The worker pool (tts_worker_pool), after test_20 on the same converged pair: the pair's two workers
and the worker host tts-c (the tts_workers group: one inventory line) each run a job at once; the
standby's host lost mid-job is not a failover and its job finishes elsewhere as if nothing happened;
the primary's host lost while every worker runs a job fails the control plane over and every job
finishes. Jobs of the same script make the same audio: each is the others' uninterrupted run."""
import time

import requests

from lab import (
    LAB,
    NODES,
    PREFIX,
    VIP,
    cluster_state,
    firing,
    job_segments,
    new_run,
    pair_in_role,
    podman,
    receiver_runs,
    redis_hget,
    script,
    wait,
    wait_job_done,
    wait_pair_settled,
)

TURNS = 12


def jobs_running():
    """One job of the same script per worker of the pool, from a session each, all running at once, one
    on each worker: {worker: (session, job id)}."""
    wait_pair_settled()
    jobs = []
    for _ in LAB.workers:
        session = requests.Session()
        res = session.post(f"{VIP}/api/jobs", json={"script": script(TURNS)}, timeout=10)
        assert res.status_code == 202, res.text
        jobs.append((session, res.json()["id"]))

    def placed():
        seen = {}
        for session, job_id in jobs:
            job = session.get(f"{VIP}/api/jobs/{job_id}", timeout=3).json()
            if job["status"] != "running" or job["segments_done"] < 2:
                return None
            seen[job["node"]] = (session, job_id)
        return len(seen) == len(jobs) and seen
    return wait(placed, 90, f"{len(jobs)} jobs running, one on each worker ({', '.join(LAB.workers)})", interval=0.3)


def audio(session, job_id):
    res = session.get(f"{VIP}/api/jobs/{job_id}/audio", timeout=30)
    assert res.status_code == 200
    return res.content


def test_the_standbys_host_lost_mid_job_is_no_failover_and_its_job_finishes_unchanged():
    state = cluster_state()
    primary, standby = state["primary"], state["standby"]
    runs_before = {r["id"] for r in receiver_runs()}
    jobs = jobs_running()
    # Every worker of the pool runs a job (the pair's two and tts-c, one inventory line), and is shown.
    assert sorted(jobs) == sorted(LAB.workers)
    metrics = requests.get(f"{NODES[primary]}/metrics", timeout=5).text
    assert f"tts_workers_taking_jobs {float(len(LAB.workers))}" in metrics, metrics
    for worker in LAB.workers:
        assert f'tts_worker_last_seen_seconds{{worker="{worker}"}}' in metrics
    session, orphan = jobs[standby]
    lost_at = time.time()
    podman("kill", PREFIX + standby, check=True)
    try:
        done = wait_job_done(session, orphan, TURNS, timeout=300)
        took = time.time() - lost_at
        assert done["node"] != standby, done
        recomputed = int(redis_hget(primary, f"tts:job:{orphan}", "attempts")) - TURNS
        assert recomputed <= 1, recomputed
        for other_session, other in jobs.values():
            wait_job_done(other_session, other, TURNS, timeout=120)
        # As without the fault: the same script's audio on every worker, the orphan's too.
        assert len({audio(s, j) for s, j in jobs.values()}) == 1
        assert (cluster_state()["primary"], cluster_state()["epoch"]) == (primary, state["epoch"])
        # The operators hear of it: its worker went silent in Redis.
        wait(lambda: any(a["labels"].get("worker") == standby for a in firing("TTSWorkerDown")), 150,
             "TTSWorkerDown for the lost worker", interval=2)
        assert [r for r in receiver_runs() if r["id"] not in runs_before and r["playbook"] == "failover.yml"] == []
    finally:
        podman("start", PREFIX + standby)
    wait(pair_in_role, 180, "the standby back in its role", interval=1)
    print(f"\nstandby {standby} lost mid-job: its job finished on {done['node']} {took:.1f} s later, "
          f"{recomputed} chunk(s) recomputed, no failover")


def test_the_primarys_host_lost_while_every_worker_runs_a_job_fails_over_and_every_job_finishes():
    state = cluster_state()
    primary, standby = state["primary"], state["standby"]
    runs_before = {r["id"] for r in receiver_runs()}
    jobs = jobs_running()
    lost_at = time.time()
    podman("kill", PREFIX + primary, check=True)
    try:
        run = wait(lambda: new_run(runs_before, "failover.yml", standby), 120, f"failover.yml to {standby}")
        assert run["result"] == "succeeded", run
        finished = {}
        for node, (session, job_id) in jobs.items():
            job = wait_job_done(session, job_id, TURNS, timeout=300)
            assert job["node"] != primary, job
            finished[node] = (session, job_id, int(redis_hget(standby, f"tts:job:{job_id}", "attempts")) - TURNS)
        # Each job at most the chunk in hand recomputed: the dead primary's, and the survivors' (their
        # writes to the dead primary's Redis failed after their chunk was committed; they took their jobs
        # back from the new primary's).
        assert all(recomputed <= 1 for *_, recomputed in finished.values()), finished
        assert len({audio(s, j) for s, j, _ in finished.values()}) == 1
        assert all(sorted(i for i, *_ in job_segments(j)) == list(range(TURNS)) for _, j, _ in finished.values())
        took = time.time() - lost_at
    finally:
        runs_before = {r["id"] for r in receiver_runs()}
        podman("start", PREFIX + primary)
    wait(lambda: new_run(runs_before, "rejoin.yml", primary), 180, f"rejoin.yml for {primary}", interval=0.5)
    wait(pair_in_role, 120, "the pair in its roles", interval=1)
    assert requests.get(f"{NODES[primary]}/standby", timeout=2).status_code == 200
    # Syntheses counted in Redis minus chunks: what each job recomputed; below 0 where a survivor's counts went
    # to the dead primary's Redis after its last replicated write (the counter is best-effort in a pool).
    print(f"\nprimary {primary} lost with every worker busy: failed over, every job done {took:.1f} s after the loss; "
          f"syntheses counted minus chunks, per job: {', '.join(f'{n}: {r}' for n, (_, _, r) in finished.items())}")
