"""The order workers claim jobs in (jobs.claim_order): interrupted jobs first, then sessions in turn."""
from tts_service.jobs import claim_order


def job(session, created, interrupted=False):
    return {"session": session, "created_at": created, "interrupted": interrupted}


def test_one_sessions_burst_does_not_hold_every_worker():
    jobs = {f"a{i}": job("A", i) for i in range(5)}          # A queued five jobs first
    jobs["b0"] = job("B", 10)                                 # then B one, C two
    jobs["c0"], jobs["c1"] = job("C", 11), job("C", 12)
    assert claim_order(jobs) == ["a0", "b0", "c0", "a1", "c1", "a2", "a3", "a4"]


def test_interrupted_jobs_go_first_and_count_as_their_sessions_turn():
    jobs = {"a0": job("A", 0, interrupted=True), "a1": job("A", 1), "b0": job("B", 5), "b1": job("B", 6)}
    # A already has a job running (or resuming): B's first goes before A's second.
    assert claim_order(jobs) == ["a0", "b0", "a1", "b1"]


def test_one_session_alone_is_served_oldest_first():
    jobs = {"x": job("A", 3), "y": job("A", 1), "z": job("A", 2)}
    assert claim_order(jobs) == ["y", "z", "x"]


def test_a_session_served_a_moment_ago_waits_for_the_others_turn():
    """One worker: A's first job has run (and is gone from the queue); A's second waits behind the first
    job of every session not served since, though A submitted it first."""
    jobs = {"a1": job("A", 1), "a2": job("A", 2), "b0": job("B", 10), "c0": job("C", 11)}
    assert claim_order(jobs, served={"A": 100.0}) == ["b0", "c0", "a1", "a2"]
    # B served after C: C's turn first.
    assert claim_order({"b0": job("B", 10), "c0": job("C", 11)}, served={"B": 200.0, "C": 150.0}) == ["c0", "b0"]
