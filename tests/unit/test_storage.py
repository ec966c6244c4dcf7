import os
import threading
import time

import pytest
from tts_service.jobfiles import BadJobId, JobFiles, check_job_id, new_job_id
from tts_service.storage import Storage, StorageUnavailable


def test_commit_new_never_overwrites(tmp_path):
    st = Storage(tmp_path)
    assert st.commit_new(tmp_path / "a", b"first") is True
    assert st.commit_new(tmp_path / "a", b"second") is False
    assert (tmp_path / "a").read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temp files left behind


def test_commit_new_race_has_exactly_one_winner(tmp_path):
    st = Storage(tmp_path, threads=16)
    wins = []
    barrier = threading.Barrier(8)

    def contender(i):
        barrier.wait()
        wins.append(st.commit_new(tmp_path / "seg", f"writer {i}".encode()))

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def test_write_replace_replaces_atomically(tmp_path):
    st = Storage(tmp_path)
    st.write_replace(tmp_path / "f", b"one")
    st.write_replace(tmp_path / "f", b"two")
    assert (tmp_path / "f").read_bytes() == b"two"


def test_a_hung_call_times_out_instead_of_hanging(tmp_path):
    st = Storage(tmp_path, timeout=0.2, threads=1)
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="did not answer within 0.2 s"):
        st.call(release.wait, 30)
    # The only slot is stuck: the next call also gives up in bounded time.
    with pytest.raises(StorageUnavailable):
        st.call(os.listdir, tmp_path)
    assert time.monotonic() - started < 2
    release.set()
    time.sleep(0.05)
    assert st.call(os.listdir, tmp_path) == []


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ABCDEF" * 6, "", "0" * 31, "0" * 33, None, 5,
                                 "0" * 31 + "/"])
def test_job_ids_are_checked_before_they_touch_a_path(tmp_path, bad):
    with pytest.raises(BadJobId):
        check_job_id(bad)
    with pytest.raises(BadJobId):
        JobFiles(Storage(tmp_path), tmp_path).dir(bad)


def test_newest_epoch_wins_per_segment(tmp_path):
    files = JobFiles(Storage(tmp_path), tmp_path)
    job = new_job_id()
    files.create(job, {"segments": []})
    assert files.commit_segment(job, 0, 1, b"old")
    assert files.commit_segment(job, 0, 3, b"new")
    assert files.commit_segment(job, 0, 2, b"late stale writer")  # a different name: allowed, but loses
    assert not files.commit_segment(job, 0, 3, b"again")
    assert files.segments(job)[0].name == "00000.3.wav"


def test_markers_are_first_writer_wins(tmp_path):
    files = JobFiles(Storage(tmp_path), tmp_path)
    job = new_job_id()
    files.create(job, {"segments": []})
    assert files.mark(job, "cancelled", node="tts-a")
    assert not files.mark(job, "cancelled", node="tts-b")
    assert files.markers(job)["cancelled"]["node"] == "tts-a"


def test_a_lookout_answers_at_once_and_keeps_one_call_in_flight(tmp_path):
    """A probe asks the lookout: it waits a moment for the call it started, then answers with the last
    answer and how long the call in flight has run. A slow mount is asked again only once it answered:
    calls never pile up behind it."""
    from tts_service.storage import Lookout
    gate, calls = threading.Event(), []

    def slow():
        calls.append(time.monotonic())
        gate.wait(5)
        return len(calls)

    lookout = Lookout(slow, every_s=0)
    first = lookout.ask(wait_s=0.1)
    assert not first.answered and first.running_s >= 0.1
    time.sleep(0.2)
    second = lookout.ask(wait_s=0.1)
    assert len(calls) == 1 and second.running_s >= 0.3     # still the first call: no second one started
    gate.set()
    third = lookout.ask(wait_s=1)                           # answered; a new call starts and returns at once
    assert third.answered and third.error is None and third.value in (1, 2) and third.running_s == 0


def test_a_lookout_hands_back_the_error_of_its_call(tmp_path):
    from tts_service.storage import Lookout

    def failing():
        raise StorageUnavailable("shared storage failed: Transport endpoint is not connected")
    answer = Lookout(failing, every_s=0).ask(wait_s=1)
    assert answer.answered and isinstance(answer.error, StorageUnavailable) and answer.value is None


def test_the_newest_epoch_then_generation_wins_and_old_names_count_as_generation_0(tmp_path):
    files = JobFiles(Storage(tmp_path), tmp_path)
    job = new_job_id()
    files.create(job, {"segments": []})
    assert files.commit_segment(job, 0, 2, b"before leases had generations")        # 00000.2.wav
    assert files.commit_segment(job, 0, 2, b"first grant", gen=1)
    assert files.commit_segment(job, 0, 2, b"third grant", gen=3)
    assert files.commit_segment(job, 0, 2, b"second grant, late", gen=2)             # loses to generation 3
    assert files.commit_segment(job, 0, 1, b"older epoch", gen=9)                    # loses to epoch 2
    assert not files.commit_segment(job, 0, 2, b"again", gen=3)                      # never overwritten
    seg = files.segments(job)[0]
    assert (seg.name, seg.rank) == ("00000.2.3.wav", (2, 3))
    assert files.segment_path(job, seg).read_bytes() == b"third grant"


def test_each_grant_is_a_new_generation_and_fences_the_ones_before(tmp_path):
    from tts_service.jobfiles import Superseded
    files = JobFiles(Storage(tmp_path), tmp_path)
    job = new_job_id()
    files.create(job, {"segments": []})
    first = files.grant(job, "tts-a", 1)
    second = files.grant(job, "tts-b", 1)
    assert (first, second) == (1, 2)
    files.check_holder(job, second)
    with pytest.raises(Superseded, match="generation 2"):
        files.check_holder(job, first)
    # A worker whose belief is behind (epoch 1) gets no grant once one was made in epoch 2: a newer
    # generation must never carry an older epoch, or it would lose to the chunks it supersedes.
    assert files.grant(job, "tts-b", 2) == 3
    assert files.grant(job, "tts-a", 1) is None
    assert files.grants(job) == [1, 2, 3]


def test_grants_racing_from_many_threads_get_distinct_generations(tmp_path):
    import threading
    files = JobFiles(Storage(tmp_path), tmp_path)
    job = new_job_id()
    files.create(job, {"segments": []})
    got, barrier = [], threading.Barrier(8)

    def take(i):
        barrier.wait()
        got.append(files.grant(job, f"w{i}", 1))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 9))


def test_a_purged_job_gets_no_grant_and_nobody_holds_it(tmp_path):
    import shutil

    from tts_service.jobfiles import Superseded
    files = JobFiles(Storage(tmp_path), tmp_path)
    job = new_job_id()
    files.create(job, {"segments": []})
    gen = files.grant(job, "tts-a", 1)
    shutil.rmtree(files.dir(job))                       # purged by its owner meanwhile
    with pytest.raises(Superseded, match="purged"):
        files.check_holder(job, gen)
    assert files.grant(job, "tts-b", 1) is None and not files.dir(job).exists()   # no folder made again


def test_a_resume_takes_only_the_state_that_follows_the_winning_chunk(tmp_path):
    """A dead attempt of generation 2 left its state beside a chunk it never committed: the winning chunk
    is generation 1's, and so must be the state (another lineage's otherwise)."""
    import numpy as np
    from tts_service.jobfiles import encode_npz
    files = JobFiles(Storage(tmp_path), tmp_path)
    job = new_job_id()
    files.create(job, {"segments": []})
    mine = encode_npz({"part": 0, "index": 3, "fingerprint": "f", "follows": "00003.1.1.wav"}, {"x": np.ones(2)})
    orphan = encode_npz({"part": 0, "index": 3, "fingerprint": "f", "follows": "00003.1.2.wav"}, {"x": np.zeros(2)})
    assert files.commit_chunk(job, 3, 1, b"RIFF", state=mine, gen=1)
    files.commit_state(job, 3, 1, orphan, gen=2)
    winner = files.segments(job)[3].name
    assert winner == "00003.1.1.wav"
    assert files.chunk_state(job, 3, (0, 3, "f"), follows=winner)["x"].tolist() == [1.0, 1.0]
    assert files.chunk_state(job, 3, (0, 3, "f"))["x"].tolist() == [0.0, 0.0]     # newest, whoever it follows


def test_a_stale_holder_never_drops_a_newer_holders_states(tmp_path):
    files = JobFiles(Storage(tmp_path), tmp_path)
    job = new_job_id()
    files.create(job, {"segments": []})
    for gen in (1, 2):
        files.commit_state(job, 0, 1, b"state", gen=gen)
    assert files.drop_chunk_files(job, below=5, upto=(1, 1)) == 1
    assert sorted(p.name for p in (files.dir(job) / "segments").iterdir()) == ["00000.1.2.state"]
