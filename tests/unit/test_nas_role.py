"""The nas role refuses NFS settings the commit guarantees do not hold on (issue 12, item 12).

Runs the role's own tasks with ansible-playbook against this machine (connection local); only the
refusal is exercised: the role stops at its first task, before it would install or mount anything."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAY = """
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    tts_nas_type: nfs
    tts_nas_server: 127.0.0.1
    tts_nas_export: /export
    tts_shared_dir: /tmp/never-used
  tasks:
    - ansible.builtin.include_role:
        name: nas
        tasks_from: client
"""


def run_role(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    play = tmp_path / "play.yml"
    play.write_text(PLAY)
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
           "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(play),
                           *extra], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("extra", [["-e", "nas_nfs_version=3"], ["-e", "nas_nfs_version=4.0"],
                                   ["-e", "nas_nfs_options=rw,hard,vers=3"]])
def test_nfs_below_4_1_is_refused_with_a_sentence(tmp_path, extra):
    res = run_role(tmp_path, *extra)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "Refuse an NFS version" in out and "below 4.1" in out and "EEXIST" in out
