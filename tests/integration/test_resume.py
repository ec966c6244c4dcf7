"""Jobs survive the death of their node (leases, resume, fencing).

Two real nodes on this machine (gunicorn + tts-worker each, names tts-a and tts-b), one redis-server,
one jobs folder. The failover itself is done here by hand with `tts-cluster promote`, as failover.yml
will do it."""
import hashlib
import io
import json
import os
import signal
import threading
import time

import requests
import soundfile as sf

from tests.harness import Node, chunk_key, cluster_cli, dialogue, node_env, wait_for

TURNS = 12
SETTINGS = dict(TTS_ENGINE_PACE=0.2, TTS_LEASE_SECONDS=2, TTS_STATE_MAX_AGE=3, TTS_RECONCILE_INTERVAL=2)


def segment_files(shared, job_id) -> dict[str, str]:
    """name -> sha256 of every segment file of the job."""
    folder = shared / "jobs" / job_id / "segments"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()
            if not p.name.startswith(".")}


def by_epoch(files: dict, epoch: int) -> dict:
    return {name: digest for name, digest in files.items() if name.endswith(".wav") and chunk_key(name)[1] == epoch}


def submit(node, session) -> str:
    res = session.post(f"{node.url}/api/jobs", json={"script": dialogue(TURNS)})
    assert res.status_code == 202, res.text
    return res.json()["id"]


def wait_segments(shared, job_id, n):
    wait_for(lambda: len(segment_files(shared, job_id)) >= n, 60, what=f"{n} segments")


def wait_done(node, session, job_id, timeout=90):
    return wait_for(lambda: (j := session.get(f"{node.url}/api/jobs/{job_id}").json())["status"] == "done" and j,
                    timeout, interval=0.2, what=f"job done on {node.name}")


def signal_worker(node, sig):
    os.killpg(node.worker.pid, sig)


def check_final_audio(node, session, shared, job_id):
    audio = session.get(f"{node.url}/api/jobs/{job_id}/audio")
    assert audio.status_code == 200
    data, rate = sf.read(io.BytesIO(audio.content))
    folder = shared / "jobs" / job_id / "segments"
    winners = {}
    for p in folder.iterdir():
        if not p.name.endswith(".wav"):
            continue
        index, *rank = chunk_key(p.name)
        if index not in winners or rank > winners[index][0]:
            winners[index] = (rank, p)
    assert sorted(winners) == list(range(TURNS))
    assert len(data) == sum(sf.info(str(p)).frames for _, p in winners.values())
    return len(data) / rate


def test_job_finishes_on_the_standby_after_the_primary_worker_is_killed(pair, shared, redis_server):
    a, b = pair
    session = requests.Session()            # a session created before the failover (check 4)
    job_id = submit(a, session)
    wait_segments(shared, job_id, 4)
    signal_worker(a, signal.SIGKILL)
    before = segment_files(shared, job_id)  # what A committed before it died: all epoch 1
    assert before and before == by_epoch(before, 1)
    assert cluster_cli(shared, "--by", "test", "promote", "tts-b", "--expect-epoch", "1").returncode == 0

    job = wait_done(b, session, job_id)
    assert (job["segments_done"], job["segments_total"], job["node"]) == (TURNS, TURNS, "tts-b")
    after = segment_files(shared, job_id)
    assert by_epoch(after, 1) == before                       # A's segments: byte-identical, not rewritten
    redone = {n.split(".")[0] for n in by_epoch(after, 2)} & {n.split(".")[0] for n in before}
    assert redone == set()
    assert len(after) == TURNS
    attempts = int(redis_server.client.hget(f"tts:job:{job_id}", "attempts"))
    assert attempts - TURNS <= 1                              # at most the interrupted segment twice
    # claimed_at says when the job started running on B (the failover benchmarks read it), not when
    # B last looked at it: the rest of the job took a while after that.
    claimed = float(redis_server.client.hget(f"tts:job:{job_id}", "claimed_at"))
    done_at = json.loads((shared / "jobs" / job_id / "state" / "done").read_text())["at"]
    assert done_at - claimed > 1.0, (claimed, done_at)
    duration = check_final_audio(b, session, shared, job_id)
    assert abs(duration - job["duration_s"]) < 0.01
    assert [j["id"] for j in session.get(f"{b.url}/api/jobs").json()["jobs"]] == [job_id]

    # The old primary's web process is alive but fenced: it accepts no job.
    res = session.post(f"{a.url}/api/jobs", json={"script": dialogue(2)})
    assert res.status_code == 503 and "tts-b is the primary of epoch 2" in res.json()["error"]


def test_a_paused_old_primary_cannot_commit_or_accept_after_the_epoch_bump(pair, shared):
    a, b = pair
    session = requests.Session()
    job_id = submit(a, session)
    wait_segments(shared, job_id, 3)
    signal_worker(a, signal.SIGSTOP)                          # a zombie, frozen mid-segment
    frozen = segment_files(shared, job_id)
    assert cluster_cli(shared, "promote", "tts-b", "--expect-epoch", "1").returncode == 0
    # B resumes only once A's lease has expired, then commits under epoch 2.
    wait_for(lambda: by_epoch(segment_files(shared, job_id), 2), 30, what="B's first segment")
    signal_worker(a, signal.SIGCONT)                          # the zombie wakes up mid-segment
    job = wait_done(b, session, job_id)
    time.sleep(1.5)                                           # give the zombie every chance to misbehave
    after = segment_files(shared, job_id)
    assert by_epoch(after, 1) == by_epoch(frozen, 1)          # no commit by A after the bump
    assert job["node"] == "tts-b" and len(after) == TURNS
    check_final_audio(b, session, shared, job_id)
    assert a.worker.poll() is None                            # A's worker is alive, and idle
    code, ready = a.ready()
    assert ready["role"] == "standby" and ready["fenced"] is True and ready["epoch"] == 2
    res = session.post(f"{a.url}/api/jobs", json={"script": dialogue(2)})
    assert res.status_code == 503 and res.headers["Retry-After"]


def forget_job(r, job_id):
    """What a promoted async replica looks like when the job's last writes never reached it."""
    session = r.hget(f"tts:job:{job_id}", "session")
    r.delete(f"tts:job:{job_id}", f"tts:lease:{job_id}")
    r.srem("tts:active", job_id)
    r.lrem("tts:queue", 0, job_id)
    r.zrem(f"tts:sessjobs:{session}", job_id)


def test_job_lost_from_redis_is_recovered_from_shared_storage_after_failover(pair, shared, redis_server):
    a, b = pair
    session = requests.Session()
    job_id = submit(a, session)
    wait_segments(shared, job_id, 3)
    signal_worker(a, signal.SIGKILL)
    forget_job(redis_server.client, job_id)
    assert session.get(f"{b.url}/api/jobs").json()["jobs"] == []
    assert cluster_cli(shared, "promote", "tts-b", "--expect-epoch", "1").returncode == 0
    job = wait_done(b, session, job_id)
    assert (job["segments_done"], job["node"]) == (TURNS, "tts-b")
    assert [j["id"] for j in session.get(f"{b.url}/api/jobs").json()["jobs"]] == [job_id]
    check_final_audio(b, session, shared, job_id)


def test_job_lost_from_redis_while_running_is_listed_again_and_completes(pair, shared, redis_server):
    a, _ = pair
    session = requests.Session()
    job_id = submit(a, session)
    wait_segments(shared, job_id, 2)
    forget_job(redis_server.client, job_id)
    job = wait_done(a, session, job_id)
    assert job["segments_done"] == TURNS
    wait_for(lambda: [j["id"] for j in session.get(f"{a.url}/api/jobs").json()["jobs"]] == [job_id], 10,
             what="job listed again after reconcile")


def test_cancel_on_shared_storage_is_honoured_by_the_node_that_resumes(pair, shared, redis_server):
    a, b = pair
    session = requests.Session()
    job_id = submit(a, session)
    wait_segments(shared, job_id, 2)
    signal_worker(a, signal.SIGKILL)
    # The cancel reached shared storage, but Redis lost it (and the job) in the failover.
    (shared / "jobs" / job_id / "state" / "cancelled").write_text('{"node": "tts-a"}')
    forget_job(redis_server.client, job_id)
    assert cluster_cli(shared, "promote", "tts-b", "--expect-epoch", "1").returncode == 0
    job = wait_for(lambda: (j := session.get(f"{b.url}/api/jobs/{job_id}").json())["status"] == "cancelled"
                   and j, 20, what="cancelled")
    time.sleep(3)
    assert not by_epoch(segment_files(shared, job_id), 2)     # B never worked on it
    assert job["segments_done"] < TURNS


def test_sigterm_finishes_the_segment_in_hand_and_hands_the_job_over_at_once(pair, shared, redis_server):
    """What a planned switchover relies on: systemctl stop (SIGTERM) loses nothing."""
    a, b = pair
    session = requests.Session()
    job_id = submit(a, session)
    wait_segments(shared, job_id, 3)
    signal_worker(a, signal.SIGTERM)
    assert a.worker.wait(30) == 0                              # exits by itself after its segment
    committed_by_a = by_epoch(segment_files(shared, job_id), 1)
    assert redis_server.client.get(f"tts:lease:{job_id}") is None   # lease handed back, not left to expire
    assert cluster_cli(shared, "promote", "tts-b", "--expect-epoch", "1").returncode == 0
    job = wait_done(b, session, job_id)
    assert job["node"] == "tts-b"
    assert by_epoch(segment_files(shared, job_id), 1) == committed_by_a
    attempts = int(redis_server.client.hget(f"tts:job:{job_id}", "attempts"))
    assert attempts == TURNS                                   # nothing synthesised twice


def test_no_two_unfenced_primaries_while_the_epoch_moves_between_live_nodes(shared, tmp_path, redis_url):
    """A planned handover (both nodes alive, peers configured as deployed): the new primary acts
    only once the old one has said, on its /ready, that it is fenced. Sampled from outside."""
    assert cluster_cli(shared, "init", "tts-a", "--standby", "tts-b").returncode == 0
    nodes = [Node(name, node_env(name, redis_url, shared, tmp_path / f"run-{name}", **SETTINGS), tmp_path / "logs")
             for name in ("tts-a", "tts-b")]
    peers = ",".join(f"{n.name}={n.url}" for n in nodes)
    for n in nodes:
        n.env["TTS_PEERS"] = peers
        n.start()
    try:
        for n in nodes:
            wait_for(lambda n=n: n.ready()[0] == 200, 20, what=f"{n.name} ready")
        both, samples, stop = [], [0], threading.Event()

        def sample():
            while not stop.is_set():
                views = [n.ready()[1] for n in nodes]
                samples[0] += 1
                if all(v["role"] == "primary" and v["fenced"] is False for v in views):
                    both.append(views)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        for epoch, target in ((1, "tts-b"), (2, "tts-a"), (3, "tts-b")):
            assert cluster_cli(shared, "promote", target, "--expect-epoch", str(epoch)).returncode == 0
            new = nodes[0] if target == "tts-a" else nodes[1]
            wait_for(lambda new=new, e=epoch: (r := new.ready()[1])["fenced"] is False and r["epoch"] == e + 1, 20,
                     what=f"{target} primary of epoch {epoch + 1}")
        stop.set()
        watcher.join(10)
        assert samples[0] > 20 and both == []
    finally:
        for n in nodes:
            n.stop()
