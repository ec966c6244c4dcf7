"""The nas role refuses NFS settings the commit guarantees do not hold on.

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


SERVER_PLAY = """
- hosts: storage
  connection: local
  gather_facts: false
  roles: [tts]
  vars:
    tts_nas_type: nfs
    tts_nas_export: {export}
    tts_storage_uid: 2790
    nas_nfs_exports_file: {exports}
  tasks:
    - ansible.builtin.include_role:
        name: nas
        tasks_from: server
"""


def test_a_managed_nfs_export_belongs_to_the_storage_uid_and_squashes_every_write_to_it(tmp_path):
    """With root_squash alone and the export root:root 0755, nobody could write: the export folder is
    the storage uid's (0770) and every client's write is squashed to it (all_squash, anonuid/anongid),
    `sync` kept. Read from the role's --check --diff on this machine (nothing installed or written)."""
    export, exports = tmp_path / "srv-tts", tmp_path / "exports"
    export.mkdir(mode=0o755)      # as a NAS has it before the first deploy: root's
    (tmp_path / "play.yml").write_text(SERVER_PLAY.format(export=export, exports=exports))
    (tmp_path / "hosts.yml").write_text(
        "all:\n  children:\n    storage: {hosts: {localhost: {tts_node_address: 127.0.0.1}}}\n"
        "    tts_nodes: {hosts: {a: {tts_node_address: 192.0.2.11}, b: {tts_node_address: 192.0.2.12}}}\n"
        "    tts_workers: {hosts: {c: {tts_node_address: 192.0.2.13}}}\n"
        "    control: {hosts: {ctl: {tts_node_address: 192.0.2.10}}}\n")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}
    res = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"),
                          str(tmp_path / "play.yml"), "--check", "--diff"], capture_output=True, text=True, env=env,
                         timeout=300)
    out = res.stdout
    assert res.returncode == 0, out[-3000:] + res.stderr[-2000:]
    assert oct(export.stat().st_mode & 0o777) == "0o755" and not exports.exists()
    folder = out[out.index("Create the export folder"):out.index("Export the folder over NFS")]
    assert '+    "owner": 2790' in folder and '+    "group": 2790' in folder and '+    "mode": "0770"' in folder, folder
    line = next(ln for ln in out.splitlines() if ln.startswith("+") and str(export) in ln)
    for client in ("192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.10"):   # the pair, a worker host, ctl
        assert f"{client}(rw,sync,no_subtree_check,all_squash,anonuid=2790,anongid=2790)" in line, line
