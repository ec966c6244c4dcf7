"""A GPU node (tts_engine: vibevoice) is refused before any change without a working NVIDIA driver,
and its weights are placed only when every file's sha256 is the one the inventory gives.

Both run the roles' own tasks with ansible-playbook against this machine (connection local): the
preflight reads `nvidia-smi` (this machine has none; a stand-in on PATH plays a driver that answers),
the weights go into folders under tmp_path."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.unit.test_preflight import GOOD, preflight

ROOT = Path(__file__).resolve().parents[2]


def test_a_vibevoice_node_without_an_nvidia_driver_is_refused_before_any_change(tmp_path):
    code, out = preflight(tmp_path, tts_engine="vibevoice")
    assert code != 0 and "nvidia-smi did not run" in out and "Install the NVIDIA driver" in out, out[-3000:]


def test_a_vibevoice_node_whose_driver_lists_a_gpu_passes(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    code, out = preflight(tmp_path, tts_engine="vibevoice")
    assert code == 0, out[-3000:]
    assert "NVIDIA H100" in out


MODEL_PLAY = """
- hosts: tts_nodes
  connection: local
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: tts_app
        tasks_from: model
"""


def place(tmp_path, checksums):
    src, dest = tmp_path / "weights", tmp_path / "node-model"
    (tmp_path / "play.yml").write_text(MODEL_PLAY)
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {
        "children": {"tts_nodes": {"hosts": {"localhost": None}}},
        "vars": {"tts_app_vibevoice_model_src": str(src), "tts_app_vibevoice_model_dir": str(dest),
                 "tts_app_vibevoice_model_sha256": checksums, **{k: GOOD[k] for k in ("tts_user",)},
                 "tts_storage_uid": GOOD["tts_storage_uid"]}}}))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
           "ANSIBLE_NOCOLOR": "1"}
    env.pop("ANSIBLE_LOG_PATH", None)
    res = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"),
                          str(tmp_path / "play.yml")], capture_output=True, text=True, env=env, timeout=120)
    return res.returncode, res.stdout + res.stderr, dest


def weights(tmp_path):
    src = tmp_path / "weights"
    src.mkdir()
    files = {"config.json": b'{"model_type": "vibevoice"}', "model.safetensors": os.urandom(4096)}
    for name, body in files.items():
        (src / name).write_bytes(body)
    return {name: hashlib.sha256(body).hexdigest() for name, body in files.items()}


def test_weights_with_their_checksums_are_placed(tmp_path):
    sums = weights(tmp_path)
    code, out, dest = place(tmp_path, sums)
    assert code == 0, out[-3000:]
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in dest.iterdir()} == sums


def test_a_checksum_mismatch_is_refused_named_and_nothing_is_placed(tmp_path):
    sums = weights(tmp_path)
    sums["model.safetensors"] = "0" * 64
    code, out, dest = place(tmp_path, sums)
    assert code != 0 and "model.safetensors" in out and "not the " + "0" * 64 + " given" in out, out[-3000:]
    assert not dest.exists() or not any(dest.iterdir())


def test_a_missing_weights_file_is_refused(tmp_path):
    sums = weights(tmp_path)
    sums["tokenizer.json"] = "1" * 64
    code, out, dest = place(tmp_path, sums)
    assert code != 0 and "tokenizer.json" in out and "missing" in out, out[-3000:]
    assert not dest.exists() or not any(dest.iterdir())


def test_weights_already_in_place_need_no_source_and_a_changed_one_is_fetched_again(tmp_path):
    """upgrade.yml from ctl: the weights' folder of the first deploy is not there. Files in place with
    their checksums need nothing; a file changed on the node is needed again (and refused without its
    source)."""
    sums = weights(tmp_path)
    code, out, dest = place(tmp_path, sums)
    assert code == 0, out[-3000:]
    for f in (tmp_path / "weights").iterdir():
        f.unlink()
    (tmp_path / "weights").rmdir()
    code, out, _ = place(tmp_path, sums)
    assert code == 0, out[-3000:]
    (dest / "config.json").write_text("{}")
    code, out, _ = place(tmp_path, sums)
    assert code != 0 and "config.json in" in out and "missing" in out, out[-3000:]
