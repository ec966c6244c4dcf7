"""Upgrading the pair without a failover (playbooks/upgrade.yml): a wheel with a bumped
version is installed standby first, then a planned switchover, then the old primary, while a job
runs through the VIP. The receiver fails nothing over, the job finishes with nothing recomputed,
both nodes report the new version, and never two primaries at once. Then site.yml itself, deploying
dist/'s wheel over that pair while it serves, goes the same way (through upgrade.yml on ctl)."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from lab import (
    NODES,
    PREFIX,
    VIP,
    RoleWatcher,
    VipWatch,
    cluster_state,
    nginx_prefers,
    on,
    operator_playbook,
    podman,
    receiver_runs,
    redis_hget,
    start_job,
    vip_holders,
    wait,
    wait_job_done,
)

ROOT = Path(__file__).resolve().parents[3]
TURNS = 20                      # ~70 s of paced audio: still running at the switchover
NEW = "0.1.1"


def bumped_wheel(tmp: Path) -> Path:
    src = tmp / "service"
    shutil.copytree(ROOT / "service", src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pyproject = src / "pyproject.toml"
    text = pyproject.read_text()
    assert 'version = "0.1.0"' in text
    pyproject.write_text(text.replace('version = "0.1.0"', f'version = "{NEW}"'))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True)
    return next((tmp / "dist").glob(f"tts_service-{NEW}-*.whl"))


def switched_over(state):
    """Both nginx send to the new primary first, and it alone holds the VIP: an upgrade once left the
    new primary's nginx preferring the old one (requests then went there first, and waited for it
    whenever it could not answer)."""
    assert {node: nginx_prefers(node) for node in NODES} == {node: state["primary"] for node in NODES}
    wait(lambda: vip_holders() == [state["primary"]], 10, f"the VIP on {state['primary']} alone", interval=0.5)


def test_upgrade_changes_version_without_a_failover_or_a_recomputed_chunk(tmp_path):
    wheel = bumped_wheel(tmp_path)
    assert podman("cp", str(wheel), f"{PREFIX}ctl:/tmp/{wheel.name}").returncode == 0
    on("ctl", f"chmod 644 /tmp/{wheel.name}")
    runs_before = {r["id"] for r in receiver_runs()}
    state = cluster_state()
    session = requests.Session()
    job_id = start_job(session, TURNS, before_fault=2)
    roles, vip = RoleWatcher(), VipWatch()
    roles.start()
    vip.start()
    started = time.monotonic()
    operator_playbook("upgrade.yml", None, timeout=600, extra=f"-e tts_wheel=/tmp/{wheel.name}")
    took = time.monotonic() - started
    job = wait_job_done(session, job_id, TURNS)
    vip.finish()
    roles.finish()                                    # never two unfenced primaries
    after = cluster_state()
    assert (after["primary"], after["epoch"]) == (state["standby"], state["epoch"] + 1), after
    assert job["node"] != state["primary"], job       # handed over at the switchover (any free worker)
    # 0 recomputed: each chunk once on storage (wait_job_done), and no more syntheses than chunks (in the
    # pool a count can be lost at the switchover, written to the old primary's Redis as it was demoted).
    assert int(redis_hget(after["primary"], f"tts:job:{job_id}", "attempts")) <= TURNS
    for node, url in NODES.items():
        assert requests.get(f"{url}/ready", timeout=5).json()["version"] == NEW, node
    switched_over(after)
    acted = [r for r in receiver_runs() if r["id"] not in runs_before and r["playbook"] in ("failover.yml", "rejoin.yml")]
    assert acted == [], acted
    print(f"\nupgrade.yml {state['primary']} -> {after['primary']} on {NEW}: {took:.0f} s, 0 chunks recomputed; "
          f"longest stretch a client polling the VIP had no primary: {vip.gap:.1f} s")


def test_site_yml_on_a_serving_pair_goes_through_upgrade_yml():
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not inventory:
        pytest.skip("deploys with Molecule's inventory")
    old = {node: requests.get(f"{url}/ready", timeout=5).json()["version"] for node, url in NODES.items()}
    assert set(old.values()) == {NEW}, old           # what the test above left
    runs_before = {r["id"] for r in receiver_runs()}
    state = cluster_state()
    session = requests.Session()
    job_id = start_job(session, 50, before_fault=2)  # ~3 min of paced audio: running through the deploy
    roles, vip = RoleWatcher(), VipWatch()
    roles.start()
    vip.start()
    # As `molecule converge` runs it: the scenario's inventory folder (Molecule's file and the linked
    # hosts.yml with the addresses, group_vars), ansible.cfg (SSH settings), key and roles.
    inventory = str(Path(inventory).parent)
    ephemeral = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY") or Path(inventory).parent)
    env = {**os.environ, "ANSIBLE_CONFIG": str(ephemeral / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
           "TTS_LAB_KEY": str(ROOT / ".lab/ssh/id_ed25519"), "TTS_LAB_KNOWN_HOSTS": str(ROOT / ".lab/mol-known_hosts")}
    try:
        started = time.monotonic()
        deploy = subprocess.run(["ansible-playbook", "-i", inventory, str(ROOT / "playbooks/site.yml"),
                                 "-e", f"@{ROOT / '.lab/molecule-secrets.yml'}"], capture_output=True, text=True,
                                timeout=900, env=env)
        took = time.monotonic() - started
        assert deploy.returncode == 0, deploy.stdout[-4000:] + deploy.stderr[-2000:]
        assert "upgrade.yml" in deploy.stdout and "failed=0" in deploy.stdout
    except BaseException:
        session.delete(f"{VIP}/api/jobs/{job_id}", timeout=10)   # leave no 3-minute job to the next suites
        raise
    wait_job_done(session, job_id, 50, timeout=300)
    vip.finish()
    roles.finish()                                    # never two unfenced primaries
    after = cluster_state()
    assert (after["primary"], after["epoch"]) == (state["standby"], state["epoch"] + 1), after
    assert int(redis_hget(after["primary"], f"tts:job:{job_id}", "attempts")) <= 50   # 0 recomputed (as above)
    for node, url in NODES.items():
        assert requests.get(f"{url}/ready", timeout=5).json()["version"] == "0.1.0", node
    switched_over(after)
    acted = [r for r in receiver_runs() if r["id"] not in runs_before and r["playbook"] in ("failover.yml", "rejoin.yml")]
    assert acted == [], acted
    print(f"\nsite.yml over the serving pair ({NEW} -> 0.1.0 through upgrade.yml): {took:.0f} s, 0 chunks "
          f"recomputed; longest stretch a client polling the VIP had no primary: {vip.gap:.1f} s")
