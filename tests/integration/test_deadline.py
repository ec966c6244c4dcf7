"""A chunk deadline: an engine call that takes far longer than the chunks before it is a hang. The
job's lease is left to lapse (another attempt resumes it from its last checkpoint) and a chunk that
comes after all is not committed; the second hang makes the node unfit (/ready 503), so the pair fails
over instead of waiting for a person."""
import threading
import time
from dataclasses import replace

import pytest
from tts_service.worker import Worker

SCRIPT = "\n".join(f"Speaker {n % 2 + 1}: Turn number {n} of the script." for n in range(4))


@pytest.fixture
def hanging(rt):
    """A worker whose engine hangs on its `at`-th chunk for `seconds` (forever: None, until released)."""
    # The deadline is 1 s whatever the chunks before took (factor 0); the keeper looks every 0.3 s.
    rt.settings = replace(rt.settings, chunk_deadline_min_s=1.0, chunk_deadline_factor=0.0, lease_s=0.9)
    worker = Worker(rt)
    worker.engine_loaded = True
    release = threading.Event()
    real = rt.engine.stream
    calls = []

    def arm(at, seconds):
        def stream(*args, **kw):
            for chunk in real(*args, **kw):
                calls.append(1)
                if len(calls) == at:
                    release.wait(seconds)
                yield chunk
        rt.engine.stream = stream
    yield worker, arm, release
    release.set()
    rt.engine.stream = real


def test_a_chunk_past_its_deadline_lets_the_lease_lapse_and_the_job_resumes(rt, api, hanging):
    worker, arm, _release = hanging
    job_id = api.post("/api/jobs", json={"script": SCRIPT}).get_json()["id"]
    arm(at=2, seconds=1.5)                      # one chunk takes 1.5 s: past one deadline, not two
    said = worker.cycle()
    assert said.startswith(f"abandoned {job_id} because the engine has been on one chunk"), said
    assert "it hangs" in said
    assert rt.store.get(job_id)["segments_done"] == "1"          # the late chunk was not committed
    assert "the engine hung on this job" in rt.store.get(job_id)["error"]
    assert worker.engine_loaded                                  # one hang: the node is still fit
    rt.engine.stream = type(rt.engine).stream.__get__(rt.engine)
    for _ in range(10):
        worker.cycle()
        if rt.store.get(job_id)["status"] == "done":
            break
    assert rt.store.get(job_id)["status"] == "done"


def test_an_engine_that_hangs_for_good_makes_the_node_unfit_while_it_hangs(rt, api, hanging):
    """The worker's own thread is stuck in the engine: the lease keeper and the heartbeat still run, so
    the node says it is unfit (the second deadline passed) and the receiver fails it over."""
    from tts_service import heartbeat
    worker, arm, release = hanging
    job_id = api.post("/api/jobs", json={"script": SCRIPT}).get_json()["id"]
    arm(at=2, seconds=None)
    stuck = threading.Thread(target=worker.cycle, daemon=True)
    stuck.start()
    deadline = time.monotonic() + 15
    while worker.engine_loaded and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not worker.engine_loaded
    assert "the engine hung 2 times in the last hour" in worker.engine_error
    hb, _why = heartbeat.read(heartbeat.heartbeat_path(rt.settings.run_dir, rt.settings.node))
    assert hb["engine_loaded"] is False and "unfit to run jobs" in hb["engine_error"]
    assert rt.store.lease_holder(job_id) is None                 # lapsed: the job is free for another attempt
    release.set()
    stuck.join(10)
    assert not stuck.is_alive()                                  # the late chunk ended the run: abandoned
