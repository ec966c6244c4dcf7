"""`tts-cluster run-locked`: the cluster lock held for exactly a command's run (a playbook), renewed
past its short TTL while it runs, released as soon as it ends however it ends, and never a command run
without it. The real CLI on a real folder; the commands are small shells standing in for a playbook."""
import json
import os
import signal
import subprocess
import time

import pytest
from tts_service.cluster import Cluster
from tts_service.storage import Storage

from tests.harness import BIN, cluster_cli, wait_for

HOLDS = f'"{BIN}/tts-cluster" --shared-dir "$SHARED" holds "$TTS_LOCK_TOKEN"'


@pytest.fixture
def cluster(shared):
    assert cluster_cli(shared, "init", "tts-a", "--standby", "tts-b").returncode == 0
    return Cluster(Storage(shared), shared / "cluster")


def run_locked(shared, script, *, ttl="3", holder="switchover.yml", **kw):
    return subprocess.Popen([str(BIN / "tts-cluster"), "--shared-dir", str(shared), "run-locked", "--holder", holder,
                             "--ttl", ttl, "--", "bash", "-c", script],
                            env={**os.environ, "SHARED": str(shared)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_the_command_runs_with_the_token_the_lock_is_renewed_past_its_ttl_and_released_at_the_end(shared, cluster):
    # TTL 3 s, the command runs 4.5 s and checks, after the first TTL, that its token still holds the lock.
    proc = run_locked(shared, f'sleep 4.5; {HOLDS} >/dev/null && echo "holder=$TTS_LOCK_HOLDER"; exit 7')
    wait_for(lambda: cluster.lock_holder() == "switchover.yml", 10, what="the lock taken")
    out, err = proc.communicate(timeout=30)
    assert "holder=switchover.yml" in out, (out, err)
    assert proc.returncode == 7                              # the command's own status
    assert cluster.lock_holder() is None and "the cluster lock released" in err


def test_the_promotion_under_the_token_goes_through_and_the_receiver_is_kept_out_meanwhile(shared, cluster):
    proc = run_locked(shared, f'"{BIN}/tts-cluster" --shared-dir "$SHARED" promote tts-b --expect-epoch 1 '
                              '--lock-token "$TTS_LOCK_TOKEN"')
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert cluster.read().primary == "tts-b" and cluster.lock_holder() is None
    # Without the token the same promotion takes the lock itself; with a forged one it is refused.
    res = cluster_cli(shared, "promote", "tts-a", "--expect-epoch", "2", "--lock-token", "forged")
    assert res.returncode == 1 and cluster.read().primary == "tts-b"


def test_a_held_lock_refuses_the_run_and_the_command_never_starts(shared, cluster, tmp_path):
    token = json.loads(cluster_cli(shared, "lock", "--holder", "drill.yml", "--ttl", "60").stdout)["token"]
    proc = run_locked(shared, f"touch {tmp_path}/ran")
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "held by 'drill.yml'" in err
    assert not (tmp_path / "ran").exists()
    assert cluster.lock_info()["token"] == token              # the holder's lock untouched


def test_no_cluster_state_here_refuses_before_taking_anything(shared, tmp_path):
    """A controller that does not mount the shared storage must not take a lock in a local folder."""
    proc = run_locked(tmp_path / "not-mounted", f"touch {tmp_path}/ran")
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "mounts the shared storage" in err
    assert not (tmp_path / "ran").exists() and not (tmp_path / "not-mounted" / "cluster" / "lock").exists()


def test_the_command_killed_releases_the_lock_at_once(shared, cluster, tmp_path):
    """kill -9 of the playbook: the lock is free within a second, not after its TTL."""
    proc = run_locked(shared, f"echo $$ > {tmp_path}/pid; exec sleep 60", ttl="60")
    wait_for(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text().strip(), 10, what="the command")
    assert cluster.lock_holder() == "switchover.yml"
    os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)
    _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGKILL and "ended by signal 9" in err
    assert cluster.lock_holder() is None


def test_a_signal_to_the_wrapper_stops_the_command_then_releases(shared, cluster, tmp_path):
    proc = run_locked(shared, f"trap 'echo stopped > {tmp_path}/trap; exit 5' TERM; "
                              f"echo $$ > {tmp_path}/pid; while :; do sleep 0.1; done", ttl="60")
    wait_for(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text().strip(), 10, what="the command")
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=10)
    assert (tmp_path / "trap").read_text().strip() == "stopped"    # the command was told, and ended itself
    assert proc.returncode == 5 and cluster.lock_holder() is None


def test_the_wrapper_killed_stops_the_command_and_the_lock_expires_within_its_ttl(shared, cluster, tmp_path):
    """SIGKILL of the keeper itself: the command must not go on without a kept lock."""
    proc = run_locked(shared, f"trap 'echo stopped > {tmp_path}/trap; exit 5' TERM; "
                              f"echo $$ > {tmp_path}/pid; while :; do sleep 0.1; done", ttl="3")
    wait_for(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text().strip(), 10, what="the command")
    killed = time.monotonic()
    proc.kill()
    proc.communicate(timeout=10)
    wait_for(lambda: (tmp_path / "trap").exists(), 10, what="the command told to stop")
    wait_for(lambda: cluster.lock_holder() is None, 10, what="the lock expired")
    assert time.monotonic() - killed < 3 + 2.5                # the TTL, from the last renewal


def test_bad_requests_are_refused_with_a_sentence(shared, cluster):
    res = cluster_cli(shared, "run-locked", "--holder", "x", "--ttl", "900", "--", "true")
    assert res.returncode == 1 and "--ttl must be" in res.stderr
    res = cluster_cli(shared, "run-locked", "--holder", "x", "--")
    assert res.returncode == 2 and "needs a command" in res.stderr
    res = cluster_cli(shared, "run-locked", "--holder", "x", "--", "/nonexistent/ansible-playbook")
    assert res.returncode == 127 and "cannot run" in res.stderr
    assert cluster.lock_holder() is None                      # released again


def test_what_a_killed_command_left_running_is_stopped_before_the_lock_is_released(shared, cluster, tmp_path):
    """kill -9 of ansible-playbook alone leaves its workers running a task (they are in sessions of their
    own): they are stopped before the lock is free, not left acting with the receiver let in."""
    worker = (f"trap 'echo stopped > {tmp_path}/worker; exit 0' TERM; echo $$ > {tmp_path}/worker-pid; "
              "while :; do sleep 0.1; done")
    proc = run_locked(shared, f"setsid bash -c \"{worker}\" & echo $$ > {tmp_path}/pid; wait", ttl="60")
    wait_for(lambda: (tmp_path / "worker-pid").exists() and (tmp_path / "pid").exists(), 10, what="the command")
    os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)
    _out, err = proc.communicate(timeout=30)
    assert (tmp_path / "worker").read_text().strip() == "stopped", err
    assert "1 process(es) it left running stopped" in err and cluster.lock_holder() is None


def test_a_terminals_ctrl_c_reaches_the_command_once_and_the_lock_waits_for_its_end(shared, cluster, tmp_path):
    """Ctrl-C goes to the whole foreground group: the command gets it from the terminal, not a second
    time from the keeper (a second SIGINT ends ansible-playbook before it stops its workers)."""
    proc = run_locked(shared, f"trap 'echo int >> {tmp_path}/ints' INT; echo $$ > {tmp_path}/pid; "
                              f"until [ -e {tmp_path}/ints ]; do sleep 0.1; done; sleep 1; exit 3",
                      ttl="60", start_new_session=True)
    wait_for(lambda: (tmp_path / "pid").exists(), 10, what="the command")
    os.killpg(proc.pid, signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert (tmp_path / "ints").read_text().split() == ["int"], err
    assert proc.returncode == 3 and cluster.lock_holder() is None


def test_a_command_that_hangs_is_stopped_after_max_seconds(shared, cluster):
    res = subprocess.run([str(BIN / "tts-cluster"), "--shared-dir", str(shared), "run-locked", "--holder", "x",
                          "--max-seconds", "1", "--", "sleep", "60"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 124 and "ran past 1 s" in res.stderr
    assert cluster.lock_holder() is None
